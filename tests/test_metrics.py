"""Metrics (issue 28): the observer's events from real requests, in prometheus_client and OpenTelemetry.

Every test runs on each live database (SQLite, PostgreSQL, MariaDB), with
WebTest requests through the middleware; the Prometheus side reads a real
``CollectorRegistry``, the OpenTelemetry side the SDK's ``InMemoryMetricReader``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webtest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from conftest import LIVE_URLS, SECRET, unique_table_name
from tests.apps import session_app
from tests.process_helpers import run_module
from wsgi_dbsession import SessionMiddleware, SessionStore, generate_sid, sign
from wsgi_dbsession.cookies import encode_value
from wsgi_dbsession.observe import METRICS, Event
from wsgi_dbsession.opentelemetry import OpenTelemetryMetrics
from wsgi_dbsession.prometheus import PrometheusMetrics
from wsgi_dbsession.prune import prune_once
from wsgi_dbsession.store import utcnow

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
UNKNOWN_SID = generate_sid()
# What the request cycle below does, as (kind, operation, outcome) → how many.
CYCLE = {
    ("load", "", "missing"): 1,
    ("load", "", "found"): 3,
    ("save", "new", "ok"): 1,
    ("save", "changed", "ok"): 1,
    ("save", "renamed", "ok"): 1,
    ("save", "deleted", "ok"): 1,
    ("statement", "load", "ok"): 4,
    ("statement", "write", "ok"): 1,
    ("statement", "replace", "ok"): 1,
    ("statement", "rename", "ok"): 1,
    ("statement", "destroy", "ok"): 1,
}


def request_cycle(app: webtest.TestApp) -> list[dict[str, Any]]:
    """An unknown cookie, a new session, a change, a login (new id), a logout; the JSON answers."""
    unknown = f"connect.sid={encode_value(sign(UNKNOWN_SID, SECRET))}"
    answers = [app.get("/", headers={"Cookie": unknown}).json]
    for path in ("/incr", "/incr", "/login?user=alice", "/logout"):
        answers.append(app.get(path).json)
    return answers


def counted(events: list[Event]) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    for event in events:
        key = (event.kind, event.operation, event.outcome)
        found[key] = found.get(key, 0) + 1
    return found


def test_events_say_what_happened_and_how_long_it_took_never_an_id_or_value(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app)
    events: list[Event] = []
    middleware.store.observe(events.append)
    answers = request_cycle(app)
    assert counted(events) == CYCLE
    assert all(event.seconds > 0 for event in events if event.kind == "statement")
    secret_texts = {UNKNOWN_SID, "alice", *(cookie.value for cookie in app.cookiejar)}
    assert answers[-2]["data"]["user"] == "alice"
    for event in events:
        assert not secret_texts & {event.operation, event.outcome}, event


def test_removed_observer_hears_nothing_more(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app)
    events: list[Event] = []
    remove = middleware.store.observe(events.append)
    app.get("/incr")
    remove()
    app.get("/incr")
    assert counted(events) == {("save", "new", "ok"): 1, ("statement", "write", "ok"): 1}


def test_a_failing_observer_is_logged_and_the_request_succeeds(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app, middleware = make_app(session_app)

    def broken(event: Event) -> None:
        raise RuntimeError("metrics backend down")

    middleware.store.observe(broken)
    with caplog.at_level(logging.ERROR, logger="wsgi_dbsession"):
        assert app.get("/incr").json == {"data": {"count": 1}}
        assert app.get("/incr").json == {"data": {"count": 2}}
    failures = [record for record in caplog.records if "observer" in record.getMessage()]
    assert failures and all(record.levelno == logging.ERROR for record in failures)


# -- Prometheus -----------------------------------------------------------------


def test_prometheus_counts_a_request_cycle(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app)
    registry = CollectorRegistry()
    middleware.store.observe(PrometheusMetrics(registry))
    request_cycle(app)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"wsgi_dbsession_{name}", labels)

    for (kind, operation, outcome), count in CYCLE.items():
        if kind == "statement":
            assert sample("statement_seconds_count", operation=operation, outcome=outcome) == count
            assert (sample("statement_seconds_sum", operation=operation, outcome=outcome) or 0) > 0
        elif kind == "load":
            assert sample("loads_total", outcome=outcome) == count
        else:
            assert sample("saves_total", operation=operation) == count
    exposition = generate_latest(registry).decode()
    assert "# TYPE wsgi_dbsession_statement_seconds histogram" in exposition
    assert UNKNOWN_SID not in exposition
    assert not any(cookie.value in exposition for cookie in app.cookiejar)


def test_prometheus_counts_merges_and_locked_saves(make_app: MakeApp, db_url: str) -> None:
    """A concurrent writer changes the row before each of this request's compare-and-sets."""
    app, middleware = make_app(session_app)
    registry = CollectorRegistry()
    middleware.store.observe(PrometheusMetrics(registry))
    app.get("/incr")
    (cookie,) = app.cookiejar
    store = middleware.store
    other = SessionStore(url=db_url, table_name=store.table.name, create_table=False)
    session = middleware.manager.factory.open(f"connect.sid={cookie.value}")
    session["mine"] = 1
    lost = 0

    def write_first(sql: str, _parameters: Any) -> None:
        nonlocal lost
        if sql.lstrip().upper().startswith("UPDATE") and lost < 4:  # the first + 3 optimistic merges
            lost += 1
            stored = other.get(session.id)
            assert stored is not None
            other.set(session.id, {**stored, "theirs": lost}, utcnow() + dt.timedelta(hours=1))

    stop = store.on_statement(write_first)
    try:
        session.save()
    finally:
        stop()
        other.dispose()
    assert lost == 4
    assert {k: v for k, v in (store.get(session.id) or {}).items() if k in ("mine", "theirs")} == {
        "mine": 1,
        "theirs": 4,
    }

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"wsgi_dbsession_{name}", labels)

    assert sample("merges_total", outcome="saved") == 1
    assert sample("locked_saves_total", outcome="saved") == 1
    assert sample("saves_total", operation="changed") == 1
    assert sample("statement_seconds_count", operation="locked_save", outcome="ok") == 1
    assert sample("statement_seconds_count", operation="replace", outcome="ok") == 4


