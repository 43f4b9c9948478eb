"""What differs from one database to the next, decided once per store.

The table is the one connect-session-knex creates, so a Node app and a Python
app can share it; :class:`SessionJSON` and :class:`ExpiryTimestamp` give its
columns the exact types and value formats of DESIGN.md's table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.type_api import TypeEngine

from .exceptions import StoreUnavailable

UTC = dt.timezone.utc


class SessionJSON(sa.types.UserDefinedType[str]):
    """The ``sess`` column: JSON text passed through verbatim, never re-parsed.

    The session's own serializer reads and writes it, and the exact text is
    what the compare-and-set update compares against.
    """

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "JSON"


@compiles(SessionJSON, "mssql")
def _mssql_json(type_: SessionJSON, compiler: Any, **kw: Any) -> str:
    return "NVARCHAR(max)"


class _SQLiteTimestamp(sa.types.UserDefinedType[str]):
    """SQLite's ``timestamp`` column, holding the ISO text knex writes."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "timestamp"


def to_iso_z(value: dt.datetime) -> str:
    """JavaScript's ``Date.toISOString()``: UTC, milliseconds, ``Z``."""
    value = value.astimezone(UTC)
    return f"{value:%Y-%m-%dT%H:%M:%S}.{value.microsecond // 1000:03d}Z"


