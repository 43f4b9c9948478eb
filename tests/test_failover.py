"""A database server dies while gunicorn (4 workers) serves writes (issue 26): nothing acknowledged is lost.

The services come from ``.ci/services.sh`` (tests/failover.py says where).
Each scenario kills one server once, with ``kill -9``, while 8 browsers write
their own sessions and 8 share one, each adding 1 to a key of its own:

1. The PostgreSQL primary (its Patroni daemon and postmaster), with one app
   behind HAProxy and one on a multi-host URL at once: every acknowledged
   write is there after the failover (synchronous replication), the switch
   answers 503 or succeeds, never 500, and from 5 s after the new primary
   takes writes every request succeeds, with the same workers.
2. The old primary rejoins as the standby; a connection that reaches a
   read-only server is dropped and the write tried once on a fresh one, and
   where every server is read-only the answer is 503.
3. The Galera node HAProxy sends everything to: 0 lost, 503s only while the
   connections move; prunes go on within the lease's lapse time, never two
   at once.
4. The process holding the prune lease: another takes over within the
   lease's lapse time and expired rows keep going.

Each prints its numbers (run with ``-s``); docs/reliability.md has them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
import webtest

from conftest import LIVE_URLS, SECRET, drop_table, unique_table_name
from tests.failover import (
    HAPROXY_GALERA_NODE,
    HAPROXY_GALERA_URL,
    HAPROXY_PG_URL,
    MULTIHOST_URL,
    PATRONI_PORTS,
    Load,
    Switch,
    Writer,
    kill_9,
    kill_galera_node,
    kill_patroni_node,
    new_shared_session,
    patroni_answers,
    read_only_mariadb,
    require_patroni,
    restart_services,
    switch_of,
    takes_writes,
    writers_of,
)
from tests.prune_helpers import seed
from tests.topology import (
    PRUNE_END,
    Server,
    get,
    matching,
    overlapping,
    prune_runs,
    read_log,
    require_galera,
    service_missing,
    sid_of,
    start_gunicorn,
)
from wsgi_dbsession import SessionMiddleware, SessionStore, StoreError
from wsgi_dbsession.prune import MIN_LEASE
from wsgi_dbsession.store import utcnow

pytestmark = pytest.mark.slow

WORKERS = 4
OWN, SHARED = 8, 8  # browsers writing their own session, and sharing one
PAUSE = 0.02  # seconds between a browser's requests: the load stays bounded on a small machine
BEFORE = 2.0  # seconds of load before the kill
RECOVERY = 5.0  # seconds after the new server takes writes by which every request succeeds
PROOF = 3.0  # seconds of load after that
SWITCH_LIMIT = 60.0  # seconds: the most a test waits for the new server
INTERVAL = 1.0  # seconds: cleanup_interval of the prune scenarios
LEASE = max(MIN_LEASE, 3 * INTERVAL)  # the prune lease's lapse time at that interval
APP = "tests.servers.topology_app:app"


@dataclass
class Served:
    """One gunicorn on one URL and the browsers writing through it."""

    name: str
    server: Server
    writers: list[Writer]
    store: SessionStore
    switch: Switch | None = None


def serve(name: str, url: str, table: str, workdir: Path, interval: float = 0) -> Served:
    env = {
        "TOPOLOGY_APP_URL": url,
        "TOPOLOGY_APP_TABLE": table,
        "TOPOLOGY_APP_LOG": str(workdir / "app.log"),
        "TOPOLOGY_APP_INTERVAL": str(interval),
    }
    server = start_gunicorn(APP, env, workdir / f"gunicorn-{name}.log", workers=WORKERS)
    writers = writers_of(server.port, OWN, SHARED, new_shared_session(server.port))
    return Served(name, server, writers, SessionStore(url=url, table_name=table))


def wait_until(condition: Callable[[], Any], what: str, limit: float) -> float:
    """Poll ``condition`` every 0.1 s; the time.monotonic() at which it first held."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.1)
    return time.monotonic()


def run_through_a_kill(
    served: list[Served], kill: Callable[[], None], writable: Callable[[], bool]
) -> tuple[float, float]:
    """Load, ``kill()``, load until ``writable()`` and RECOVERY + PROOF after; (kill, writable) times."""
    load = Load([writer for each in served for writer in each.writers], PAUSE)
    try:
        time.sleep(BEFORE)
        killed = time.monotonic()
        kill()
        took_writes = wait_until(writable, "the new server takes writes", SWITCH_LIMIT)
        time.sleep(RECOVERY + PROOF)
    finally:
        load.stop()
    for each in served:
        each.switch = switch_of(each.writers, killed, took_writes, RECOVERY)
        print(each.switch.line(each.name, took_writes - killed))
    return killed, took_writes


