"""Fixtures shared by the whole suite: live databases, isolated tables, statement counts.

Every test gets its own table (a random name), so tests, and several runs of
the suite, never see each other's rows. PostgreSQL and MariaDB are required:
a test that cannot reach them fails, it is not skipped.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import webtest

from wsgi_dbsession import SessionMiddleware, SessionStore, create_engine

SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"

LIVE_URLS = {
    "postgresql": os.environ.get("WSGI_DBSESSION_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("WSGI_DBSESSION_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
MSSQL_URL = os.environ.get("WSGI_DBSESSION_MSSQL_URL")
# MSSQL joins the whole backend-parametrized suite only where a server is given;
# tests/test_mssql.py checks its SQL everywhere and says when its live part skips.
BACKENDS = ["sqlite", "postgresql", "mariadb", *(["mssql"] if MSSQL_URL else [])]


def backend_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a live backend; SQLite is a fresh file per call."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'sessions.sqlite'}"
    if backend == "mssql":
        if not MSSQL_URL:
            pytest.skip("no MSSQL server here: set WSGI_DBSESSION_MSSQL_URL to run the live MSSQL tests")
        return MSSQL_URL
    return LIVE_URLS[backend]


def unique_table_name(prefix: str = "sessions") -> str:
    return f"{prefix}_{secrets.token_hex(5)}"


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Terminate a server the test started; kill it if it does not exit in ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def drop_table(engine: sa.Engine, table: sa.Table) -> None:
    with engine.connect() as conn:
        table.drop(conn, checkfirst=True)
        conn.commit()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each live database in turn: the contract suite runs once per backend."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return backend_url(backend, tmp_path_factory)


@pytest.fixture
def table_name() -> str:
    return unique_table_name()


def checked_out(store: SessionStore) -> int:
    """Connections still checked out of the store's pool, beyond the one this thread keeps."""
    store.release_connection()
    return int(store.engine.pool.checkedout())  # type: ignore[attr-defined]


class StatementLog:
    """The statements a store sent: its own statement hook sees the hot statements
    (run on the driver's cursor) and the work on Core connections alike.
    """

    def __init__(self, store: SessionStore) -> None:
        self.statements: list[str] = []
        self._stop = store.on_statement(lambda sql, _parameters: self.statements.append(sql))

    def clear(self) -> None:
        self.statements.clear()

    def __len__(self) -> int:
        return len(self.statements)

    def remove(self) -> None:
        self._stop()


@pytest.fixture
def make_store(db_url: str, table_name: str) -> Iterator[Callable[..., SessionStore]]:
    """Build stores on this test's table; the table is dropped afterwards."""
    stores: list[SessionStore] = []

    def make(**options: Any) -> SessionStore:
        options.setdefault("table_name", table_name)
        store = SessionStore(url=db_url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        drop_table(store.engine, store.table)
        assert checked_out(store) == 0, "a connection was left checked out"
        store.dispose()


@pytest.fixture
def store(make_store: Callable[..., SessionStore]) -> SessionStore:
    store = make_store()
    store.create_table()
    return store


@pytest.fixture
def make_app(
    db_url: str, table_name: str
) -> Iterator[Callable[..., tuple[webtest.TestApp, SessionMiddleware]]]:
    """Wrap a WSGI app in the middleware on this test's table, for WebTest."""
    built: list[SessionMiddleware] = []

    def make(app: Callable[..., Any], **options: Any) -> tuple[webtest.TestApp, SessionMiddleware]:
        options.setdefault("secret", SECRET)
        options.setdefault("table_name", table_name)
        options.setdefault("cleanup_interval", 0)
        if "engine" not in options:
            options.setdefault("url", db_url)
        middleware = SessionMiddleware(app, **options)
        middleware.store.create_table()
        built.append(middleware)
        return webtest.TestApp(middleware), middleware

    yield make
    for middleware in built:
        drop_table(middleware.store.engine, middleware.store.table)
        assert checked_out(middleware.store) == 0, "a connection was left checked out"
        middleware.close()


@pytest.fixture
def engine_for() -> Iterator[Callable[[str], sa.Engine]]:
    """Engines made with the package's tuned defaults, disposed afterwards."""
    engines: list[sa.Engine] = []

    def make(url: str) -> sa.Engine:
        engine = create_engine(url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()