def from_iso(text: str) -> dt.datetime:
    """Parse the ISO text of ``Date.toISOString()`` (or Python's) as aware UTC."""
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class ExpiryTimestamp(sa.types.TypeDecorator[dt.datetime]):
    """The ``expired`` column: always an aware UTC datetime to Python.

    PostgreSQL gets ``timestamptz``; MySQL/MariaDB ``DATETIME`` and MSSQL
    ``DATETIME2`` naive UTC; SQLite the ISO-8601 text with ``Z`` that
    ``Date.toISOString()`` makes, so text comparison orders it correctly.
    The process time zone and the database session time zone never matter.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME())
        if dialect.name == "mssql":
            return dialect.type_descriptor(mssql.DATETIME2())  # type: ignore[no-untyped-call]
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteTimestamp())
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            # astimezone() would read it as the process's local time: refuse instead.
            raise ValueError("session expiry times must be timezone-aware datetimes (UTC)")
        value = value.astimezone(UTC)
        name = dialect.name
        if name == "postgresql":
            return value
        if name == "sqlite":
            return to_iso_z(value)
        naive = value.replace(tzinfo=None)
        if name in ("mysql", "mariadb"):
            # DATETIME keeps whole seconds; MySQL would round, MariaDB truncate:
            # truncate here so both store the same second knex would.
            return naive.replace(microsecond=0)
        return naive.replace(microsecond=naive.microsecond // 1000 * 1000)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return from_iso(value)
        if isinstance(value, (int, float)):  # a Node sqlite3 row may hold epoch ms
            return dt.datetime.fromtimestamp(value / 1000, UTC)
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Params = Mapping[str, Any]
Upsert = Callable[[Connection, sa.Table, Params], None]


@dataclass(frozen=True)
class DialectStrategy:
    """The statements that differ per database, chosen once from ``dialect.name``."""

    name: str
    # The ``sess`` column as exact text (PostgreSQL's driver would parse json).
    sess_text: Callable[[sa.ColumnElement[Any]], sa.ColumnElement[Any]]
    # ``sess`` equals the text read earlier: the compare in compare-and-set.
    sess_equals: Callable[[sa.ColumnElement[Any], sa.BindParameter[Any]], sa.ColumnElement[bool]]
    # The upsert, one of the two: a statement built once per table (its
    # values are execute() parameters), or steps run on a connection.
    upsert_statement: Callable[[sa.Table], Any] | None = None
    upsert_steps: Upsert | None = None


def _as_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.cast(column, sa.Text)


def _same_column(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return column


def _text_equals(column: sa.ColumnElement[Any], value: sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    return column == value


def _pg_text_equals(column: sa.ColumnElement[Any], value: sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    # json keeps its input text verbatim, so comparing text is exact.
    return sa.cast(column, sa.Text) == value


class _CastAsJSON(sa.sql.functions.FunctionElement[Any]):
    inherit_cache = True
    name = "cast_as_json"


@compiles(_CastAsJSON)
def _cast_as_json(element: _CastAsJSON, compiler: Any, **kw: Any) -> str:
    # MariaDB's JSON is LONGTEXT (compare the text); MySQL's is a real type.
    # Decided at compile time: the server kind is known only once connected.
    value = compiler.process(element.clauses, **kw)
    return value if getattr(compiler.dialect, "is_mariadb", False) else f"CAST({value} AS JSON)"


def _mysql_json_equals(column: sa.ColumnElement[Any], value: sa.BindParameter[Any]) -> sa.ColumnElement[bool]:
    # MySQL's JSON type normalises its text, so compare JSON values there.
    return column == _CastAsJSON(value)


def _set_columns(table: sa.Table) -> tuple[str, str, str]:
    sid, sess, expired = (column.name for column in table.columns)
    return sid, sess, expired


def _on_conflict(insert: Any) -> Callable[[sa.Table], Any]:
    def build(table: sa.Table) -> Any:
        sid, sess, expired = _set_columns(table)
        stmt = insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[table.c[sid]],
            set_={sess: stmt.excluded[sess], expired: stmt.excluded[expired]},
        )

    return build


def _on_duplicate_key(table: sa.Table) -> Any:
    _, sess, expired = _set_columns(table)
    stmt = mysql.insert(table)
    return stmt.on_duplicate_key_update({sess: stmt.inserted[sess], expired: stmt.inserted[expired]})


def mssql_merge(table: sa.Table, dialect: Dialect) -> sa.TextClause:
    """``MERGE … WITH (HOLDLOCK)``: the lock makes the match-then-insert atomic."""
    quote = dialect.identifier_preparer.quote
    sid, sess, expired = (quote(name) for name in _set_columns(table))
    target = dialect.identifier_preparer.format_table(table)
    # Identifiers come quoted from the dialect's preparer; values are bound.
    sql = (
        f"MERGE INTO {target} WITH (HOLDLOCK) AS t "  # noqa: S608
        f"USING (SELECT :sid AS sid, :sess AS sess, :expired AS expired) AS s "
        f"ON t.{sid} = s.sid "
        f"WHEN MATCHED THEN UPDATE SET t.{sess} = s.sess, t.{expired} = s.expired "
        f"WHEN NOT MATCHED THEN INSERT ({sid}, {sess}, {expired}) "
        f"VALUES (s.sid, s.sess, s.expired);"
    )
    return sa.text(sql).bindparams(
        sa.bindparam("sid", type_=sa.Unicode(255)),
        sa.bindparam("sess", type_=sa.UnicodeText()),
        sa.bindparam("expired", type_=ExpiryTimestamp()),
    )


def _mssql_upsert(conn: Connection, table: sa.Table, params: Params) -> None:
    sid, sess, expired = _set_columns(table)
    conn.execute(
        mssql_merge(table, conn.dialect),
        {"sid": params[sid], "sess": params[sess], "expired": params[expired]},
    )


def _update_then_insert(conn: Connection, table: sa.Table, params: Params) -> None:
    """Any other database: UPDATE, INSERT when no row matched, UPDATE again on a race."""
    sid, sess, expired = _set_columns(table)
    update = (
        sa.update(table)
        .where(table.c[sid] == params[sid])
        .values({sess: params[sess], expired: params[expired]})
    )
    if conn.execute(update).rowcount:
        return
    try:
        conn.execute(sa.insert(table).values(params))
    except IntegrityError:
        conn.execute(update)


def strategy_for(dialect: Dialect) -> DialectStrategy:
    """The strategy for a dialect; unknown dialects get the portable fallback."""
    name = dialect.name
    if name == "postgresql":
        return DialectStrategy(
            name, _as_text, _pg_text_equals, upsert_statement=_on_conflict(postgresql.insert)
        )
    if name == "sqlite":
        return DialectStrategy(name, _same_column, _text_equals, upsert_statement=_on_conflict(sqlite.insert))
    if name in ("mysql", "mariadb"):
        return DialectStrategy(name, _same_column, _mysql_json_equals, upsert_statement=_on_duplicate_key)
    if name == "mssql":
        return DialectStrategy(name, _same_column, _text_equals, upsert_steps=_mssql_upsert)
    return DialectStrategy(name, _same_column, _text_equals, upsert_steps=_update_then_insert)


# Seconds a worker waits for another one that is creating the same table.
CREATE_WAIT = 60
_CREATE_POLL = 0.05  # seconds between tries of the creation lock


def create_missing_table(conn: Connection, table: sa.Table) -> None:
    """Create ``table`` and its indexes unless they exist; safe when workers start together.

    Two ``CREATE TABLE IF NOT EXISTS`` at once can still fail (PostgreSQL
    collides in its catalog; MySQL has no ``CREATE INDEX IF NOT EXISTS``), so
    on servers the creation holds the database's named lock for the table:
    the others wait, then find the table there. SQLite's file lock
    serializes its ``IF NOT EXISTS`` statements already.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(CreateTable(table, if_not_exists=True))
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))
        return
    lock = prune_lock(conn.dialect, f"wsgi_dbsession create {table.fullname}")
    if lock is None:  # the caller's check after a failed CREATE covers the race here
        table.create(conn, checkfirst=True)
        return
    deadline = time.monotonic() + CREATE_WAIT
    while not conn.execute(lock.acquire, lock.params).scalar():
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"another process kept creating {table.fullname!r} for {CREATE_WAIT} s")
        time.sleep(_CREATE_POLL)
    try:
        table.create(conn, checkfirst=True)
    finally:
        conn.execute(lock.release, lock.params)