def assert_nothing_lost(each: Served) -> None:
    """The switch answered 200 or 503 only, was over RECOVERY s after, and the table has every write."""
    switch = each.switch
    assert switch is not None
    assert switch.other_errors == [], f"{each.name}: {len(switch.other_errors)} x {switch.other_errors[:5]}"
    assert switch.regressions == [], f"{each.name}: acknowledged writes lost: {switch.regressions[:5]}"
    assert switch.failed_after_recovery == [], (
        f"{each.name}: {len(switch.failed_after_recovery)} requests failed {RECOVERY} s after the switch:"
        f" {switch.failed_after_recovery[:5]}"
    )
    booted = re.findall(r"Booting worker with pid: (\d+)", each.server.log_text())
    assert len(booted) == WORKERS, f"{each.name}: workers restarted: {booted}"
    for writer in each.writers:
        acknowledged = writer.acknowledged()
        assert acknowledged and writer.cookie is not None, f"{each.name}: {writer.key} got no 200"
        stored = each.store.get(sid_of(writer.cookie))
        assert stored is not None and stored.get(writer.key, 0) >= acknowledged[-1], (
            f"{each.name}: {writer.key} acknowledged {acknowledged[-1]}, the table has {stored}"
        )


# -- 1 and 2: the PostgreSQL primary ---------------------------------------------------


@dataclass
class PgFailover:
    served: list[Served]
    killed_node: int
    rejoined: str


@pytest.fixture(scope="module")
def pg_failover(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgFailover]:
    primary = require_patroni()
    workdir = tmp_path_factory.mktemp("pg-failover")
    table = unique_table_name("failover")
    store = SessionStore(url=HAPROXY_PG_URL, table_name=table)
    store.create_table()
    served: list[Served] = []
    rejoined = ""
    try:
        served = [
            serve("postgresql via haproxy", HAPROXY_PG_URL, table, workdir),
            serve("postgresql via multi-host url", MULTIHOST_URL, table, workdir),
        ]
        run_through_a_kill(served, lambda: kill_patroni_node(primary), lambda: takes_writes(3 - primary))
        started = time.monotonic()
        rejoined = restart_services("patroni", "haproxy")
        print(f"old primary rejoined as the standby in {time.monotonic() - started:.1f} s: {rejoined}")
        yield PgFailover(served, primary, rejoined)
    finally:
        for each in served:
            each.server.stop()
        if not rejoined:
            restart_services("patroni", "haproxy")
        store.engine.dispose()  # its connection went to the old primary
        drop_table(store.engine, store.table)
        store.dispose()
        for each in served:
            each.store.dispose()


@pytest.mark.parametrize("route", [0, 1], ids=["haproxy", "multi-host-url"])
def test_postgresql_primary_killed_loses_no_acknowledged_write(pg_failover: PgFailover, route: int) -> None:
    assert_nothing_lost(pg_failover.served[route])


def test_the_old_primary_rejoins_as_the_synchronous_standby(pg_failover: PgFailover) -> None:
    assert patroni_answers(pg_failover.killed_node, "/sync"), pg_failover.rejoined
    assert patroni_answers(3 - pg_failover.killed_node, "/primary")
    for each in pg_failover.served:
        cookie = each.writers[0].cookie
        statuses = [get(each.server.port, "/key/n", cookie).status for _ in range(20)]
        assert statuses == [200] * 20, each.name


def _count(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session = environ["dbsession"]
    session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session["n"]).encode()]


def _middleware(url: str, table: str) -> tuple[webtest.TestApp, SessionMiddleware]:
    middleware = SessionMiddleware(_count, secret=SECRET, url=url, table_name=table, cleanup_interval=0)
    return webtest.TestApp(middleware), middleware


# Makes a connection refuse writes as a standby's does: SQLSTATE 25006 (MariaDB's error 1792).
READ_ONLY_SESSION = {
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}


