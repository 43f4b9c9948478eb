"""The WSGI apps the benchmarks compare, all answering the same four paths.

- ``/unused``: the handler never touches the session;
- ``/read``: reads ``count`` from the session;
- ``/write``: reads ``count`` and writes ``count + 1`` (a read and a write);
- ``/new``: the same write without a cookie, so a new session is stored.

The systems: the bare app (no session at all); **raw**, the statements
wsgi_dbsession sends, straight through the driver, by an app that parses an
unsigned cookie itself (the floor: no session layer at all); **min**, the
least a correct session middleware does by hand on the same driver
connections (signed cookie, expiry in SQL, JSON, upsert, Set-Cookie);
Beaker's SessionMiddleware with its ``ext:database`` backend; Django's
database sessions (``benchmarks/django_sessions.py``); and wsgi_dbsession.

raw and min format their timestamps and parse their cookies here, without
wsgi_dbsession's helpers, so a change to the package cannot move them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import io
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import sqlalchemy as sa

from wsgi_dbsession import SessionMiddleware, SessionStore

from .common import SECRET

PATHS = {"unused": "/unused", "read": "/read", "write": "/write", "new": "/new"}
RAW_COOKIE = "bench.sid"
# What express-session keeps next to the app's data, so the raw rows are
# the size of wsgi_dbsession's.
_COOKIE_META = {
    "originalMaxAge": 86400000,
    "expires": "2030-01-01T00:00:00.000Z",
    "httpOnly": True,
    "path": "/",
    "sameSite": "lax",
}
LIFETIME = dt.timedelta(days=1)
UTC = dt.timezone.utc

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


def iso_z(value: dt.datetime) -> str:
    """JavaScript's ``Date.toISOString()`` of an aware UTC datetime (how SQLite rows store expiry)."""
    return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}Z"


def db_timestamp(backend: str, value: dt.datetime) -> Any:
    """An aware UTC datetime as the driver takes it for the ``expired`` column."""
    if backend == "sqlite":
        return iso_z(value)
    if backend == "mariadb":
        return value.replace(tzinfo=None, microsecond=0)
    return value


def _upsert_sql(backend: str, table: str, mark: str) -> str:
    insert = f"INSERT INTO {table} (sid, sess, expired) VALUES ({mark}, {mark}, {mark})"
    if backend == "mariadb":
        return f"{insert} ON DUPLICATE KEY UPDATE sess = VALUES(sess), expired = VALUES(expired)"
    return f"{insert} ON CONFLICT (sid) DO UPDATE SET sess = excluded.sess, expired = excluded.expired"


