"""Round trips counted at the server, not only by SQLAlchemy's events.

A pool's rollback on check-in, an isolation level set on every checkout, a
BEGIN or COMMIT of its own, a driver's ping: none of these pass through
``before_cursor_execute``, all of them reach the server. So the server logs
every statement of the test's own connections (PostgreSQL ``log_statement``
for those connections only; MariaDB's general log, filtered by thread id),
and each request must cost exactly its statements, the same ones the bare
driver sends for the same SQL.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
import sqlalchemy as sa
import webtest

from benchmarks.systems import connect
from conftest import LIVE_URLS
from tests.apps import session_app
from tests.db_workers import server_connection_id
from wsgi_dbsession import SessionMiddleware, create_engine

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
# Round trips that are not the request's own statements.
OVERHEAD = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SET|SHOW|START|SAVEPOINT|RELEASE|SELECT 1\b|DO\b)", re.I)
PG_LOG_DIR = Path("/var/log/postgresql")


class ServerLog(Protocol):
    """What one server connection sent, as the server logged it."""

    def mark(self) -> None: ...

    def since_mark(self, connection_id: int) -> list[str]: ...

    def raw_connection(self) -> tuple[Any, int]: ...


class PostgresLog:
    """PostgreSQL's log file; only connections opened with ``LOG_ALL`` are in it."""

    LOG_ALL = "-c log_statement=all"
    ENTRY = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] \S+ LOG:  (?:statement|execute [^:]*): (.*)$")

    def __init__(self) -> None:
        files = sorted(PG_LOG_DIR.glob("postgresql-*.log"), key=lambda path: path.stat().st_mtime)
        assert files, f"no PostgreSQL log under {PG_LOG_DIR}: the server-side count needs it"
        self.path = files[-1]
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self, connection_id: int) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            lines = log.read().decode(errors="replace").splitlines()
        entries = (self.ENTRY.match(line) for line in lines)
        return [entry[2] for entry in entries if entry and int(entry[1]) == connection_id]

    def raw_connection(self) -> tuple[Any, int]:
        url = sa.make_url(LIVE_URLS["postgresql"])
        conn = psycopg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            dbname=url.database,
            autocommit=True,
            options=self.LOG_ALL,
        )
        return conn, conn.info.backend_pid


class MariaDBLog:
    """MariaDB's general log, written to the ``mysql.general_log`` table while a test runs."""

    def __init__(self, admin: sa.Connection) -> None:
        self.admin = admin
        self.seen: dict[int, int] = {}

    def _rows(self, connection_id: int) -> list[str]:
        rows = self.admin.execute(
            sa.text(
                "SELECT command_type, CONVERT(argument USING utf8mb4) FROM mysql.general_log "
                "WHERE thread_id = :id ORDER BY event_time"
            ),
            {"id": connection_id},
        ).all()
        # A command other than a query (a ping, a change of database) shows as its type.
        return [row[1] if row[0] == "Query" else f"<{row[0]}> {row[1]}" for row in rows]

    def mark(self) -> None:
        self.seen = {}

    def since_mark(self, connection_id: int) -> list[str]:
        rows = self._rows(connection_id)
        start = self.seen.get(connection_id, 0)
        self.seen[connection_id] = len(rows)
        return rows[start:]

    def watch(self, connection_id: int) -> None:
        """Start counting a connection's entries from now on."""
        self.seen[connection_id] = len(self._rows(connection_id))

    def raw_connection(self) -> tuple[Any, int]:
        conn = connect("mariadb", sa.make_url(LIVE_URLS["mariadb"]))
        return conn, conn.thread_id()


