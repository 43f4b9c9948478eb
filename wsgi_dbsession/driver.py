"""The hot statements' lower layer: SQL compiled once, run on the pooled connection's DBAPI cursor.

A session read is one primary-key ``SELECT``; SQLAlchemy's execution path
around it (execution context, result object, events) costs more CPU than
the statement itself on a nearby database. Measured in one process
(``python -m benchmarks.statement_cost``): a pooled primary-key read costs
about a third of the CPU it costs through ``Connection.execute`` or
``Connection.exec_driver_sql``. So the request path's single statements
(:class:`Prepared`: the read, the upsert, compare-and-set, touch, rename,
delete) take this layer, on every engine; the multi-statement work (the
locked save, prune, DDL, inspection) runs on a Core ``Connection``. Both go
through :class:`~wsgi_dbsession.statements.StatementRunner`, which owns the
retries and the error translation.

Documented SQLAlchemy API only: :meth:`ClauseElement.compile` (its
``string``, ``positiontup`` and :meth:`construct_params`), the types'
:meth:`bind_processor` and :meth:`result_processor`,
:meth:`Engine.raw_connection` and the :class:`PoolProxiedConnection` it
returns (``cursor``, ``commit``, ``invalidate``, ``close``, ``info``),
:meth:`Dialect.is_disconnect` and :meth:`DBAPIError.instance`, the error
Core itself raises.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

# How long a thread keeps its connection before giving it back to the pool,
# so the pool's recycle and pre-ping still see every connection.
HOLD_SECONDS = 30.0


class Prepared:
    """A hot statement: its Core form, the store operation it serves, its SQL per dialect once connected."""

    def __init__(self, statement: Any, operation: str) -> None:
        self.statement = statement
        self.operation = operation  # for metrics
        self._compiled: tuple[Dialect, Compiled] | None = None

    def compiled(self, dialect: Dialect) -> Compiled:
        # Compiled once connected: MySQL's SQL differs for MariaDB, known only then.
        if self._compiled is None or self._compiled[0] is not dialect:
            self._compiled = (dialect, Compiled(self.statement, dialect))
        return self._compiled[1]


class Compiled:
    """A statement's SQL for one dialect, its parameters in the driver's order and its value processing."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        self.compiled = compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        binds = compiled.binds
        processors = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in binds.items()
        }
        self.positional = compiled.positiontup is not None
        names = list(compiled.positiontup) if self.positional else list(binds)
        # Every value comes from the caller, under its own name: the parameters
        # are built straight from them; anything else goes through construct_params.
        self.direct = all(name in binds and binds[name].required for name in names)
        self.names = names
        self.order = [(name, processors.get(name)) for name in names]
        columns = getattr(statement, "selected_columns", ())
        self.result_processors = [
            (position, processor)
            for position, column in enumerate(columns)
            if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ]

    def parameters(self, params: dict[str, Any]) -> Any:
        """The driver's parameters: a tuple for a positional paramstyle, else a dict."""
        try:
            if not self.direct:
                params = self.compiled.construct_params(params)
            values = [
                params[name] if process is None else process(params[name]) for name, process in self.order
            ]
        except KeyError as exc:
            raise sa.exc.StatementError(
                f"A value is required for bind parameter {exc}", self.sql, None, exc
            ) from exc
        except Exception as exc:  # as Core reports a value its type refuses
            raise sa.exc.StatementError(str(exc), self.sql, None, exc) from exc
        if self.positional:
            return tuple(values)
        return dict(zip(self.names, values, strict=True))

    def row(self, row: Any) -> tuple[Any, ...] | None:
        if row is None or not self.result_processors:
            return row  # type: ignore[no-any-return]
        values = list(row)
        for position, process in self.result_processors:
            values[position] = process(values[position])
        return tuple(values)