@pytest.mark.parametrize("backend", sorted(READ_ONLY_SESSION))
def test_a_connection_to_a_read_only_server_is_dropped_and_the_write_retried(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = unique_table_name("read_only")
    client, middleware = _middleware(LIVE_URLS[backend], table)
    try:
        assert client.get("/").text == "1"
        middleware.store.release_connection()  # the pool's one connection: the next request's
        raw = middleware.store.engine.raw_connection()
        try:
            raw.cursor().execute(READ_ONLY_SESSION[backend])
        finally:
            raw.close()
        with caplog.at_level(logging.INFO, logger="wsgi_dbsession"):
            response = client.get("/", expect_errors=True)
        assert (response.status_int, response.text) == (200, "2"), response.text
        assert any("read-only server" in record.getMessage() for record in caplog.records)
    finally:
        drop_table(middleware.store.engine, middleware.store.table)
        middleware.close()


def test_a_standby_answers_503_never_500(caplog: pytest.LogCaptureFixture) -> None:
    standby = PATRONI_PORTS[3 - require_patroni() - 1]
    table = unique_table_name("standby")
    on_primary = SessionStore(url=HAPROXY_PG_URL, table_name=table)
    on_primary.create_table()  # replicated: the standby has it too, and only refuses the write
    try:
        assert_503_for_a_read_only_server(f"postgresql://postgres@127.0.0.1:{standby}/test", table, caplog)
    finally:
        drop_table(on_primary.engine, on_primary.table)
        on_primary.dispose()


def assert_503_for_a_read_only_server(url: str, table: str, caplog: pytest.LogCaptureFixture) -> None:
    """A write through ``url`` is a 503 whose logged cause says the server is read-only (tried twice)."""
    client, middleware = _middleware(url, table)
    try:
        with caplog.at_level(logging.INFO, logger="wsgi_dbsession"):
            response = client.get("/", expect_errors=True)
        assert response.status_int == 503, response.text
        causes = [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
        assert any("read-only, a failover is in progress" in cause for cause in causes), causes
    finally:
        middleware.close()


def test_a_read_only_mariadb_answers_503_never_500(caplog: pytest.LogCaptureFixture) -> None:
    table = unique_table_name("read_only")
    with read_only_mariadb(table) as url:
        assert_503_for_a_read_only_server(url, table, caplog)


# -- 3: a Galera node --------------------------------------------------------------------


def _require_galera_haproxy() -> None:
    require_galera()
    parts = sa.make_url(HAPROXY_GALERA_URL)
    try:
        pymysql.connect(host=parts.host, port=parts.port, user=parts.username, connect_timeout=3).close()
    except pymysql.Error as exc:
        service_missing(f"HAProxy does not pass {HAPROXY_GALERA_URL} to the Galera cluster: {exc}")


def _prunes_after(log_path: Path, since: float, pid: int | None = None) -> list[float]:
    """When the prunes that ended well after ``since`` (wall clock) ended, those by ``pid`` left out."""
    return [at for at, who, _ in matching(read_log(log_path), PRUNE_END) if at > since and who != pid]


def test_a_galera_node_killed_behind_haproxy(tmp_path: Path) -> None:
    _require_galera_haproxy()
    table = unique_table_name("failover_galera")
    store = SessionStore(url=HAPROXY_GALERA_URL, table_name=table)
    seed(store, expired=2000, live=0)
    log_path = tmp_path / "app.log"
    served = None
    killed_at = 0.0
    try:
        served = serve("galera via haproxy", HAPROXY_GALERA_URL, table, tmp_path, interval=INTERVAL)

        def kill() -> None:
            nonlocal killed_at
            killed_at = time.time()
            kill_galera_node(HAPROXY_GALERA_NODE)

        def writable() -> bool:
            try:
                store.set("probe", {}, utcnow() + dt.timedelta(days=1))
            except StoreError:
                return False
            return True

        wait_until(lambda: _prunes_after(log_path, 0), "a first prune", 30)
        run_through_a_kill([served], kill, writable)
        seed(store, expired=500, live=0)  # more to prune, after the kill
        wait_until(lambda: store.count(expired=True) == 0, "the expired rows added after the kill go", LEASE)
        resumed = min(_prunes_after(log_path, killed_at)) - killed_at
        served.server.stop()
        stopped_at = time.time()
        print(f"galera: prunes resumed {resumed:.1f} s after the kill (lease lapse time {LEASE:.0f} s)")
        assert_nothing_lost(served)
        assert resumed <= LEASE
        runs = prune_runs(read_log(log_path), stopped_at)
        assert not overlapping(runs), overlapping(runs)
    finally:
        if served is not None:
            served.server.stop()
            served.store.dispose()
        if killed_at:
            print(restart_services("galera", "haproxy"))
        drop_table(store.engine, store.table)
        store.dispose()


# -- 4: the pruner's process ---------------------------------------------------------------


def test_the_pruners_process_killed_another_takes_over(tmp_path: Path) -> None:
    table = unique_table_name("failover_pruner")
    store = SessionStore(url=LIVE_URLS["postgresql"], table_name=table)
    log_path = tmp_path / "app.log"
    try:
        seed(store, expired=2000, live=0)
        served = serve("pruner", LIVE_URLS["postgresql"], table, tmp_path, interval=INTERVAL)
        load = Load(served.writers[:4], 0.05)
        try:
            wait_until(lambda: _prunes_after(log_path, 0), "a first prune", 30)
            with store.engine.connect() as conn:
                holder = conn.execute(sa.text(f'SELECT holder FROM "{table}_lease"')).scalar_one()
            pruner = int(holder.rsplit(":", 2)[1])  # host:pid:tag
            killed_at = time.time()
            kill_9([pruner])
            seed(store, expired=500, live=0)
            wait_until(lambda: _prunes_after(log_path, killed_at, pruner), "another prunes", LEASE + 15)
            took_over = min(_prunes_after(log_path, killed_at, pruner)) - killed_at
            wait_until(lambda: store.count(expired=True) == 0, "the expired rows go", 15)
        finally:
            load.stop()
            served.server.stop()
            stopped_at = time.time()
            served.store.dispose()
        print(f"pruner killed: another process pruned {took_over:.1f} s later (lease: {LEASE:.0f} s)")
        assert took_over <= LEASE + 2 * INTERVAL + 1
        # The killed process's last run ended when it died.
        runs = [
            run if run.pid != pruner else replace(run, end=min(run.end, killed_at))
            for run in prune_runs(read_log(log_path), stopped_at)
        ]
        assert not overlapping(runs), overlapping(runs)
    finally:
        drop_table(store.engine, store.table)
        store.dispose()
