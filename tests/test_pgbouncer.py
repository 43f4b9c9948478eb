"""Behind a real PgBouncer (issue 12, acceptance 1 and 2): transaction pooling (a pool of 4), session pooling.

PgBouncer comes from ``.ci/services.sh`` (tests/topology.py says where): the
database ``test`` is pooled per transaction over 4 server connections, so each
transaction may run on another server connection and nothing tied to a
database session (server-side prepared statements, session advisory locks)
follows a client; ``test_session`` is pooled per session.

- Counters: real gunicorn (gthread) serving tests/servers/topology_app.py
  through the pooler; clients with their own sessions count in sequence. Every
  answer must be the next number, every stored count exact, no request fail.
- Pruning: real gunicorn, 4 sync workers, ``cleanup_interval=1``, serving
  tests/servers/prune_app.py through the pooler over a table with a backlog of
  expired rows and more arriving, for 10 s of traffic reading live sessions.
  The prune runs of all workers, laid out on one time line from their log
  lines, must never overlap, come about once per interval and never fail; no
  prune lock may be left held once every worker has exited (checked on
  PostgreSQL itself, on the pooler's server connections); every expired row
  goes and every live row stays. Both pool modes run at the same time.

Every transaction-mode test uses the URL a new user writes (issue 28), without
``?prepare_threshold=none``: psycopg prepares statements after 5 runs, the
pooler moves them, and the engine must notice (one WARNING per process naming
the setting), stop preparing, and retry, so no request fails.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from conftest import SECRET, drop_table, unique_table_name
from tests.prune_helpers import DAY, live_rows, seed, session_text
from tests.topology import (
    PGBOUNCER_SESSION_URL,
    PGBOUNCER_URL,
    POSTGRES_URL,
    Client,
    assert_one_prune_at_a_time,
    error_summary,
    exceptions_logged,
    get,
    matching,
    pgbouncer_pool_size,
    pgbouncer_server_pids,
    prune_command,
    read_log,
    require_pgbouncer,
    run_clients,
    server_errors,
    sid_of,
    start_gunicorn,
    start_topology_apps,
)
from wsgi_dbsession import SessionStore, generate_sid, sign
from wsgi_dbsession.cookies import encode_value
from wsgi_dbsession.store import utcnow

pytestmark = pytest.mark.slow

# The transaction pooler's URL as a new user writes it: psycopg prepares statements by default.
DEFAULT_URL = sa.make_url(PGBOUNCER_URL).difference_update_query(["prepare_threshold"]).render_as_string()
MODES = {"transaction": DEFAULT_URL, "session": PGBOUNCER_SESSION_URL}
UNPREPARED_WARNING = "stops preparing statements from now on; add ?prepare_threshold=none to the url"


@pytest.fixture(scope="module", autouse=True)
def pgbouncer() -> None:
    for mode, url in MODES.items():
        require_pgbouncer(url, mode)


# -- counters -------------------------------------------------------------------


def count_through(
    url: str, workdir: Path, *, workers: int, threads: int, clients: int, requests: int
) -> None:
    """``clients`` clients with their own sessions count to ``requests`` through ``workers`` processes."""
    direct = SessionStore(url=POSTGRES_URL, table_name=unique_table_name("pooled"), create_table=False)
    app_log = workdir / "app.log"
    servers = start_topology_apps(url, direct.table.name, workdir, count=workers, threads=threads)
    try:
        ports = [server.port for server in servers]
        counters = [Client(ports, "/count", requests, "count") for _ in range(clients)]
        elapsed = run_clients(counters)
    finally:
        exit_codes = [server.stop() for server in servers]
    try:
        errors = [error for counter in counters for error in counter.errors]
        print(f"{clients * requests} requests in {elapsed:.1f} s, {len(errors)} errors")
        log = "".join(server.log_text() for server in servers)
        warnings = app_log.read_text().count(UNPREPARED_WARNING) if app_log.exists() else 0
        assert warnings <= workers, f"{warnings} warnings: one per process at most"
        assert not errors, (
            f"{len(errors)} of {clients * requests} requests failed: {error_summary(errors)};"
            f" logged: {exceptions_logged(log + (app_log.read_text() if app_log.exists() else ''))}"
        )
        for counter in counters:
            assert counter.answers == list(range(1, requests + 1)), counter.answers
            assert counter.cookie is not None
            stored = direct.get(sid_of(counter.cookie))
            assert stored is not None and stored["count"] == requests, stored
        assert direct.count() == clients, "one session per client, no strays"
        assert len(set().union(*(counter.pids for counter in counters))) == workers, "every worker served"
        assert exit_codes == [0] * workers, log
        assert not server_errors(log), log[-3000:]
    finally:
        drop_table(direct.engine, direct.table)
        direct.dispose()


def test_transaction_pooling_2_processes_x_8_threads_x_200_requests(tmp_path: Path) -> None:
    assert pgbouncer_pool_size(DEFAULT_URL) == 4
    count_through(DEFAULT_URL, tmp_path, workers=2, threads=8, clients=16, requests=200)


def test_transaction_pooling_with_prepare_threshold_none_counts(tmp_path: Path) -> None:
    count_through(PGBOUNCER_URL, tmp_path, workers=1, threads=4, clients=4, requests=50)


def reconnect_pooler() -> None:
    """PgBouncer's ``RECONNECT``: its server connections close once released, and their prepared statements.

    PgBouncer runs no reset query in transaction mode: what a client prepared
    stays on the server connection for the next client.
    """
    parts = sa.make_url(DEFAULT_URL)
    with psycopg.connect(
        host=parts.host, port=parts.port, user=parts.username, dbname="pgbouncer", autocommit=True,
        prepare_threshold=None,
    ) as conn:  # fmt: skip
        conn.execute(f"RECONNECT {parts.database}")


@pytest.mark.parametrize(
    ("built_by", "found_by"),
    [("create_engine", "the server connection is a pooler's"), ("application", "PostgreSQL answered")],
)
def test_default_url_stops_preparing_once_and_no_statement_fails(
    built_by: str, found_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    """8 threads read and write their sessions through the transaction pooler, psycopg preparing by default.

    The package's engine finds the pooler when it connects; an engine the
    application built (plain ``sqlalchemy.create_engine``) finds it at the
    first prepared statement the pooler moved, and that statement is retried.
    """
    table = unique_table_name("unprepared")
    if built_by == "create_engine":
        store = SessionStore(url=DEFAULT_URL, table_name=table)
    else:
        url = sa.make_url(DEFAULT_URL).set(drivername="postgresql+psycopg")
        store = SessionStore(engine=sa.create_engine(url, isolation_level="AUTOCOMMIT"), table_name=table)
    errors: list[str] = []

    def work(thread: int) -> None:
        for n in range(100):
            sid = f"thread-{thread}-{n % 3}"
            try:
                store.set(sid, {"n": n}, utcnow() + DAY)
                if (read := store.get(sid)) != {"n": n}:
                    errors.append(f"{sid}: read back {read!r}")
            except Exception as exc:
                errors.append(repr(exc))

    reconnect_pooler()
    try:
        store.create_table()
        with caplog.at_level(logging.WARNING, logger="wsgi_dbsession"):
            threads = [threading.Thread(target=work, args=(thread,)) for thread in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert not errors, f"{len(errors)} of 1600 failed: {error_summary(errors)}"
        warnings = [record for record in caplog.records if UNPREPARED_WARNING in record.getMessage()]
        assert [record.levelno for record in warnings] == [logging.WARNING], caplog.text
        assert warnings[0].getMessage().startswith(found_by), warnings[0].getMessage()
        connection = store.engine.raw_connection()
        try:
            assert connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]
        finally:
            connection.close()
    finally:
        drop_table(store.engine, store.table)
        store.engine.dispose()
        reconnect_pooler()  # no statement prepared here stays on the pooler's server connections


def test_a_direct_connection_keeps_preparing(caplog: pytest.LogCaptureFixture) -> None:
    """Straight to PostgreSQL, the default URL keeps psycopg's prepared statements (a read costs less)."""
    store = SessionStore(url=POSTGRES_URL, table_name=unique_table_name("prepared"))
    try:
        with caplog.at_level(logging.WARNING, logger="wsgi_dbsession"):
            store.set("a-session", {"n": 1}, utcnow() + DAY)
            for _ in range(10):
                assert store.get("a-session") == {"n": 1}
        assert UNPREPARED_WARNING not in caplog.text
        store.release_connection()  # back in the pool, where the next checkout finds it
        connection = store.engine.raw_connection()  # the one connection the loads used
        try:
            dbapi_connection: Any = connection.dbapi_connection
            assert dbapi_connection.prepare_threshold == 5
            prepared = dbapi_connection.execute("SELECT statement FROM pg_prepared_statements").fetchall()
            assert any(store.table.name in statement for (statement,) in prepared), prepared
        finally:
            connection.close()
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


