"""How the store's statements reach the database: every one through :class:`StatementRunner`.

The runner owns what surrounds a statement: a fresh pool in a forked
process, one retry on a fresh connection after a disconnect or on a
read-only server (a failover's old primary), retries of a lost race (a
deadlock, a cluster's certification conflict), and the translation of
driver errors into the package's own. What it runs is either a hot
statement of the request path (:meth:`StatementRunner.first`,
:meth:`StatementRunner.rowcount`: one :class:`~wsgi_dbsession.driver.Prepared`
statement on the pooled connection's DBAPI cursor, :mod:`wsgi_dbsession.driver`)
or work on a Core ``Connection`` (:meth:`StatementRunner.run`: the locked
save, prune, DDL, inspection). Statement observers
(:meth:`StatementRunner.observe`) see the statements of both, and so do the
metrics observers (``observers``, :mod:`wsgi_dbsession.observe`): each
attempt's duration and outcome, without its parameters.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from . import driver
from .dialects import SessionDialect
from .driver import Prepared
from .exceptions import ConcurrentUpdateError, StoreError, StoreUnavailable
from .observe import Event, Observers

log = logging.getLogger(__name__)

T = TypeVar("T")
# Sees each statement's SQL and its parameters as the driver gets them.
Observer = Callable[[str, Any], None]

# A lost race is tried again after a random pause of up to CONFLICT_PAUSE *
# 2**attempt seconds (at most MAX_CONFLICT_PAUSE) until CONFLICT_BUDGET seconds
# have passed since the first try; then it is reported as ConcurrentUpdateError,
# an unavailable_status answer with Retry-After. A budget in time, not in tries:
# on a loaded machine a cluster's writers need longer turns, not more of them.
CONFLICT_BUDGET = 5.0  # seconds
CONFLICT_PAUSE = 0.002  # seconds
MAX_CONFLICT_PAUSE = 0.25  # seconds


class StatementRunner:
    """Runs statements on an engine for one store: fork-safe, retried, errors translated."""

    def __init__(
        self,
        engine: Engine,
        dialect: SessionDialect,
        *,
        before_use: Callable[[], None] = lambda: None,  # e.g. create the table on first use
        keep_connections: bool = False,  # threads keep a pooled connection between hot statements
    ) -> None:
        self.engine = engine
        self.connections = driver.HeldConnections(engine, keep=keep_connections)
        self.dialect = dialect
        self.before_use = before_use
        self._pid = os.getpid()
        self._commit: bool | None = None  # whether statements need a COMMIT (not in autocommit)
        self._observers: list[Observer] = []
        self.observers = Observers()  # metrics: each attempt's duration and outcome

    def observe(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(sql, parameters)`` before every statement; returns its remover.

        Work on a Core connection reaches it through the engine's cursor
        event, the hot statements from :func:`driver.execute`.
        """
        if not self._observers:
            sa.event.listen(self.engine, "before_cursor_execute", self._on_core_statement)
        self._observers.append(observer)

        def remove() -> None:
            self._observers.remove(observer)
            if not self._observers:
                sa.event.remove(self.engine, "before_cursor_execute", self._on_core_statement)

        return remove

    def _on_core_statement(
        self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any
    ) -> None:
        self._notify(statement, parameters)

    # -- the hot statements ---------------------------------------------------

    def first(self, prepared: Prepared, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a hot query, or None."""
        return self._hot(prepared, params, fetch=True)  # type: ignore[no-any-return]

    def rowcount(self, prepared: Prepared, params: dict[str, Any]) -> int:
        """How many rows a hot statement changed (matched, on MySQL)."""
        return int(self._hot(prepared, params, fetch=False))

    def _hot(self, prepared: Prepared, params: dict[str, Any], *, fetch: bool) -> Any:
        notify = self._notify if self._observers else None
        return self._retrying(
            lambda: driver.execute(
                self.connections,
                prepared,
                params,
                fetch=fetch,
                needs_commit=self._needs_commit,
                notify=notify,
            ),
            operation=prepared.operation,
        )

    def _notify(self, sql: str, parameters: Any) -> None:
        for observer in self._observers:
            observer(sql, parameters)

    # -- everything else ------------------------------------------------------

    def run(self, work: Callable[[Connection], T], *, prepare: bool = True, operation: str = "query") -> T:
        """Run ``work`` on a pooled connection (committing where the engine is transactional).

        ``prepare=False`` skips ``before_use`` (for the work that prepares);
        ``operation`` names the work in metrics.
        """

        def attempt() -> T:
            with self.engine.connect() as conn:
                # Asked before ``work``, which may switch the connection to autocommit (transaction()).
                commit = self._needs_commit(conn.connection.dbapi_connection)
                result = work(conn)
                if commit:
                    conn.commit()
                return result

        return self._retrying(attempt, prepare=prepare, operation=operation)

    def _needs_commit(self, dbapi_connection: Any) -> bool:
        if self._commit is None:
            self._commit = needs_commit(self.engine.dialect, dbapi_connection)
        return self._commit

    def _retrying(self, attempt: Callable[[], T], *, prepare: bool = True, operation: str = "query") -> T:
        if prepare:
            self.before_use()
        self._forget_inherited_pool()
        if self.observers.callbacks:
            attempt = self._timed(attempt, operation)
        conflicts = 0
        tried: set[str] = set()  # the causes already given their one more try
        deadline = None
        while True:
            try:
                return attempt()
            except DBAPIError as exc:
                if self._once_more(exc, tried, operation):
                    continue
                if not self.dialect.is_conflict(exc):
                    error = store_error(exc, self.dialect, self.engine.url.database)
                    if isinstance(error, StoreUnavailable):
                        self.observers.count("outage", operation)
                    raise error from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + CONFLICT_BUDGET
                pause = random.uniform(0, min(MAX_CONFLICT_PAUSE, CONFLICT_PAUSE * 2**conflicts))
                if now + pause > deadline:
                    raise ConcurrentUpdateError(
                        f"the session kept losing to concurrent writers for {CONFLICT_BUDGET:g} s "
                        f"({conflicts + 1} tries, last: {exc.orig!r}); try the request again"
                    ) from exc
                conflicts += 1
                self.observers.count("conflict_retry", operation)
                log.debug("a session statement lost a race (%s); trying again", exc.orig)
                time.sleep(pause)
            except sa.exc.TimeoutError as exc:  # the pool stayed exhausted for pool_timeout
                self.observers.count("outage", operation)
                raise StoreUnavailable(f"no session database connection became free: {exc}") from exc

    def _once_more(self, exc: DBAPIError, tried: set[str], operation: str) -> bool:
        """Whether ``exc`` calls for one more try on a fresh connection; each cause gets one.

        A lost connection; a server turned read-only (a failover made it a
        standby: the pooled connections all lead there, so none is kept, and a
        fresh one finds the new primary through HAProxy or a multi-host URL);
        prepared statements a pooler moved. Read-only twice is an outage.
        """
        if exc.connection_invalidated and "disconnect" not in tried:
            log.info("session store connection was lost; retrying on a fresh one")
            tried.add("disconnect")
            return True
        if self.dialect.is_read_only(exc):
            if "read-only" in tried:
                self.observers.count("outage", operation)
                raise StoreUnavailable(
                    f"the session database is read-only, a failover is in progress: {exc.orig!r}"
                ) from exc
            log.info("session store connection reached a read-only server; retrying on a fresh one")
            self.engine.dispose()
            tried.add("read-only")
            return True
        if "unprepared" not in tried and self.dialect.stop_preparing(exc, self.engine):
            tried.add("unprepared")  # a pooler moved a prepared statement: once more, unprepared
            return True
        return False

    def _timed(self, attempt: Callable[[], T], operation: str) -> Callable[[], T]:
        """``attempt`` emitting a statement event with its duration and outcome (only while observed)."""

        def timed() -> T:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = attempt()
            except DBAPIError as exc:
                outcome = self._outcome(exc)
                raise
            except sa.exc.TimeoutError:
                outcome = "pool_timeout"
                raise
            else:
                outcome = "ok"
                return result
            finally:
                self.observers.emit(Event("statement", operation, outcome, time.perf_counter() - started))

        return timed

    def _outcome(self, exc: DBAPIError) -> str:
        if exc.connection_invalidated:
            return "disconnect"
        if self.dialect.is_conflict(exc):
            return "conflict"
        error = store_error(exc, self.dialect, self.engine.url.database)
        return "unavailable" if isinstance(error, StoreUnavailable) else "error"

    def _forget_inherited_pool(self) -> None:
        # A connection used by two processes mixes their conversations. A
        # process forked after the engine connected (gunicorn --preload,
        # uWSGI, whose fork runs no os.register_at_fork hook) starts with a
        # pool of its own; close=False leaves the parent's connections alone.
        pid = os.getpid()
        if pid != self._pid:
            self.engine.dispose(close=False)
            self._pid = pid


def needs_commit(dialect: Dialect, dbapi_connection: Any) -> bool:
    """Whether a statement's transaction must be committed.

    Not on an autocommit connection, where PyMySQL's ``commit()`` would still
    send a COMMIT: a hidden round trip per statement. A driver that cannot
    tell (pymssql) gets its commit.
    """
    try:
        return dbapi_connection is None or not dialect.detect_autocommit_setting(dbapi_connection)
    except NotImplementedError:
        return True


def store_error(
    exc: DBAPIError, dialect: SessionDialect | None = None, url_database: str | None = None
) -> StoreError:
    """The package's error for a driver error that reached the store's boundary.

    A server that refuses the configuration (credentials, database name, a
    schema it does not have) is a :class:`StoreError`, not an outage:
    retrying never helps, so it is a 500 whose message says which, not an
    endless 503. ``url_database`` tells the URL's database from the table's
    schema where one error names both (MySQL's "Unknown database").
    """
    schema = dialect.missing_schema(exc) if dialect is not None else None
    if schema is not None and schema != url_database:
        return StoreError(
            f"the session table's schema {schema!r} does not exist; create it, or correct "
            f"table_name ('schema.table') or schema ({exc.orig})"
        )
    if dialect is not None and dialect.is_misconfiguration(exc):
        return StoreError(_misconfiguration(exc))
    if dialect is not None and dialect.is_missing_table(exc):
        return StoreError(
            f"the session table does not exist ({exc.orig}); create it (wsgi-dbsession create-table), "
            "or leave create_table on"
        )
    if exc.connection_invalidated or isinstance(exc, (OperationalError, InterfaceError)):
        return StoreUnavailable(f"the session database is unavailable: {exc.orig!r}")
    return StoreError(f"the session table could not be used: {exc.orig!r}")


# Driver texts of a database that is not there; anything else refused is the credentials.
_NO_DATABASE = ("Unknown database", "Cannot open database", "unable to open database file")


def _misconfiguration(exc: DBAPIError) -> str:
    text = str(exc.orig)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    missing = sqlstate == "3D000" or any(marker in text for marker in _NO_DATABASE)
    missing = missing or ("database" in text and "does not exist" in text and "role" not in text)
    if missing:
        return f"the session database does not exist; check the url's database name ({exc.orig})"
    return (
        "the session database refused the configured credentials; "
        f"check the url's user and password ({exc.orig})"
    )