@contextlib.contextmanager
def mariadb_general_log() -> Iterator[MariaDBLog]:
    """Turn the general log on (to a table as well) and put both settings back afterwards."""
    admin_engine = sa.create_engine(create_engine(LIVE_URLS["mariadb"]).url, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as admin:
        # The settings are global: two suites running at once must not turn
        # the log off under each other, so each holds a named lock meanwhile.
        assert admin.execute(sa.text("SELECT GET_LOCK('wsgi_dbsession general log', 120)")).scalar() == 1
        general_log, log_output = admin.execute(
            sa.text("SELECT @@global.general_log, @@global.log_output")
        ).one()
        if "TABLE" not in log_output.split(","):
            admin.execute(sa.text("SET GLOBAL log_output = :value"), {"value": f"{log_output},TABLE"})
        admin.execute(sa.text("SET GLOBAL general_log = 1"))
        try:
            yield MariaDBLog(admin)
        finally:
            admin.execute(sa.text("SET GLOBAL general_log = :value"), {"value": general_log})
            admin.execute(sa.text("SET GLOBAL log_output = :value"), {"value": log_output})
            admin.execute(sa.text("SELECT RELEASE_LOCK('wsgi_dbsession general log')"))
    admin_engine.dispose()


@pytest.fixture(params=["postgresql", "mariadb"])
def backend(request: pytest.FixtureRequest) -> str:
    """The servers only: SQLite has no server to count at."""
    return str(request.param)


@pytest.fixture
def server(backend: str) -> Iterator[tuple[str, ServerLog, sa.Engine]]:
    """A server whose log shows this test's connections, and an engine of the package's defaults."""
    if backend == "postgresql":
        engine = create_engine(LIVE_URLS[backend], connect_args={"options": PostgresLog.LOG_ALL})
        yield backend, PostgresLog(), engine
    else:
        engine = create_engine(LIVE_URLS[backend])
        with mariadb_general_log() as log:
            yield backend, log, engine
    engine.dispose()


class Probe:
    """One app on the server's engine; counts what each request cost at the server."""

    def __init__(
        self,
        make_app: MakeApp,
        server: tuple[str, ServerLog, sa.Engine],
        **options: Any,
    ) -> None:
        self.backend, self.log, engine = server
        self.app, self.middleware = make_app(session_app, engine=engine, **options)
        self.ids: list[int] = []
        sa.event.listen(engine, "checkout", self._checked_out)
        self.engine = engine

    def _checked_out(self, dbapi_connection: Any, *_args: Any) -> None:
        self.ids.append(server_connection_id(dbapi_connection))

    def request(self, path: str) -> tuple[list[str], list[tuple[str, Any]]]:
        """The statements the server logged for one request, and what SQLAlchemy sent."""
        sent: list[tuple[str, Any]] = []
        stop = self.middleware.store.on_statement(
            lambda statement, parameters: sent.append((statement, parameters))
        )
        self.ids.clear()
        self.log.mark()
        if isinstance(self.log, MariaDBLog):
            for connection_id in self._pooled_ids():
                self.log.watch(connection_id)
        try:
            self.app.get(path)
        finally:
            stop()
        assert len(set(self.ids)) <= 1, "one request, one connection"
        logged = [
            statement for connection_id in set(self.ids) for statement in self.log.since_mark(connection_id)
        ]
        return logged, sent

    def _pooled_ids(self) -> list[int]:
        pool = self.engine.pool
        assert isinstance(pool, sa.pool.QueuePool)
        return [server_connection_id(record.dbapi_connection) for record in list(pool._pool.queue)]  # type: ignore[attr-defined]

    def close(self) -> None:
        sa.event.remove(self.engine, "checkout", self._checked_out)


def replay_through_the_driver(log: ServerLog, sent: list[tuple[str, Any]]) -> list[str]:
    """Send the same statements with the bare driver (autocommit) and return what the server logged."""
    conn, connection_id = log.raw_connection()
    try:
        log.mark()
        if isinstance(log, MariaDBLog):
            log.watch(connection_id)
        with conn.cursor() as cursor:
            for statement, parameters in sent:
                cursor.execute(statement, parameters)
        return log.since_mark(connection_id)
    finally:
        conn.close()


def one_line(statement: str) -> str:
    return " ".join(statement.split())


@pytest.fixture
def probe(server: tuple[str, ServerLog, sa.Engine], make_app: MakeApp) -> Iterator[Callable[..., Probe]]:
    # server first: its engine must outlive make_app's teardown, which drops the table through it.
    probes: list[Probe] = []

    def make(**options: Any) -> Probe:
        probes.append(Probe(make_app, server, **options))
        return probes[-1]

    yield make
    for made in probes:
        made.close()


@pytest.mark.parametrize(
    ("steps", "budget", "kinds"),
    [
        (["/unused"], 0, []),
        (["/incr"], 1, ["INSERT"]),
        (["/incr", "/read"], 1, ["SELECT"]),
        (["/incr", "/incr"], 2, ["SELECT", "UPDATE"]),
    ],
    ids=["unused", "new-session", "read", "read-and-write"],
)
def test_a_request_costs_its_statements_and_nothing_else_at_the_server(
    probe: Callable[..., Probe], steps: list[str], budget: int, kinds: list[str]
) -> None:
    measured = probe()
    measured.app.get("/unused")  # the table exists and one pooled connection is warm
    measured.request("/read")
    for path in steps[:-1]:
        measured.request(path)
    logged, sent = measured.request(steps[-1])
    assert len(logged) == budget, logged
    assert [statement.split()[0].upper() for statement in logged] == kinds
    assert not [statement for statement in logged if OVERHEAD.match(statement)]
    assert [one_line(statement) for statement in logged] == [
        one_line(statement) for statement in replay_through_the_driver(measured.log, sent)
    ]


def test_a_throttled_touch_is_one_update_at_the_server(probe: Callable[..., Probe]) -> None:
    measured = probe(rolling=True, touch_after=0)
    measured.app.get("/incr")
    measured.request("/read")
    logged, sent = measured.request("/read")
    assert [statement.split()[0].upper() for statement in logged] == ["SELECT", "UPDATE"]
    assert [one_line(statement) for statement in logged] == [
        one_line(statement) for statement in replay_through_the_driver(measured.log, sent)
    ]