def test_session_pooling_counts(tmp_path: Path) -> None:
    count_through(PGBOUNCER_SESSION_URL, tmp_path, workers=2, threads=4, clients=8, requests=50)


# -- pruning --------------------------------------------------------------------

WORKERS = 4
INTERVAL = 1.0  # seconds: the cleanup_interval under test
TRAFFIC = 10.0  # seconds of requests
TRICKLE = 6.0  # seconds during which new expired rows keep arriving
TRICKLE_ROWS = 1000  # expired rows added every 0.25 s: every prune has work, and takes a while
BACKLOG, LIVE = 20_000, 1000  # expired rows before the start; live rows


@dataclass
class PruneCase:
    """What one gunicorn deployment did: its log, what its clients saw, the table and locks afterwards."""

    mode: str
    log: list[tuple[float, int, str]] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    wrong_reads: list[str] = field(default_factory=list)
    inserted: int = 0
    stopped_at: float = 0.0  # wall clock, as the log lines' times
    exit_code: int | None = None
    server_log: str = ""
    log_text: str = ""
    live_before: dict[str, str] = field(default_factory=dict)
    live_after: dict[str, str] = field(default_factory=dict)
    expired_after: int = -1
    locks_after: list[tuple[Any, ...]] = field(default_factory=list)  # (pid, classid, objid, objsubid)
    cron_prune: dict[str, str] = field(default_factory=dict)  # direct/pooled: what the command said