class Raw:
    """The floor: the statements wsgi_dbsession sends, straight through the driver, and nothing else.

    The same SELECT by primary key (expiry checked in SQL), the same
    compare-and-set UPDATE for a changed session and the same upsert for a
    new one, on one autocommit connection: psycopg 3 with prepared
    statements, PyMySQL, or sqlite3 in WAL mode. The cookie holds the bare
    session id (no signature), so raw does strictly less than any real
    session middleware.
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
        self._upsert = _upsert_sql(backend, table, mark)

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        self.statements += 1
        if self.backend == "postgresql":
            return self._cursor.execute(sql, params, prepare=True)
        return self._cursor.execute(sql, params)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        headers = _headers()
        if path in ("/read", "/write"):
            sid = _raw_sid(environ.get("HTTP_COOKIE"))
            now = dt.datetime.now(UTC)
            self._execute(self._select, (sid, db_timestamp(self.backend, now)))
            row = self._cursor.fetchone()
            if row is not None:
                data = json.loads(row[0])
                count = data.get("count", 0)
                if path == "/write":
                    data["count"] = count + 1
                    text = json.dumps(data, separators=(",", ":"))
                    expires = db_timestamp(self.backend, now + LIFETIME)
                    self._execute(self._replace, (text, expires, sid, row[0]))
        elif path == "/new":
            sid = secrets.token_urlsafe(24)
            text = json.dumps({"cookie": _COOKIE_META, "count": 1}, separators=(",", ":"))
            expires = db_timestamp(self.backend, dt.datetime.now(UTC) + LIFETIME)
            self._execute(self._upsert, (sid, text, expires))
            headers.append(("Set-Cookie", f"{RAW_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Lax"))
        start_response("200 OK", headers)
        return [b"ok"]

    def close(self) -> None:
        self.connection.close()


def _raw_sid(cookie_header: str | None) -> str | None:
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == RAW_COOKIE:
            return value
    return None


# --- min: the least a correct session middleware does, written by hand -----------------------
MIN_KEY = "min.session"  # where Min puts the session in the environ
MIN_COOKIE = "connect.sid"
MAX_AGE = 86400  # seconds


class MinSession(dict[str, Any]):
    """The session dict; assigning or deleting a key marks it changed (nested changes are not seen)."""

    changed = False

    def __setitem__(self, key: str, value: Any) -> None:
        self.changed = True
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changed = True
        super().__delitem__(key)


class Min:
    """A hand-written session middleware: what a correct one cannot do without, on raw's connection.

    Verifies express-session's signed cookie (``s:<sid>.<HMAC-SHA256>``,
    URL-encoded), SELECTs the live row with the expiry checked in SQL and
    ``json.loads`` it; after a change, ``json.dumps`` with express-session's
    cookie object, one upsert and a signed ``Set-Cookie`` with Max-Age and
    Expires. No laziness, no compare-and-set, no nested-change detection, no
    rolling expiry, no error handling: the reference a general middleware is
    measured against, not a product.
    """

    def __init__(self, backend: str, url: sa.URL, table: str, app: App | None = None) -> None:
        self.backend, self.app, self.statements = backend, app or session_app(MIN_KEY), 0
        self.connection = connect(backend, url)
        self._cursor = self.connection.cursor()
        self._key = SECRET.encode()
        mark = "?" if backend == "sqlite" else "%s"
        sess = "sess::text" if backend == "postgresql" else "sess"
        self._select = f"SELECT {sess} FROM {table} WHERE sid = {mark} AND expired >= {mark}"
        self._upsert = _upsert_sql(backend, table, mark)

    def _execute(self, sql: str, params: tuple[Any, ...]) -> None:
        self.statements += 1
        if self.backend == "postgresql":
            self._cursor.execute(sql, params, prepare=True)
        else:
            self._cursor.execute(sql, params)

    def _signature(self, sid: str) -> str:
        digest = hmac.new(self._key, sid.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode().rstrip("=")

    def _verified_sid(self, cookie_header: str | None) -> str | None:
        for part in (cookie_header or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == MIN_COOKIE and (value := unquote(value)).startswith("s:"):
                sid, _, signature = value[2:].rpartition(".")
                if sid and hmac.compare_digest(self._signature(sid), signature):
                    return sid
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        now = dt.datetime.now(UTC)
        sid = self._verified_sid(environ.get("HTTP_COOKIE"))
        row = None
        if sid is not None:
            self._execute(self._select, (sid, db_timestamp(self.backend, now)))
            row = self._cursor.fetchone()
        session = environ[MIN_KEY] = MinSession(json.loads(row[0]) if row else {})
        sid = sid if row else None

        def save_then_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if session.changed:
                new_sid = sid or secrets.token_urlsafe(24)
                expires = now + LIFETIME
                cookie = {**_COOKIE_META, "expires": iso_z(expires)}
                text = json.dumps({**session, "cookie": cookie}, separators=(",", ":"))
                self._execute(self._upsert, (new_sid, text, db_timestamp(self.backend, expires)))
                value = quote(f"s:{new_sid}.{self._signature(new_sid)}", safe="-_.!~*'()")
                http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", expires.timetuple())
                headers = [
                    *headers,
                    (
                        "Set-Cookie",
                        f"{MIN_COOKIE}={value}; Max-Age={MAX_AGE}; Path=/; Expires={http_date}; "
                        "HttpOnly; SameSite=Lax",
                    ),
                ]
            return start_response(status, headers, exc_info)

        return self.app(environ, save_then_start)

    def close(self) -> None:
        self.connection.close()


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


_NO_BODY = io.BytesIO()  # every request is a GET without a body (Django's request wants a stream)


def call(app: App, path: str, cookie: str | None = None) -> list[tuple[str, str]]:
    """One request, the way a WSGI server makes it; returns the response headers."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": _NO_BODY,
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