def test_prometheus_counts_prune_runs_and_rows(make_app: MakeApp) -> None:
    _app, middleware = make_app(session_app)
    store = middleware.store
    registry = CollectorRegistry()
    store.observe(PrometheusMetrics(registry))
    past = utcnow() - dt.timedelta(hours=1)
    for _ in range(5):
        store.set(generate_sid(), {"old": True}, past)
    assert prune_once(store, batch_size=2) == 5

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"wsgi_dbsession_{name}", labels)

    assert sample("prune_runs_total", outcome="done") == 1
    assert sample("pruned_rows_total") == 5
    assert sample("prune_seconds_count", outcome="done") == 1
    assert sample("statement_seconds_count", operation="prune", outcome="ok") == 3  # 2 + 2 + 1 rows
    assert (sample("statement_seconds_count", operation="prune_lease", outcome="ok") or 0) >= 2


# -- OpenTelemetry --------------------------------------------------------------


@pytest.fixture
def otel_reader() -> Iterator[tuple[InMemoryMetricReader, MeterProvider]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield reader, provider
    provider.shutdown()


def otel_points(reader: InMemoryMetricReader) -> dict[tuple[str, frozenset[tuple[str, Any]]], Any]:
    """Every data point the SDK collected, by metric name and attributes."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        (metric.name, frozenset((point.attributes or {}).items())): point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }


def test_opentelemetry_counts_a_request_cycle(
    make_app: MakeApp, otel_reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    reader, provider = otel_reader
    app, middleware = make_app(session_app)
    middleware.store.observe(OpenTelemetryMetrics(provider))
    request_cycle(app)
    points = otel_points(reader)
    for (kind, operation, outcome), count in CYCLE.items():
        if kind == "statement":
            point = points[
                "wsgi_dbsession.statement.duration",
                frozenset({("operation", operation), ("outcome", outcome)}),
            ]
            assert point.count == count and point.sum > 0
        elif kind == "load":
            assert points["wsgi_dbsession.loads", frozenset({("outcome", outcome)})].value == count
        else:
            assert points["wsgi_dbsession.saves", frozenset({("operation", operation)})].value == count
    assert not any(UNKNOWN_SID in str(key) for key in points)


def test_opentelemetry_counts_prune_runs_and_rows(
    make_app: MakeApp, otel_reader: tuple[InMemoryMetricReader, MeterProvider]
) -> None:
    reader, provider = otel_reader
    _app, middleware = make_app(session_app)
    store = middleware.store
    store.observe(OpenTelemetryMetrics(provider))
    for _ in range(3):
        store.set(generate_sid(), {}, utcnow() - dt.timedelta(hours=1))
    assert prune_once(store) == 3
    points = otel_points(reader)
    assert points["wsgi_dbsession.prune_runs", frozenset({("outcome", "done")})].value == 1
    assert points["wsgi_dbsession.pruned_rows", frozenset()].value == 3
    assert points["wsgi_dbsession.prune.duration", frozenset({("outcome", "done")})].count == 1


def test_every_metric_has_a_distinct_name_in_both_bridges(
    otel_reader: tuple[InMemoryMetricReader, MeterProvider],
) -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    exposed = {metric.name for metric in registry.collect()}
    assert exposed == {f"wsgi_dbsession_{metric.name}" for metric in METRICS}
    OpenTelemetryMetrics(otel_reader[1])


# -- outages and conflicts ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_an_outage_is_counted(backend: str) -> None:
    """A server nobody answers (a closed port): the request gets the unavailable status, one outage counts."""
    url = sa.make_url(LIVE_URLS[backend]).set(port=1)
    middleware = SessionMiddleware(session_app, secret=SECRET, url=url, cleanup_interval=0)
    registry = CollectorRegistry()
    middleware.store.observe(PrometheusMetrics(registry))
    app = webtest.TestApp(middleware)
    try:
        cookie = f"connect.sid={encode_value(sign(UNKNOWN_SID, SECRET))}"
        assert app.get("/", headers={"Cookie": cookie}, status=503).status_int == 503
    finally:
        middleware.close()
    assert registry.get_sample_value("wsgi_dbsession_outages_total", {"operation": "ddl"}) == 1


@pytest.mark.slow
def test_a_retried_conflict_is_counted(tmp_path_factory: pytest.TempPathFactory) -> None:
    """MariaDB: another transaction holds the row past the store's lock wait (1205, retried)."""
    store = SessionStore(url=LIVE_URLS["mariadb"], table_name=f"metrics_conflict_{generate_sid()[:8]}")
    registry = CollectorRegistry()
    store.observe(PrometheusMetrics(registry))
    sid = generate_sid()
    expires = utcnow() + dt.timedelta(hours=1)
    store.set(sid, {"n": 0}, expires)
    sa.event.listen(store.engine, "connect", _short_lock_wait)
    store.engine.dispose()
    locked, release = threading.Event(), threading.Event()
    blocker = sa.create_engine(store.engine.url)

    def hold() -> None:
        with blocker.begin() as conn:
            conn.execute(sa.select(store.table).where(store.columns.sid == sid).with_for_update()).all()
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        timer = threading.Timer(1.5, release.set)
        timer.start()
        store.set(sid, {"n": 1}, expires)  # waits 1 s, loses (1205), waits again, then wins
        assert store.get(sid) == {"n": 1}
    finally:
        release.set()
        holder.join()
        blocker.dispose()
        store.clear()
        with store.engine.connect() as conn:
            store.table.drop(conn)
            conn.commit()
        store.dispose()
    assert (
        registry.get_sample_value("wsgi_dbsession_conflict_retries_total", {"operation": "write"}) or 0
    ) >= 1
    assert registry.get_sample_value(
        "wsgi_dbsession_statement_seconds_count", {"operation": "write", "outcome": "conflict"}
    )


def _short_lock_wait(dbapi_connection: Any, _record: Any) -> None:
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")


def test_the_observer_benchmark_runs() -> None:
    """``python -m benchmarks.observer_cost --quick`` ends with its table (its numbers are not checked).

    Against HEAD as the baseline, so a shallow clone will do; an sdist has no git of its own.
    """
    if not (Path(__file__).resolve().parent.parent / ".git").exists():
        pytest.skip("the benchmark's baseline comes from git, which an sdist does not carry")
    out = run_module("benchmarks.observer_cost", "--quick", "--databases", "sqlite", "--baseline", "HEAD")
    assert "| read    | unobserved " in out and "| request | OpenTelemetry " in out, out


# -- docs/metrics.md runs as written ---------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
DOC_URL = "postgresql://app@db/app"  # what the page's examples connect to
DOC_PRELUDE = """
import sys
from tests.apps import session_app as wsgi_app
SECRET = "x" * 32
"""
# After each example: four requests, and what its metrics show.
DOC_REQUESTS = {
    "observer": "app.store.create_table()\nimport webtest\nclient = webtest.TestApp(app)\n",
    "prometheus": "import webtest\nclient = webtest.TestApp(application)\n",
    "opentelemetry": "import webtest\nclient = webtest.TestApp(app)\n",
}
DOC_AFTER = """
for path in ("/incr", "/incr", "/login?user=alice", "/logout"):
    client.get(path)
if "application" in globals():
    print(client.get("/metrics").text)
app.store.clear()
with app.store.engine.connect() as conn:
    app.store.table.drop(conn)
    conn.commit()
"""


def doc_examples() -> dict[str, str]:
    """The page's Python blocks that build an app, by the section they are in."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    return dict(zip(("observer", "prometheus", "opentelemetry"), blocks, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("example", ["observer", "prometheus", "opentelemetry"])
def test_the_documented_examples_run(example: str, tmp_path: Path) -> None:
    """Each example of docs/metrics.md, as written but for its URL, serves four requests on PostgreSQL."""
    code = doc_examples()[example]
    assert DOC_URL in code
    table = unique_table_name("docs_metrics")
    code = code.replace(f'url="{DOC_URL}"', f'url="{LIVE_URLS["postgresql"]}", table_name="{table}"')
    script = tmp_path / "example.py"
    script.write_text(DOC_PRELUDE + code + DOC_REQUESTS[example] + DOC_AFTER)
    root = str(DOC.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    if example == "observer":
        assert "load  found" in done.stdout and "save new ok" in done.stdout, done.stdout
    elif example == "prometheus":
        assert 'wsgi_dbsession_saves_total{operation="renamed"} 1.0' in done.stdout, done.stdout
    else:  # the console exporter prints at exit
        assert '"name": "wsgi_dbsession.saves"' in done.stdout, done.stdout
