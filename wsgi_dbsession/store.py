"""The sessions table and every statement sent to it.

:class:`SessionStore` is usable on its own (``get``/``set``/``touch``/
``destroy``/``prune``/``count``/``clear``); the session object uses the
lower-level ``load``/``write``/``replace``/``rename`` that speak in the exact
JSON text stored, which change detection and compare-and-set rely on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from .check import unusable_columns
from .dialects import (
    BACKEND_ALIASES,
    ExpiryTimestamp,
    SessionColumns,
    SessionJSON,
    dialect_class,
    dialect_for,
    user_path,
)
from .driver import Prepared
from .exceptions import ConfigurationError, StoreError
from .express import BROWSER_SESSION_ROW_LIFETIME, COOKIE_KEY, CREATED_KEY, UTC, strip_reserved
from .observe import Event, Observers
from .observe import Observer as MetricsObserver
from .statements import Observer, StatementRunner

log = logging.getLogger(__name__)

DEFAULT_SQLITE_FILE = "wsgi_dbsession.sqlite"
PRUNE_BATCH_SIZE = 1000  # rows deleted per statement (and per transaction) by a prune

T = TypeVar("T")


class Serializer(Protocol):
    """Turns the session dict into the text of the ``sess`` column and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JSONSerializer:
    """Compact JSON; NaN and infinities are refused because the column rejects them."""

    # One encoder for every call: json.dumps with options builds a new one each time.
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def dumps(self, value: Any) -> str:
        return self._encoder.encode(value)

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


