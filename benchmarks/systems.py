"""The WSGI apps the benchmarks compare, all answering the same four paths.

- ``/unused``: the handler never touches the session;
- ``/read``: reads ``count`` from the session;
- ``/write``: reads ``count`` and writes ``count + 1`` (a read and a write);
- ``/new``: the same write without a cookie, so a new session is stored.

The systems: the bare app (no session at all), the floor (the same
statements sent straight through the driver by an app that parses its cookie
itself), Beaker's SessionMiddleware with its ``ext:database`` backend, and
wsgi_dbsession.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from wsgi_dbsession import SessionMiddleware, SessionStore
from wsgi_dbsession.dialects import UTC, to_iso_z

from .common import SECRET

PATHS = {"unused": "/unused", "read": "/read", "write": "/write", "new": "/new"}
FLOOR_COOKIE = "bench.sid"
# What express-session keeps next to the app's data, so the floor's rows are
# the size of wsgi_dbsession's.
_COOKIE_META = {
    "originalMaxAge": 86400000,
    "expires": "2030-01-01T00:00:00.000Z",
    "httpOnly": True,
    "path": "/",
    "sameSite": "lax",
}
LIFETIME = dt.timedelta(days=1)

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _headers() -> list[tuple[str, str]]:
    # A fresh list per response: Beaker appends its Set-Cookie to the list it is given.
    return [("Content-Type", "text/plain"), ("Content-Length", "2")]


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The application with no session at all: what every other system adds to."""
    environ["PATH_INFO"]  # the same dispatch work the other apps do
    start_response("200 OK", _headers())
    return [b"ok"]


