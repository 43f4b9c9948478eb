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

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError


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


def execute(
    engine: Engine,
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
    dialect = engine.dialect
    pooled = None
    cursor = None
    sql = None
    try:
        pooled = engine.raw_connection()
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
    except dialect.loaded_dbapi.Error as exc:
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
        if pooled is not None:
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