@dataclass(frozen=True)
class UserSession:
    """One live session of a user, for an account page or an admin tool.

    ``data`` is the app's data (without express-session's ``cookie`` object
    and ``_created``); ``created`` is None for a row that has no
    ``_created`` (written by express-session); ``last_active`` is the time
    of the session's last write or touch, derived from ``expires`` and the
    lifetime recorded in the row (None when the row records none). The
    ``sid`` is a credential: show :attr:`handle` instead of it.
    """

    sid: str
    expires: dt.datetime
    data: dict[str, Any]
    created: dt.datetime | None
    last_active: dt.datetime | None

    @property
    def handle(self) -> str:
        """A short name for the session that is no credential: SHA-256 of the sid, 12 hex digits."""
        return hashlib.sha256(self.sid.encode()).hexdigest()[:12]


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def normalize_url(url: str | URL) -> URL:
    """Give a bare ``postgresql://``, ``mysql://`` or ``mssql://`` URL its tested driver.

    ``postgres://`` (Heroku and other platforms) is read as ``postgresql://``.
    A URL that does not parse is a :class:`ConfigurationError`.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"url is not a database URL ({exc})") from None
    backend, plus, driver_name = parsed.drivername.partition("+")
    if backend in BACKEND_ALIASES:
        parsed = parsed.set(drivername=f"{BACKEND_ALIASES[backend]}{plus}{driver_name}")
    driver = dialect_class(parsed.get_backend_name()).default_driver
    if "+" not in parsed.drivername and driver is not None:
        parsed = parsed.set(drivername=f"{parsed.drivername}+{driver}")
    return parsed


def create_engine(url: str | URL | None = None, **options: Any) -> Engine:
    """An engine that sends each statement in one round trip.

    Autocommit connections (no BEGIN/COMMIT), no rollback when a connection
    goes back to the pool, no pre-ping (the store retries once after a
    disconnect instead). ``url=None`` is the SQLite file
    ``wsgi_dbsession.sqlite`` in the working directory, in WAL mode with a
    5 s busy timeout and ``synchronous=NORMAL``. Connecting gives up after
    :data:`~wsgi_dbsession.dialects.CONNECT_TIMEOUT` seconds unless the URL
    or ``connect_args`` says otherwise, and statement parameters (session
    ids, session data) are kept out of logs and error messages. The
    database's class in :mod:`wsgi_dbsession.dialects` adds its own
    defaults. ``options`` go to :func:`sqlalchemy.create_engine` and win.
    """
    parsed = normalize_url(url if url is not None else f"sqlite:///{DEFAULT_SQLITE_FILE}")
    dialect = dialect_class(parsed.get_backend_name())
    defaults: dict[str, Any] = {
        "isolation_level": "AUTOCOMMIT",
        "pool_reset_on_return": None,
        "skip_autocommit_rollback": True,
        "pool_pre_ping": False,
        "hide_parameters": True,
    }
    try:
        engine = sa.create_engine(
            dialect.driver_url(parsed), **_merge_options(defaults, dialect.engine_options(parsed), options)
        )
    except sa.exc.NoSuchModuleError as exc:
        raise ConfigurationError(
            f"url names a database SQLAlchemy does not know ({parsed.drivername!r}): {exc}"
        ) from None
    except ImportError as exc:
        raise ConfigurationError(
            f"the database driver of {parsed.drivername!r} is not installed ({exc}); {_install_hint(parsed)}"
        ) from exc
    on_connect = dialect.on_connect(parsed)
    if on_connect is not None:
        sa.event.listen(engine, "connect", on_connect)
    return engine


def _install_hint(url: URL) -> str:
    dialect = dialect_class(url.get_backend_name())
    if dialect.extra is None:
        return "install it"
    extra = f"pip install 'wsgi_dbsession[{dialect.extra}]'"
    if url.get_driver_name() == dialect.default_driver:
        return extra
    tested = f"{url.get_backend_name()}+{dialect.default_driver}://"
    return f"install it, or use a {tested} url, the tested driver ({extra})"


def _merge_options(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        connect_args = {**merged.get("connect_args", {}), **layer.get("connect_args", {})}
        merged.update(layer)
        if connect_args:
            merged["connect_args"] = connect_args
    return merged


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
        table_name: str = "sessions",  # may be "schema.table"
        sid_column: str = "sid",
        schema: str | None = None,
        create_table: bool = True,
        serializer: Serializer | None = None,
        user_key: str | None = None,  # dotted path of the user id in the session data ("passport.user")
    ) -> None:
        if url is not None and engine is not None:
            raise ConfigurationError("give url or engine, not both")
        if "." in table_name:
            if schema is not None:
                raise ConfigurationError(
                    f"table_name {table_name!r} names a schema and schema={schema!r} another: "
                    "give the schema in one of them"
                )
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
        self.columns = columns = SessionColumns(self.table, sid_column)
        self.dialect = dialect = dialect_for(self.engine.dialect)
        self._table_ready = not create_table
        self._table_lock = threading.Lock()
        self.runner = StatementRunner(
            self.engine, dialect, before_use=self._ensure_table, keep_connections=self._owns_engine
        )

        table, sid, sess, expired = self.table, columns.sid, columns.sess, columns.expired
        expiry = ExpiryTimestamp()
        self._live = (sid == sa.bindparam("sid")) & (expired >= sa.bindparam("now", type_=expiry))
        self._select = Prepared(
            sa.select(dialect.sess_text(sess).label("sess"), expired).where(self._live), "load"
        )
        self._replace = Prepared(
            sa.update(table)
            .where(sid == sa.bindparam("b_sid"))  # SET's columns keep their own names for binds
            .where(dialect.sess_equals(sess, sa.bindparam("expected", type_=sa.UnicodeText())))
            .values({sess: sa.bindparam("sess"), expired: sa.bindparam("expired", type_=expiry)}),
            "replace",
        )
        self._rename = Prepared(
            sa.update(table)
            .where(sid == sa.bindparam("old_sid"))
            .values(
                {
                    sid: sa.bindparam("new_sid"),
                    sess: sa.bindparam("sess"),
                    expired: sa.bindparam("expired", type_=expiry),
                }
            ),
            "rename",
        )
        self._touch = Prepared(
            sa.update(table)
            .where(sid == sa.bindparam("b_sid"))
            .values({expired: sa.bindparam("expired", type_=expiry)}),
            "touch",
        )
        self._delete = Prepared(sa.delete(table).where(sid == sa.bindparam("b_sid")), "destroy")
        upsert = dialect.upsert(columns)
        self._upsert = None if upsert is None else Prepared(upsert, "write")
        self.user_key = user_key
        if user_key is not None:
            user_path(user_key)  # a ConfigurationError now, not at the first lookup
            user = sa.bindparam("user", type_=sa.Unicode())
            self._user = dialect.user_expression(columns, user_key) == user

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"<SessionStore {self.table.fullname!r} on {url!r}>"

    def on_statement(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(sql, parameters)`` before each statement this store sends; returns its remover.

        For instrumentation: unlike SQLAlchemy's cursor events, it also sees
        the statements that run on the driver's cursor.
        """
        return self.runner.observe(observer)

    @property
    def observers(self) -> Observers:
        """The metrics observers: what sessions and the prune report through this store."""
        return self.runner.observers

    def observe(self, observer: MetricsObserver) -> Callable[[], None]:
        """Call ``observer(event)`` for each :class:`~wsgi_dbsession.observe.Event`; returns its remover.

        An event says what happened, how it ended and how long it took,
        never a session id or value: see docs/metrics.md, and the bridges
        :class:`~wsgi_dbsession.prometheus.PrometheusMetrics` and
        :class:`~wsgi_dbsession.opentelemetry.OpenTelemetryMetrics`.
        """
        return self.runner.observers.add(observer)

    # -- the table --------------------------------------------------------------

    def run(self, work: Callable[[Connection], T], *, operation: str = "query") -> T:
        """Run ``work`` on a pooled connection, retried after a disconnect or a lost race.

        ``operation`` names it in metrics.
        """
        return self.runner.run(work, operation=operation)

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with self._table_lock:
            if not self._table_ready:
                self.create_table()

    def create_table(self) -> None:
        """Create the table and its expiry index when missing; safe to race.

        With ``user_key``, also the user index (:meth:`create_user_index`).
        A table of that name without this package's columns (another
        package's, reused by mistake) is a :class:`StoreError` naming it.
        """
        self.create(self.table)
        self.require_columns()
        if self.user_key is not None:
            self.create_user_index()
        self._table_ready = True

    def require_columns(self) -> None:
        """Raise a :class:`StoreError` naming the problem when the table is another package's."""
        problem = self.runner.run(
            lambda conn: unusable_columns(conn, self.columns, self.dialect), prepare=False
        )
        if problem is not None:
            raise StoreError(problem)

    def create(self, table: sa.Table) -> None:
        """Create ``table`` (this store's or a helper table) the way the dialect makes it race-safe."""
        try:
            self.runner.run(
                lambda conn: self.dialect.create_table(conn, table), prepare=False, operation="ddl"
            )
        except StoreError:
            # Another process may have created it between a check and a CREATE.
            if not self.has_table(table):
                raise
        except Exception as exc:  # a driver failing outside its DBAPI errors (cut off mid-reply)
            raise StoreError(f"the table {table.fullname!r} could not be created: {exc!r}") from exc

    def has_table(self, table: sa.Table | None = None) -> bool:
        """Whether the table exists (False also when the database cannot be asked)."""
        table = self.table if table is None else table
        try:
            return self.runner.run(
                lambda conn: sa.inspect(conn).has_table(table.name, schema=table.schema), prepare=False
            )
        except StoreError:
            return False

    def dispose(self) -> None:
        """Close pooled connections (only those of an engine this store created)."""
        self.release_connection()
        if self._owns_engine:
            self.engine.dispose()

    def release_connection(self) -> None:
        """Give back the pooled connection this thread keeps between session statements, if any.

        On an engine the store made, each thread keeps one (``driver.HeldConnections``);
        it goes back by itself within 30 seconds, on an error and when the thread
        ends. For a check that no connection is left checked out.
        """
        self.runner.connections.release()

    # -- what the session object uses ---------------------------------------

    def load(self, sid: str, now: dt.datetime | None = None) -> StoredSession | None:
        """The live row for ``sid``; an expired row is never returned."""
        row = self.runner.first(self._select, {"sid": sid, "now": self._live_at(now)})
        observers = self.runner.observers
        if observers.callbacks:  # tested here, not in count(): a load is the hottest path
            observers.emit(Event("load", outcome="missing" if row is None else "found"))
        return None if row is None else StoredSession(row[0], row[1])

    def write(self, sid: str, text: str, expires: dt.datetime) -> None:
        """Insert or overwrite the row, in one statement where the database has one."""
        params = {"sid": sid, "sess": text, "expired": expires}
        if self._upsert is not None:
            self.runner.rowcount(self._upsert, params)
        else:
            self.runner.run(
                lambda conn: self.dialect.upsert_steps(conn, self.columns, params), operation="write"
            )

    def replace(self, sid: str, text: str, expires: dt.datetime, *, expected: str) -> bool:
        """Compare-and-set: overwrite only while ``sess`` is still ``expected``."""
        params = {"b_sid": sid, "sess": text, "expired": expires, "expected": expected}
        return self.runner.rowcount(self._replace, params) == 1

    def replace_locked(
        self, sid: str, now: dt.datetime, rewrite: Callable[[str], tuple[str, dt.datetime]]
    ) -> bool:
        """Under a row lock, overwrite the live row with ``rewrite(its text)``; False when none is live.

        The slow path that always makes progress, for when compare-and-set
        keeps losing to concurrent writers: a short transaction whose
        locking read makes the others wait their turn.
        """
        columns, dialect = self.columns, self.dialect
        select = dialect.lock_row(sa.select(dialect.sess_text(columns.sess)).where(self._live), self.table)
        update = sa.update(self.table).where(columns.sid == sa.bindparam("b_sid"))

        def work(conn: Connection) -> bool:
            with dialect.transaction(conn):
                current = conn.execute(select, {"sid": sid, "now": self._live_at(now)}).scalar()
                if current is None:
                    return False
                text, expires = rewrite(current)
                conn.execute(update.values({columns.sess: text, columns.expired: expires}), {"b_sid": sid})
                return True

        return self.runner.run(work, operation="locked_save")

    def rename(self, old_sid: str, new_sid: str, text: str, expires: dt.datetime) -> bool:
        """Move a row to a new id with new contents, atomically (session regeneration)."""
        params = {"old_sid": old_sid, "new_sid": new_sid, "sess": text, "expired": expires}
        return self.runner.rowcount(self._rename, params) == 1

    def _live_at(self, now: dt.datetime | None) -> dt.datetime:
        """``now`` (default: the clock) as every live check and prune of this store compares it."""
        return self.dialect.live_at(now or utcnow())

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
        return self.runner.rowcount(self._touch, {"b_sid": sid, "expired": expires}) == 1

    def destroy(self, sid: str) -> None:
        """Delete the row for ``sid`` (nothing happens when there is none)."""
        self.runner.rowcount(self._delete, {"b_sid": sid})

    def prune(self, now: dt.datetime | None = None, *, batch_size: int = PRUNE_BATCH_SIZE) -> int:
        """Delete every row expired before ``now``, in batches; returns how many went.

        It takes no lock: :func:`wsgi_dbsession.prune.prune_once` does.
        """
        return sum(self.prune_batches(now, batch_size=batch_size))

    def prune_batches(
        self, now: dt.datetime | None = None, *, batch_size: int = PRUNE_BATCH_SIZE
    ) -> Iterator[int]:
        """Delete expired rows ``batch_size`` at a time; yields each batch's count.

        Each batch is one statement in its own transaction, so a live request
        never waits longer than one batch. ``now`` is fixed before the first
        batch: rows expiring meanwhile are left for the next prune, so the
        loop ends under steady traffic.
        """
        if batch_size < 1:
            raise ConfigurationError("the prune batch size must be at least 1 row")
        stmt = self.dialect.batch_delete(self.columns, batch_size)
        params = {"now": self._live_at(now)}
        while True:
            deleted = self.runner.run(
                lambda conn: int(conn.execute(stmt, params).rowcount), operation="prune"
            )
            yield deleted
            if deleted < batch_size:
                return

    def count(self, *, expired: bool = False, now: dt.datetime | None = None) -> int:
        """How many live rows there are (``expired=True``: how many expired ones)."""
        column = self.columns.expired
        bound = sa.bindparam("now", type_=ExpiryTimestamp())
        condition = column < bound if expired else column >= bound
        stmt = sa.select(sa.func.count()).select_from(self.table).where(condition)
        return int(self.runner.run(lambda conn: conn.execute(stmt, {"now": self._live_at(now)}).scalar_one()))

    def stats(self, now: dt.datetime | None = None) -> SessionStats:
        """How many rows are live and how many expired, at ``now``."""
        now = now or utcnow()
        return SessionStats(live=self.count(now=now), expired=self.count(expired=True, now=now))

    def clear(self) -> None:
        """Delete every row, live or not."""
        self.runner.run(lambda conn: conn.execute(sa.delete(self.table)))

    # -- a user's sessions (user_key) --------------------------------------------

    def create_user_index(self) -> None:
        """Add the index on ``user_key`` to the existing table unless it is there; safe to race."""
        path = self._require_user_key()
        table = self.table
        try:
            self.runner.run(lambda conn: self.dialect.create_user_index(conn, table, path), prepare=False)
        except StoreError:
            # Another process may have added it between a look and an ALTER (MySQL): look again.
            try:
                self.runner.run(lambda conn: self.dialect.create_user_index(conn, table, path), prepare=False)
            except StoreError as exc:
                raise StoreError(f"the user index of {table.fullname!r} could not be created: {exc}") from exc

    def user_sessions(self, user: str | int, now: dt.datetime | None = None) -> list[UserSession]:
        """The live sessions whose ``user_key`` holds ``user`` (compared as text), latest expiry first."""
        self._require_user_key()
        columns = self.columns
        stmt = (
            sa.select(columns.sid, self.dialect.sess_text(columns.sess), columns.expired)
            .where(self._user)
            .where(columns.expired >= sa.bindparam("now", type_=ExpiryTimestamp()))
            .order_by(columns.expired.desc())
        )
        params = {"user": str(user), "now": self._live_at(now)}
        rows = self.runner.run(lambda conn: conn.execute(stmt, params).all())
        return [self._user_session(sid, text, expires) for sid, text, expires in rows]

    def destroy_user_sessions(self, user: str | int, keep: str | None = None) -> int:
        """Delete every row of ``user`` but ``keep``'s; returns how many went.

        Expired rows of the user that were not pruned yet go too (and count).
        """
        self._require_user_key()
        stmt = sa.delete(self.table).where(self._user)
        params: dict[str, Any] = {"user": str(user)}
        if keep is not None:
            stmt = stmt.where(self.columns.sid != sa.bindparam("keep"))
            params["keep"] = keep
        return int(self.runner.run(lambda conn: conn.execute(stmt, params).rowcount))

    def _require_user_key(self) -> str:
        if self.user_key is None:
            raise ConfigurationError("this store has no user_key: set user_key to find sessions by user")
        return self.user_key

    def _user_session(self, sid: str, text: str, expires: dt.datetime) -> UserSession:
        try:
            payload = self.serializer.loads(text)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return UserSession(sid, expires, {}, None, None)
        created = payload.get(CREATED_KEY)
        return UserSession(
            sid=sid,
            expires=expires,
            data=strip_reserved(payload),
            created=(
                dt.datetime.fromtimestamp(created, UTC)
                if isinstance(created, (int, float)) and not isinstance(created, bool)
                else None
            ),
            last_active=_last_write(payload.get(COOKIE_KEY), expires),
        )


def _last_write(cookie: Any, expires: dt.datetime) -> dt.datetime | None:
    """When the row was last written or touched: its expiry minus the lifetime its cookie object records."""
    if not isinstance(cookie, dict) or "originalMaxAge" not in cookie:
        return None
    original = cookie["originalMaxAge"]
    if original is None:  # a browser-session cookie: the row lives a day from each write
        return expires - dt.timedelta(seconds=BROWSER_SESSION_ROW_LIFETIME)
    if isinstance(original, (int, float)) and not isinstance(original, bool) and original > 0:
        return expires - dt.timedelta(milliseconds=original)
    return None