# -- pruning ----------------------------------------------------------------


@dataclass(frozen=True)
class LockStatements:
    """A named try-lock owned by a database session (a connection), not a transaction.

    ``acquire`` answers one row whose first value is true when the lock was
    taken; it never waits. ``release`` gives the lock back. Both take
    ``params``. The database frees the lock itself when the connection ends,
    so a process that dies never keeps it.
    """

    acquire: sa.TextClause
    release: sa.TextClause
    params: Mapping[str, Any]


_MSSQL_GETAPPLOCK = (
    "DECLARE @result int; "
    "EXEC @result = sp_getapplock @Resource = :name, @LockMode = 'Exclusive', "
    "@LockOwner = 'Session', @LockTimeout = 0; "
    "SELECT CASE WHEN @result >= 0 THEN 1 ELSE 0 END"
)
_MSSQL_RELEASEAPPLOCK = "EXEC sp_releaseapplock @Resource = :name, @LockOwner = 'Session'"


def prune_lock(dialect: Dialect, resource: str) -> LockStatements | None:
    """The database's own try-lock named after ``resource``; None where there is none (SQLite)."""
    digest = hashlib.blake2b(resource.encode(), digest_size=8).digest()
    name = dialect.name
    if name == "postgresql":
        return LockStatements(
            sa.text("SELECT pg_try_advisory_lock(:key)"),
            sa.text("SELECT pg_advisory_unlock(:key)"),
            {"key": int.from_bytes(digest, "big", signed=True)},
        )
    params = {"name": f"wsgi_dbsession:{digest.hex()}"}
    if name in ("mysql", "mariadb"):
        return LockStatements(
            sa.text("SELECT GET_LOCK(:name, 0)"), sa.text("SELECT RELEASE_LOCK(:name)"), params
        )
    if name == "mssql":
        return LockStatements(sa.text(_MSSQL_GETAPPLOCK), sa.text(_MSSQL_RELEASEAPPLOCK), params)
    return None


def batch_delete(table: sa.Table, dialect: Dialect, batch_size: int) -> sa.Delete | sa.TextClause:
    """Delete at most ``batch_size`` rows whose ``expired`` is before ``:now``, in one statement.

    The expiry index finds the rows; a small batch is a short transaction,
    so live requests never queue behind one long delete.
    """
    sid, _, expired = _set_columns(table)
    now = sa.bindparam("now", type_=ExpiryTimestamp())
    if dialect.name in ("mysql", "mariadb", "mssql"):
        preparer = dialect.identifier_preparer
        target, column = preparer.format_table(table), preparer.quote(expired)
        size = int(batch_size)  # only an int reaches the SQL text
        # MySQL refuses LIMIT in an IN subquery but takes it on DELETE; MSSQL has TOP.
        if dialect.name == "mssql":
            sql = f"DELETE TOP ({size}) FROM {target} WHERE {column} < :now"
        else:
            sql = f"DELETE FROM {target} WHERE {column} < :now LIMIT {size}"  # noqa: S608
        return sa.text(sql).bindparams(now)
    expired_sids = sa.select(table.c[sid]).where(table.c[expired] < now).limit(batch_size)
    return sa.delete(table).where(table.c[sid].in_(expired_sids))