def _read_live(port: int, case: PruneCase, until: float) -> None:
    sids = list(case.live_before)
    while time.monotonic() < until:
        sid = random.choice(sids)
        try:
            response = get(port, "/", f"connect.sid={encode_value(sign(sid, SECRET))}")
        except Exception as exc:
            case.errors.append(repr(exc))
            continue
        case.requests += 1
        if response.status != 200:
            case.errors.append(f"{response.status}: {response.body[:200]!r}")
        elif (response.json()["data"] or {}).get("n") != json.loads(case.live_before[sid])["n"]:
            case.wrong_reads.append(sid)
        time.sleep(0.02)


def _trickle(store: SessionStore, case: PruneCase, until: float) -> None:
    """New expired rows every 0.25 s until ``until``, so every prune has rows to delete."""
    sid = store.table.primary_key.columns.values()[0].name
    while time.monotonic() < until:
        expired = utcnow() - DAY
        rows = [
            {sid: generate_sid(), "sess": session_text(expired, n), "expired": expired} for n in range(200)
        ]
        with store.engine.connect() as conn:
            conn.execute(store.table.insert(), rows)
            conn.commit()
        case.inserted += len(rows)
        time.sleep(0.25)


def _advisory_locks(pids: set[int]) -> set[tuple[Any, ...]]:
    """The advisory locks the given PostgreSQL backends hold, asked on PostgreSQL itself."""
    engine = sa.create_engine(sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pid, classid, objid, objsubid FROM pg_locks"
                    " WHERE locktype = 'advisory' AND granted AND pid = ANY(:pids)"
                ),
                {"pids": sorted(pids)},
            ).all()
        return {tuple(row) for row in rows}
    finally:
        engine.dispose()