class HeldConnections:
    """Each thread's pooled connection for the hot statements, kept from one statement to the next.

    A checkout from SQLAlchemy's pool and its return cost more than a
    primary-key read on SQLite (measured in a whole request: 13 of 34 µs,
    docs/benchmarks.md). So on an engine the store made itself, a thread
    keeps the connection its hot statements use, for at most
    :data:`HOLD_SECONDS`, and at most the pool's size less one threads keep
    one: one kept connection is always left for everything else (the prune
    job, the other threads), and the pool's limits stay what they were. An
    engine the application passed in is its own: its connections are never
    kept. A kept connection goes back to the pool after any error, when the
    engine's pool is replaced (``Engine.dispose()``, a failover), when its
    thread ends, and on :meth:`release` (``SessionStore.dispose()``). A
    forked child forgets its parent's without closing them, as
    ``Engine.dispose(close=False)`` does.
    """

    def __init__(self, engine: Engine, *, keep: bool) -> None:
        self.engine = engine
        self.keep = keep
        self._local = threading.local()
        self._count = _Count()  # shared with each _Held: no reference cycle to wait on the GC for

    def connection(self) -> tuple[Any, bool]:
        """A pooled connection, and whether this thread keeps it (if not, close it after use)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            if held.pool is self.engine.pool and time.monotonic() < held.until:
                return held.pooled, True
            self.release()
        pooled = self.engine.raw_connection()
        return pooled, self.keep and self._take(pooled)

    @property
    def kept(self) -> int:
        """How many threads keep a connection now."""
        return self._count.value

    def _take(self, pooled: Any) -> bool:
        pool = self.engine.pool
        if not isinstance(pool, QueuePool) or not self._count.add(limit=pool.size() - 1):
            return False
        self._local.held = _Held(self._count, pooled, self.engine)
        return True

    def drop(self) -> None:
        """Stop keeping this thread's connection without closing it (its user closes it)."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            held.forget()

    def release(self) -> None:
        """Give this thread's kept connection back to the pool, if it keeps one."""
        held: _Held | None = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            held.close()


class _Count:
    """How many threads keep a connection, under a lock."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, *, limit: int) -> bool:
        with self._lock:
            if self.value >= limit:
                return False
            self.value += 1
            return True

    def remove(self) -> None:
        with self._lock:
            self.value -= 1


class _Held:
    """A thread's kept connection; given back when this object goes (its thread ended)."""

    __slots__ = ("count", "engine", "pid", "pool", "pooled", "until")

    def __init__(self, count: _Count, pooled: Any, engine: Engine) -> None:
        self.count, self.pooled, self.engine, self.pool = count, pooled, engine, engine.pool
        self.pid = os.getpid()
        self.until = time.monotonic() + HOLD_SECONDS

    def forget(self) -> Any:
        pooled, self.pooled = self.pooled, None
        if pooled is not None:
            self.count.remove()
        return pooled

    def close(self) -> None:
        pooled = self.forget()
        if pooled is None or self.pid != os.getpid():  # a parent's connection is not a child's to close
            return
        if self.pool is not self.engine.pool:
            pooled.invalidate()  # its pool was disposed meanwhile: close it rather than return it there
        pooled.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the pool is going too
            self.close()


def execute(
    connections: HeldConnections,
    prepared: Prepared,
    params: dict[str, Any],
    *,
    fetch: bool,
    needs_commit: Callable[[Any], bool],  # given the DBAPI connection
    notify: Callable[[str, Any], None] | None,  # sees the SQL and the driver's parameters
) -> Any:
    """Run one hot statement on a pooled connection: its first row (``fetch``) or its rowcount.

    Driver errors leave as Core's :class:`DBAPIError`, a disconnect
    invalidating the connection (and the pool, as Core does), so the caller
    handles both paths' errors alike.
    """
    engine = connections.engine
    dialect = engine.dialect
    pooled = None
    kept = False
    cursor = None
    sql = None
    try:
        pooled, kept = connections.connection()
        compiled = prepared.compiled(dialect)
        sql = compiled.sql
        parameters = compiled.parameters(params)
        if notify is not None:
            notify(sql, parameters)
        cursor = _cursor(pooled)
        cursor.execute(sql, parameters)
        if fetch:
            rows = cursor.fetchall()  # to the end: SQLite ends the statement's read snapshot there
            result = compiled.row(rows[0] if rows else None)
        else:
            result = cursor.rowcount
        if needs_commit(pooled.dbapi_connection):
            pooled.commit()
        return result
    except BaseException as exc:
        if kept:  # after an error the connection goes back to the pool, which resets it
            connections.drop()
            kept = False
        if not isinstance(exc, dialect.loaded_dbapi.Error):
            raise
        invalidated = pooled is not None and dialect.is_disconnect(exc, pooled.dbapi_connection, cursor)
        if invalidated:
            assert pooled is not None
            # As Core does: the server restarted or dropped us, so the
            # connections pooled before now are not trusted either.
            pooled.invalidate(exc)
            engine.dispose()
        raise DBAPIError.instance(
            sql,
            None,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            dialect=dialect,
            connection_invalidated=invalidated,
        ) from exc
    finally:
        if pooled is not None and not kept:
            pooled.close()


_CURSOR = "wsgi_dbsession.cursor"


def _cursor(pooled: Any) -> Any:
    """The pooled connection's DBAPI cursor, made once per connection (a new one costs µs per statement)."""
    cached = pooled.info.get(_CURSOR)
    if cached is not None and cached[0] is pooled.dbapi_connection:
        return cached[1]
    cursor = pooled.cursor()
    pooled.info[_CURSOR] = (pooled.dbapi_connection, cursor)
    return cursor
