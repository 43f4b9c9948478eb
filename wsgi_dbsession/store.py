"""The sessions table and every statement sent to it.

:class:`SessionStore` is usable on its own (``get``/``set``/``touch``/
``destroy``/``prune``/``count``/``clear``); the session object uses the
lower-level ``load``/``write``/``replace``/``rename`` that speak in the exact
JSON text stored, which change detection and compare-and-set rely on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from .dialects import UTC, ExpiryTimestamp, SessionJSON, batch_delete, create_missing_table, strategy_for
from .exceptions import ConfigurationError, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_SQLITE_FILE = "wsgi_dbsession.sqlite"
PRUNE_BATCH_SIZE = 1000  # rows deleted per statement (and per transaction) by a prune
# The drivers this package is tested with, used when a URL names none.
_DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql", "mssql": "pymssql"}

# Seconds a new connection may take before the request fails with
# StoreUnavailable instead of hanging a worker; by driver, the argument that
# bounds it (psycopg: the whole handshake; pymysql: the TCP connect only).
CONNECT_TIMEOUT = 5  # seconds
_CONNECT_TIMEOUT_ARGS = {
    "psycopg": "connect_timeout",
    "pymysql": "connect_timeout",
    "pymssql": "login_timeout",
}

T = TypeVar("T")


class Serializer(Protocol):
    """Turns the session dict into the text of the ``sess`` column and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JSONSerializer:
    """Compact JSON; NaN and infinities are refused because the column rejects them."""

    def dumps(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def loads(self, text: str) -> Any:
        return json.loads(text)


@dataclass(frozen=True)
class SessionStats:
    """How many rows the table holds: live ones and expired ones not pruned yet."""

    live: int
    expired: int


@dataclass(frozen=True)
class StoredSession:
    """One live row: the exact ``sess`` text and its expiry (aware UTC)."""

    text: str
    expires: dt.datetime


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def normalize_url(url: str | URL) -> URL:
    """Give a bare ``postgresql://``, ``mysql://`` or ``mssql://`` URL its tested driver."""
    parsed = make_url(url)
    if "+" not in parsed.drivername and parsed.drivername in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=f"{parsed.drivername}+{_DEFAULT_DRIVERS[parsed.drivername]}")
    return parsed