def _locks_left(url: str, before: set[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Advisory locks that appeared on the pooler's server connections for ``url`` and stay.

    Asked three times a second apart: a lock seen every time is held, not a
    transaction's passing lock. Those in ``before`` (another run's) are left out.
    """
    left = _advisory_locks(pgbouncer_server_pids(url)) - before
    for _ in range(2):
        if not left:
            break
        time.sleep(1)
        left &= _advisory_locks(pgbouncer_server_pids(url))
    return sorted(left)


def _run_case(mode: str, workdir: Path) -> PruneCase:
    url = MODES[mode]
    table = unique_table_name("pooled_prune")
    direct = SessionStore(url=POSTGRES_URL, table_name=table)
    case = PruneCase(mode, live_before=seed(direct, expired=BACKLOG, live=LIVE))
    log_path = workdir / "prune.log"
    locks_before = _advisory_locks(pgbouncer_server_pids(url))
    try:
        env = {
            "PRUNE_APP_URL": url,
            "PRUNE_APP_TABLE": table,
            "PRUNE_APP_LOG": str(log_path),
            "PRUNE_APP_INTERVAL": str(INTERVAL),
            "PRUNE_APP_SECRET": SECRET,
        }
        server = start_gunicorn("tests.servers.prune_app:app", env, workdir / "gunicorn.log", workers=WORKERS)
        try:
            # Traffic starts once every worker has imported the app.
            deadline = time.monotonic() + 60
            while len(matching(read_log(log_path), r"app imported")) < WORKERS:
                assert time.monotonic() < deadline, "the workers did not import the app in 60 s"
                time.sleep(0.1)
            started = time.monotonic()
            threads = [
                threading.Thread(target=_read_live, args=(server.port, case, started + TRAFFIC))
                for _ in range(2)
            ]
            threads.append(threading.Thread(target=_trickle, args=(direct, case, started + TRICKLE)))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            case.stopped_at = time.time()
            case.exit_code = server.stop()
            case.server_log = server.log_text()
        case.log = read_log(log_path)
        case.live_after = live_rows(direct)
        case.expired_after = direct.count(expired=True)
        # Every worker has exited: no prune lock may be held, on any server connection of the pooler.
        case.locks_after = _locks_left(url, locks_before)
        case.log_text = log_path.read_text()
        # Another process (the cron command) takes the lock at once, directly and through the pooler.
        for name, store_url in (("direct", POSTGRES_URL), ("pooled", url)):
            case.cron_prune[name] = prune_command(store_url, table)
        return case
    finally:
        drop_table(direct.engine, direct.table)
        direct.dispose()


@pytest.fixture(scope="module")
def prune_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PruneCase | BaseException]:
    """Both pool modes, run at the same time (one thread each): the module takes one case's time."""
    results: dict[str, PruneCase | BaseException] = {}

    def run(mode: str) -> None:
        try:
            results[mode] = _run_case(mode, tmp_path_factory.mktemp(f"pgbouncer-{mode}"))
        except BaseException as exc:
            results[mode] = exc

    threads = [threading.Thread(target=run, args=(mode,)) for mode in MODES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _case(prune_cases: dict[str, PruneCase | BaseException], mode: str) -> PruneCase:
    case = prune_cases[mode]
    if isinstance(case, BaseException):
        raise case
    assert case.exit_code == 0, case.server_log[-3000:]
    return case


@pytest.mark.parametrize("mode", list(MODES))
def test_prunes_never_overlap_and_come_about_once_per_interval(
    prune_cases: dict[str, PruneCase | BaseException], mode: str
) -> None:
    case = _case(prune_cases, mode)
    assert_one_prune_at_a_time(case.log, case.stopped_at, INTERVAL)


@pytest.mark.parametrize("mode", list(MODES))
def test_no_prune_fails_and_expired_rows_go_live_rows_stay(
    prune_cases: dict[str, PruneCase | BaseException], mode: str
) -> None:
    case = _case(prune_cases, mode)
    failed = matching(case.log, r"pruning expired sessions .* failed")
    assert not failed, f"{len(failed)} prunes failed; logged: {exceptions_logged(case.log_text)}"
    assert case.errors == [], error_summary(case.errors)
    assert case.requests > 0
    assert case.wrong_reads == []
    assert case.expired_after == 0, f"{case.expired_after} of {BACKLOG + case.inserted} expired rows left"
    assert case.live_after == case.live_before
    assert not server_errors(case.server_log), case.server_log[-3000:]


@pytest.mark.parametrize("mode", list(MODES))
def test_no_lock_is_left_held_after_every_worker_exited(
    prune_cases: dict[str, PruneCase | BaseException], mode: str
) -> None:
    case = _case(prune_cases, mode)
    assert case.locks_after == [], "advisory locks still held on the pooler's server connections (pid, ...)"
    for name, output in case.cron_prune.items():
        assert output.startswith("deleted 0 expired sessions"), f"wsgi-dbsession prune ({name}): {output}"