def session_app(environ_key: str, *, explicit_save: bool = False) -> App:
    """The handler for a session middleware that puts its session at ``environ[environ_key]``.

    ``explicit_save``: call ``session.save()`` after a change, as Beaker
    requires (wsgi_dbsession needs no such call).
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path != "/unused":
            session = environ[environ_key]
            count = session.get("count", 0)
            if path != "/read":
                session["count"] = count + 1
                if explicit_save:
                    session.save()
        start_response("200 OK", _headers())
        return [b"ok"]

    return app


class Floor:
    """The least a database session can cost: the statements wsgi_dbsession sends, through the driver.

    The same SELECT by primary key (expiry checked in SQL), the same
    compare-and-set UPDATE for a changed session and the same upsert for a
    new one, on one autocommit connection: psycopg 3 with prepared
    statements, PyMySQL, or sqlite3 in WAL mode. The cookie holds the bare
    session id (no signature), so the floor does strictly less than any
    real session middleware.
    """

    def __init__(self, backend: str, url: sa.URL, table: str) -> None:
        self.backend = backend
        self.statements = 0
        self.connection = connect(backend, url)
        self._cursor = self.connection.cursor()
        mark = "?" if backend == "sqlite" else "%s"
        sess = "sess::text" if backend == "postgresql" else "sess"
        self._select = f"SELECT {sess}, expired FROM {table} WHERE sid = {mark} AND expired >= {mark}"
        self._replace = (
            f"UPDATE {table} SET sess = {mark}, expired = {mark} WHERE sid = {mark} AND {sess} = {mark}"
        )
        insert = f"INSERT INTO {table} (sid, sess, expired) VALUES ({mark}, {mark}, {mark})"
        if backend == "mariadb":
            self._upsert = f"{insert} ON DUPLICATE KEY UPDATE sess = VALUES(sess), expired = VALUES(expired)"
        else:
            self._upsert = (
                f"{insert} ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expired = excluded.expired"
            )

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        self.statements += 1
        if self.backend == "postgresql":
            return self._cursor.execute(sql, params, prepare=True)
        return self._cursor.execute(sql, params)

    def _timestamp(self, value: dt.datetime) -> Any:
        if self.backend == "sqlite":
            return to_iso_z(value)
        if self.backend == "mariadb":
            return value.replace(tzinfo=None, microsecond=0)
        return value

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        headers = _headers()
        if path in ("/read", "/write"):
            sid = _floor_sid(environ.get("HTTP_COOKIE"))
            now = dt.datetime.now(UTC)
            self._execute(self._select, (sid, self._timestamp(now)))
            row = self._cursor.fetchone()
            if row is not None:
                data = json.loads(row[0])
                count = data.get("count", 0)
                if path == "/write":
                    data["count"] = count + 1
                    text = json.dumps(data, separators=(",", ":"))
                    self._execute(self._replace, (text, self._timestamp(now + LIFETIME), sid, row[0]))
        elif path == "/new":
            sid = secrets.token_urlsafe(24)
            text = json.dumps({"cookie": _COOKIE_META, "count": 1}, separators=(",", ":"))
            self._execute(self._upsert, (sid, text, self._timestamp(dt.datetime.now(UTC) + LIFETIME)))
            headers.append(("Set-Cookie", f"{FLOOR_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Lax"))
        start_response("200 OK", headers)
        return [b"ok"]

    def close(self) -> None:
        self.connection.close()


def _floor_sid(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == FLOOR_COOKIE:
            return value
    return None


def connect(backend: str, url: sa.URL) -> Any:
    """An autocommit DBAPI connection straight from the driver (SQLite: in WAL mode)."""
    if backend == "sqlite":
        assert url.database is not None
        connection = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
        # The pragmas wsgi_dbsession's default SQLite engine sets.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection
    if backend == "postgresql":
        import psycopg

        return psycopg.connect(url.set(drivername="postgresql").render_as_string(False), autocommit=True)
    import pymysql

    return pymysql.connect(
        host=url.host,
        port=url.port or 3306,
        user=url.username,
        password=url.password or "",
        database=url.database,
        autocommit=True,
    )


def create_session_table(url: sa.URL, table: str) -> None:
    """The sessions table, exactly as wsgi_dbsession creates it."""
    store = SessionStore(url=url, table_name=table)
    try:
        store.create_table()
    finally:
        store.dispose()


def ours(url: sa.URL, table: str, **options: Any) -> SessionMiddleware:
    """wsgi_dbsession with its defaults (cleanup included), on ``table``."""
    middleware = SessionMiddleware(
        session_app("dbsession"), secret=SECRET, url=url, table_name=table, **options
    )
    middleware.store.create_table()
    return middleware


def beaker(url: sa.URL, table: str, lock_dir: Path) -> App:
    """Beaker's SessionMiddleware, ext:database backend, its defaults, a signed cookie."""
    from beaker.middleware import SessionMiddleware as BeakerMiddleware

    config = {
        "session.type": "ext:database",
        "session.url": url.render_as_string(False),
        "session.table_name": table,
        "session.lock_dir": str(lock_dir),
        "session.secret": SECRET,
        "session.key": "beaker.sid",
    }
    app: App = BeakerMiddleware(session_app("beaker.session", explicit_save=True), config)
    return app


def beaker_engine(url: sa.URL) -> sa.Engine:
    """The engine Beaker's ext:database made for ``url`` (after its first request)."""
    from beaker.ext.database import DatabaseNamespaceManager

    engine: sa.Engine = DatabaseNamespaceManager.binds.dict[url.render_as_string(False)]
    return engine


def dispose_beaker(url: sa.URL) -> None:
    """Close Beaker's pooled connections and forget its engine and tables for ``url``."""
    from beaker.ext.database import DatabaseNamespaceManager

    key = url.render_as_string(False)
    engine = DatabaseNamespaceManager.binds.dict.pop(key, None)
    if engine is not None:
        DatabaseNamespaceManager.binds.dict.pop(str(engine.url), None)
        engine.dispose()
    tables = DatabaseNamespaceManager.tables.dict
    for table_key in [k for k in tables if str(k).startswith(key)]:
        del tables[table_key]


def call(app: App, path: str, cookie: str | None = None) -> list[tuple[str, str]]:
    """One request, the way a WSGI server makes it; returns the response headers."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    sent: list[tuple[str, str]] = []

    def start_response(_status: str, headers: list[tuple[str, str]], _exc_info: Any = None) -> None:
        sent[:] = headers

    body = app(environ, start_response)
    for _chunk in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return sent


def cookie_of(headers: list[tuple[str, str]]) -> str:
    """The ``name=value`` a browser sends back for the response's Set-Cookie header."""
    for name, value in headers:
        if name.lower() == "set-cookie":
            return value.strip().split(";", 1)[0]
    raise RuntimeError("the response set no cookie")