def create_engine(url: str | URL | None = None, **options: Any) -> Engine:
    """An engine that sends each statement in one round trip.

    Autocommit connections (no BEGIN/COMMIT), no rollback when a connection
    goes back to the pool, no pre-ping (the store retries once after a
    disconnect instead). ``url=None`` is the SQLite file
    ``wsgi_dbsession.sqlite`` in the working directory, in WAL mode with a
    5 s busy timeout and ``synchronous=NORMAL``. Connecting gives up after
    :data:`CONNECT_TIMEOUT` seconds unless the URL or ``connect_args`` says
    otherwise, and statement parameters (session ids, session data) are kept
    out of logs and error messages. ``options`` go to
    :func:`sqlalchemy.create_engine` and win over these defaults.
    """
    parsed = normalize_url(url if url is not None else f"sqlite:///{DEFAULT_SQLITE_FILE}")
    defaults: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,
        "skip_autocommit_rollback": True,
        "pool_pre_ping": False,
        "hide_parameters": True,
    }
    timeout_arg = _CONNECT_TIMEOUT_ARGS.get(parsed.get_driver_name())
    if timeout_arg is not None and timeout_arg not in parsed.query:
        options["connect_args"] = {timeout_arg: CONNECT_TIMEOUT, **options.get("connect_args", {})}
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        defaults["pool_recycle"] = 3600  # below MySQL's default wait_timeout of 8 hours
    engine = sa.create_engine(parsed, **{**defaults, **options})
    if engine.dialect.name == "sqlite" and parsed.database not in (None, "", ":memory:"):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer in several processes work at once;
    # with WAL, synchronous=NORMAL keeps every committed transaction across a
    # process crash (only an OS crash can lose the last ones) without an
    # fsync per commit. Pass your own engine to choose FULL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class SessionStore:
    """The sessions table of connect-session-knex, through SQLAlchemy Core.

    Give ``url`` or ``engine`` (neither: the default SQLite file). The table
    is created on first use when ``create_table`` is true, so a database that
    is down when the process starts does not break the store for good.
    """

    def __init__(
        self,
        *,
        url: str | URL | None = None,
        engine: Engine | None = None,
        table_name: str = "sessions",
        sid_column: str = "sid",
        schema: str | None = None,
        create_table: bool = True,
        serializer: Serializer | None = None,
    ) -> None:
        if url is not None and engine is not None:
            raise ConfigurationError("give url or engine, not both")
        if schema is None and "." in table_name:
            schema, table_name = table_name.split(".", 1)
        if not table_name or not sid_column:
            raise ConfigurationError("table_name and sid_column must not be empty")
        self.engine = engine if engine is not None else create_engine(url)
        self._owns_engine = engine is None
        self.serializer: Serializer = serializer or JSONSerializer()
        self.table = sa.Table(
            table_name,
            sa.MetaData(),
            sa.Column(sid_column, sa.Unicode(255), primary_key=True),
            sa.Column("sess", SessionJSON(), nullable=False),
            sa.Column("expired", ExpiryTimestamp(), nullable=False),
            sa.Index(f"{table_name}_expired_index", "expired"),
            schema=schema,
        )
        self.dialect = strategy_for(self.engine.dialect)
        self._table_ready = not create_table
        self._table_lock = threading.Lock()
        _STORES.add(self)

        table, sid, expired = self.table, self.table.c[sid_column], self.table.c.expired
        self._sid = sid
        self._select = sa.select(self.dialect.sess_text(table.c.sess).label("sess"), expired).where(
            sid == sa.bindparam("sid"), expired >= sa.bindparam("now", type_=ExpiryTimestamp())
        )
        self._replace = (
            sa.update(table)
            .where(sid == sa.bindparam("b_sid"))
            .where(self.dialect.sess_equals(table.c.sess, sa.bindparam("expected", type_=sa.UnicodeText())))
            .values(sess=sa.bindparam("sess"), expired=sa.bindparam("expired"))
        )
        self._rename = (
            sa.update(table)
            .where(sid == sa.bindparam("old_sid"))
            .values(
                {
                    sid: sa.bindparam("new_sid"),
                    "sess": sa.bindparam("sess"),
                    "expired": sa.bindparam("expired"),
                }
            )
        )
        self._touch = (
            sa.update(table).where(sid == sa.bindparam("b_sid")).values(expired=sa.bindparam("expired"))
        )
        self._delete = sa.delete(table).where(sid == sa.bindparam("b_sid"))
        self._driver_cursor = self.engine.dialect.name in _DRIVER_CURSOR_DIALECTS
        hot = {
            "select": self._select,
            "replace": self._replace,
            "rename": self._rename,
            "touch": self._touch,
            "delete": self._delete,
        }
        if self.dialect.upsert_statement is not None:
            hot["upsert"] = self.dialect.upsert_statement(table)
        self._hot = {name: _DriverStatement(stmt) for name, stmt in hot.items()}

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"<SessionStore {self.table.fullname!r} on {url!r}>"

    # -- plumbing ---------------------------------------------------------

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` on a pooled connection, retrying once after a disconnect.

        A connection that died (database restarted, idle timeout) is noticed
        by the statement that uses it; that statement runs again on a fresh
        connection instead of paying a pre-ping on every checkout.
        """

        def attempt() -> T:
            with self.engine.connect() as conn:
                result = work(conn)
                if _needs_commit(conn.dialect, conn.connection.dbapi_connection):
                    conn.commit()
                return result

        return self._retrying(attempt)

    def _run_hot(self, statement: _DriverStatement, params: dict[str, Any], *, fetch: bool = False) -> Any:
        """A hot statement: on the driver's cursor while nothing observes the engine, else through Core.

        Returns the first row (``fetch``) or the row count.
        """
        if self._driver_cursor and not _observed(self.engine):
            return self._retrying(lambda: statement.execute(self.engine, params, fetch=fetch))
        if fetch:
            return self.run(lambda conn: conn.execute(statement.statement, params).first())
        return self.run(lambda conn: conn.execute(statement.statement, params).rowcount)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        self._ensure_table()
        for number in (1, 2):
            try:
                return attempt()
            except DBAPIError as exc:
                if exc.connection_invalidated and number == 1:
                    log.info("session store connection was lost; retrying on a fresh one")
                    continue
                raise _store_error(exc) from exc
            except sa.exc.TimeoutError as exc:  # the pool stayed exhausted for pool_timeout
                raise StoreUnavailable(f"no session database connection became free: {exc}") from exc
        raise AssertionError("unreachable")

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if not self._table_ready:
                self.create_table()

    def create_table(self) -> None:
        """Create the table and its expiry index when missing; safe to race."""
        try:
            with self.engine.connect() as conn:
                create_missing_table(conn, self.table)
                conn.commit()
        except DBAPIError as exc:
            # Another process may have created it between our check and our CREATE.
            try:
                exists = sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema)
            except DBAPIError:
                exists = False  # the database is unreachable: report the first error
            if not exists:
                raise _store_error(exc) from exc
        self._table_ready = True

    def dispose(self) -> None:
        """Close pooled connections (only those of an engine this store created)."""
        if self._owns_engine:
            self.engine.dispose()

    # -- what the session object uses ---------------------------------------

    def load(self, sid: str, now: dt.datetime | None = None) -> StoredSession | None:
        """The live row for ``sid``; an expired row is never returned."""
        row = self._run_hot(self._hot["select"], {"sid": sid, "now": now or utcnow()}, fetch=True)
        return None if row is None else StoredSession(row[0], row[1])

    def write(self, sid: str, text: str, expires: dt.datetime) -> None:
        """Insert or overwrite the row, in one statement (the dialect's upsert)."""
        params = {self._sid.name: sid, "sess": text, "expired": expires}
        steps = self.dialect.upsert_steps
        if steps is None:
            self._run_hot(self._hot["upsert"], params)
        else:
            self.run(lambda conn: steps(conn, self.table, params))

    def replace(self, sid: str, text: str, expires: dt.datetime, *, expected: str) -> bool:
        """Compare-and-set: overwrite only while ``sess`` is still ``expected``."""
        params = {"b_sid": sid, "sess": text, "expired": expires, "expected": expected}
        return bool(self._run_hot(self._hot["replace"], params) == 1)

    def rename(self, old_sid: str, new_sid: str, text: str, expires: dt.datetime) -> bool:
        """Move a row to a new id with new contents, atomically (session regeneration)."""
        params = {"old_sid": old_sid, "new_sid": new_sid, "sess": text, "expired": expires}
        return bool(self._run_hot(self._hot["rename"], params) == 1)

    # -- the public store API ------------------------------------------------

    def get(self, sid: str) -> dict[str, Any] | None:
        """The session data for ``sid``, or None when missing or expired."""
        stored = self.load(sid)
        return None if stored is None else dict(self.serializer.loads(stored.text))

    def set(self, sid: str, data: dict[str, Any], expires: dt.datetime) -> None:
        """Store ``data`` under ``sid`` until ``expires`` (an aware datetime)."""
        self.write(sid, self.serializer.dumps(data), expires)

    def touch(self, sid: str, expires: dt.datetime) -> bool:
        """Move the expiry of an existing row; False when there is no such row."""
        return bool(self._run_hot(self._hot["touch"], {"b_sid": sid, "expired": expires}) == 1)

    def destroy(self, sid: str) -> None:
        """Delete the row for ``sid`` (nothing happens when there is none)."""
        self._run_hot(self._hot["delete"], {"b_sid": sid})

    def prune(
        self,
        now: dt.datetime | None = None,
        *,
        batch_size: int = PRUNE_BATCH_SIZE,  # rows per statement
        connection: Connection | None = None,
    ) -> int:
        """Delete every row expired before ``now``, in batches; returns how many went.

        It takes no lock: :func:`wsgi_dbsession.cleanup.prune_once` does.
        """
        return sum(self.prune_batches(now, batch_size=batch_size, connection=connection))

    def prune_batches(
        self,
        now: dt.datetime | None = None,
        *,
        batch_size: int = PRUNE_BATCH_SIZE,  # rows per statement
        connection: Connection | None = None,
    ) -> Iterator[int]:
        """Delete expired rows ``batch_size`` at a time; yields each batch's count.

        Each batch is one statement in its own transaction, so a live request
        never waits longer than one batch. ``now`` is fixed before the first
        batch: rows expiring meanwhile are left for the next prune, so the
        loop ends under steady traffic. The batches run on ``connection``
        when given (the one holding the prune lock), else each on a pooled
        connection.
        """
        if batch_size < 1:
            raise ConfigurationError("the prune batch size must be at least 1 row")
        stmt = batch_delete(self.table, self.engine.dialect, batch_size)
        params = {"now": now or utcnow()}

        def delete(conn: Connection) -> int:
            return int(conn.execute(stmt, params).rowcount)

        while True:
            if connection is None:
                deleted = self.run(delete)
            else:
                self._ensure_table()
                try:
                    deleted = delete(connection)
                    if _needs_commit(connection.dialect, connection.connection.dbapi_connection):
                        connection.commit()
                except DBAPIError as exc:
                    raise _store_error(exc) from exc
            yield deleted
            if deleted < batch_size:
                return

    def count(self, *, expired: bool = False, now: dt.datetime | None = None) -> int:
        """How many live rows there are (``expired=True``: how many expired ones)."""
        column = self.table.c.expired
        bound = sa.bindparam("now", type_=ExpiryTimestamp())
        condition = column < bound if expired else column >= bound
        stmt = sa.select(sa.func.count()).select_from(self.table).where(condition)
        return int(self.run(lambda conn: conn.execute(stmt, {"now": now or utcnow()}).scalar_one()))

    def stats(self, now: dt.datetime | None = None) -> SessionStats:
        """How many rows are live and how many expired, at ``now``."""
        now = now or utcnow()
        return SessionStats(live=self.count(now=now), expired=self.count(expired=True, now=now))

    def clear(self) -> None:
        """Delete every row, live or not."""
        self.run(lambda conn: conn.execute(sa.delete(self.table)))


# A connection used by two processes mixes their conversations, and gunicorn
# --preload builds the store before it forks: a child starts with an empty
# pool. close=False leaves the parent's connections alone.
_STORES: weakref.WeakSet[SessionStore] = weakref.WeakSet()


def _forget_inherited_pools() -> None:
    for store in list(_STORES):
        store.engine.dispose(close=False)


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_forget_inherited_pools)


def _needs_commit(dialect: Dialect, dbapi_connection: Any) -> bool:
    """Whether the statement's transaction must be committed.

    Not on an autocommit connection, where PyMySQL's ``commit()`` would still
    send a COMMIT: a hidden round trip per statement. A dialect that cannot
    tell (pymssql) gets its commit.
    """
    try:
        return dbapi_connection is None or not dialect.detect_autocommit_setting(dbapi_connection)
    except NotImplementedError:
        return True


# Dialects whose hot statements may run on the driver's own cursor: the ones
# whose drivers (sqlite3, psycopg, PyMySQL) are tested live here.
_DRIVER_CURSOR_DIALECTS = frozenset(("sqlite", "postgresql", "mysql", "mariadb"))


def _observed(engine: Engine) -> bool:
    """Whether something watches the engine's statements (instrumentation, tests, echo)."""
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute or engine.echo)


class _DriverStatement:
    """A hot statement compiled once for an engine and run on a pooled connection's DBAPI cursor.

    A primary-key lookup on a nearby database takes less time than
    SQLAlchemy's per-execution bookkeeping (execution context, result
    object). This keeps the Core statement, the dialect's SQL and the
    types' bind and result processing, and skips only that bookkeeping.
    The store uses it only while nothing listens to the engine's cursor
    events or echoes its SQL, so instrumentation sees every statement.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: _CompiledStatement | None = None

    def execute(self, engine: Engine, params: dict[str, Any], *, fetch: bool) -> Any:
        """The first row (``fetch``) or the row count; driver errors come out as SQLAlchemy's."""
        dialect = engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        pooled = None
        cursor = None
        sql = None
        try:
            pooled = engine.raw_connection()
            # Compiled once connected: MySQL's SQL differs for MariaDB, known only then.
            compiled = self._compiled or self._compile(dialect)
            sql = compiled.sql
            parameters = compiled.parameters(params)
            cursor = pooled.cursor()
            cursor.execute(sql, parameters)
            result = compiled.row(cursor.fetchone()) if fetch else cursor.rowcount
            cursor.close()
            if _needs_commit(dialect, pooled.dbapi_connection):
                pooled.commit()
            return result
        except dbapi_error as exc:
            invalidated = pooled is not None and dialect.is_disconnect(exc, pooled.dbapi_connection, cursor)
            if invalidated:
                # As Core does: the server restarted or dropped us, so every
                # connection pooled before now is recycled, not just this one.
                engine.pool._invalidate(pooled, exc)  # type: ignore[arg-type]
            raise DBAPIError.instance(
                sql,
                None,
                exc,
                dbapi_error,
                hide_parameters=True,
                dialect=dialect,
                connection_invalidated=invalidated,
            ) from exc
        finally:
            if pooled is not None:
                pooled.close()

    def _compile(self, dialect: Dialect) -> _CompiledStatement:
        self._compiled = _CompiledStatement(self.statement, dialect)
        return self._compiled


class _CompiledStatement:
    """A statement's SQL for one dialect, with the processing of its parameters and row."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        self.compiled = compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        escaped = compiled.escaped_bind_names
        self.bind_processors = {
            escaped.get(key, key): processor
            for key, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        columns = getattr(statement, "selected_columns", ())
        self.result_processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]

    def parameters(self, params: dict[str, Any]) -> Any:
        values = self.compiled.construct_params(params)
        try:
            for name, process in self.bind_processors.items():
                values[name] = process(values[name])
        except Exception as exc:  # as Core reports a value its type refuses
            raise sa.exc.StatementError(str(exc), self.sql, None, exc) from exc
        if self.compiled.positiontup is not None:
            return tuple(values[name] for name in self.compiled.positiontup)
        return values

    def row(self, row: Any) -> tuple[Any, ...] | None:
        if row is None:
            return None
        return tuple(
            value if process is None else process(value)
            for value, process in zip(row, self.result_processors, strict=True)
        )


def _store_error(exc: DBAPIError) -> StoreError:
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return StoreUnavailable(f"the session database is unavailable: {exc.orig!r}")
    return StoreError(f"the session table could not be used: {exc.orig!r}")
