"""Everything that differs from one database to the next: one class per database.

:func:`dialect_for` picks the class from SQLAlchemy's dialect name; nothing
else in the package tests a database's name. Each class owns its column
types and bind formats, the upsert, the compare-and-set comparison, the
batch delete, table creation, the errors that mean a lost race, and its
engine defaults. Adding a database (CockroachDB, TiDB, Oracle) means adding
a class here and naming it in :data:`DIALECTS`.

The table is the one connect-session-knex creates, so a Node app and a
Python app can share it; :class:`SessionJSON` and :class:`ExpiryTimestamp`
give its columns the exact types and value formats of the table in docs/databases.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.type_api import TypeEngine

from .exceptions import ConfigurationError
from .express import UTC, from_iso, to_iso_z

log = logging.getLogger(__name__)

# Seconds a new connection may take before the request fails with
# StoreUnavailable instead of hanging a worker.
CONNECT_TIMEOUT = 5  # seconds
# Seconds a worker waits for another one that is creating the same table.
CREATE_WAIT = 60


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


class ExpiryTimestamp(sa.types.TypeDecorator[dt.datetime]):
    """The ``expired`` column: always an aware UTC datetime to Python.

    Its database type and bind format are the dialect class's; the process
    time zone and the database session time zone never matter.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(dialect_for(dialect).expiry_type)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            # astimezone() would read it as the process's local time: refuse instead.
            raise ValueError("session expiry times must be timezone-aware datetimes (UTC)")
        return dialect_for(dialect).bind_expiry(value if value.tzinfo is UTC else value.astimezone(UTC))

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return from_iso(value)
        if isinstance(value, (int, float)):  # a Node sqlite3 row may hold epoch ms
            return dt.datetime.fromtimestamp(value / 1000, UTC)
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def lock_key(resource: str) -> int:
    """A stable signed 64-bit key for a named database lock."""
    digest = hashlib.blake2b(resource.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# -- a user's sessions (the user_key option) ---------------------------------

# MySQL/MariaDB and MSSQL keep the user id in a generated column of this name.
USER_COLUMN = "sess_user"
USER_ID_LENGTH = 255  # characters of a user id the generated columns hold
_USER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def user_path(path: str) -> tuple[str, ...]:
    """The segments of a ``user_key`` path; ConfigurationError unless each is an identifier.

    The path is written into DDL and into the indexed expression (an index
    matches only a constant path), so only ``[A-Za-z_][A-Za-z0-9_]*``
    segments joined by dots are allowed: nothing that could quote or escape.
    """
    if not isinstance(path, str) or _USER_PATH.fullmatch(path) is None:
        raise ConfigurationError(
            f"user_key = {path!r} is not a dotted path of identifiers (like 'user_id' or 'passport.user')"
        )
    return tuple(path.split("."))


def user_index_name(table: sa.Table) -> str:
    """The name of a table's user index: ``<table>_user_index``."""
    return f"{table.name}_user_index"


class SessionDialect:
    """The portable fallback for any database SQLAlchemy speaks, and the base of the others.

    Its upsert is an UPDATE, then an INSERT when no row matched, then the
    UPDATE again when the INSERT lost a race.
    """

    default_driver: ClassVar[str | None] = None  # the driver a bare URL (``mysql://``) gets
    extra: ClassVar[str | None] = None  # the package extra that installs the driver
    connect_timeout_arg: ClassVar[Mapping[str, str]] = {}  # driver -> its connect-timeout argument
    begin_sql: ClassVar[str] = "BEGIN"  # starts a transaction on an autocommit connection

    def __init__(self, dialect: Dialect) -> None:
        self.sa_dialect = dialect

    # -- types --------------------------------------------------------------

    expiry_type: ClassVar[TypeEngine[Any]] = sa.DateTime(timezone=True)

    def bind_expiry(self, value: dt.datetime) -> Any:
        """An aware UTC expiry as this database's column takes it."""
        naive = value.replace(tzinfo=None)
        return naive.replace(microsecond=naive.microsecond // 1000 * 1000)

    def live_at(self, now: dt.datetime) -> dt.datetime:
        """``now`` as the live check (``expired >= :now``) and the prune compare it with a stored expiry.

        A column that keeps the stored expiry exactly takes ``now`` as it is.
        """
        return now

    def sess_text(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """The ``sess`` column as its exact stored text."""
        return column

    def sess_equals(
        self, column: sa.ColumnElement[Any], value: sa.BindParameter[Any]
    ) -> sa.ColumnElement[bool]:
        """``sess`` still equals the text read earlier: the compare in compare-and-set."""
        return column == value

    # -- statements -----------------------------------------------------------

    def upsert(self, columns: SessionColumns) -> sa.Executable | None:
        """Insert or overwrite one row in one statement, with binds ``:sid :sess :expired``.

        None where the database has no such statement: :meth:`upsert_steps` then.
        """
        return None

    def upsert_steps(self, conn: Connection, columns: SessionColumns, params: dict[str, Any]) -> None:
        """The upsert as steps, where the database has no single statement for it."""
        update = (
            sa.update(columns.table)
            .where(columns.sid == params["sid"])
            .values({columns.sess: params["sess"], columns.expired: params["expired"]})
        )
        if conn.execute(update).rowcount:
            return
        try:
            conn.execute(
                sa.insert(columns.table).values(
                    {
                        columns.sid: params["sid"],
                        columns.sess: params["sess"],
                        columns.expired: params["expired"],
                    }
                )
            )
        except IntegrityError:
            conn.execute(update)

    def insert_if_absent(
        self, table: sa.Table, values: dict[str, sa.BindParameter[Any]]
    ) -> sa.Executable | None:
        """An INSERT of one row that adds nothing, and raises nothing on the server, when its key exists.

        For rows many processes try to add at once (the prune lease): a
        duplicate-key error each time would fill the server's log. None
        where the database has no such statement (the caller catches the error).
        """
        return None

    @contextmanager
    def transaction(self, conn: Connection) -> Iterator[Connection]:
        """A transaction of the database's own on ``conn`` (:attr:`begin_sql`, ``COMMIT``).

        SQLAlchemy's would be a no-op on an autocommit connection, and on an
        engine built without autocommit (the user's own) it may be the
        driver's: pysqlite's deferred BEGIN comes only before the first write,
        so a locking read would run outside it and two writers would both
        read the old row. So the connection takes autocommit for this use (the
        pool restores the engine's level on return) and this database's BEGIN.
        Call it before anything else runs on ``conn``.
        """
        if not _autocommit(conn):
            conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql(self.begin_sql)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):  # the first error is the one to report
                conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")

    def lock_row(self, select: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
        """``select`` (from ``table``) taking a write lock on its row until the transaction ends."""
        return select.with_for_update()

    def batch_delete(self, columns: SessionColumns, batch_size: int) -> sa.Executable:
        """Delete at most ``batch_size`` rows whose ``expired`` is before ``:now``, in one statement.

        The expiry index finds the rows; a small batch is a short
        transaction, so live requests never queue behind one long delete.
        """
        now = sa.bindparam("now", type_=ExpiryTimestamp())
        expired_sids = sa.select(columns.sid).where(columns.expired < now).limit(batch_size)
        return sa.delete(columns.table).where(columns.sid.in_(expired_sids))

    # -- schema ---------------------------------------------------------------

    def create_table(self, conn: Connection, table: sa.Table) -> None:
        """Create ``table`` and its indexes unless they exist; safe when processes start together.

        Here: check, then create; the store looks again after a failure.
        """
        table.create(conn, checkfirst=True)

    def column_type_fix(self, table: sa.Table, column: str, reflected: TypeEngine[Any]) -> str | None:
        """The SQL that gives ``column`` (``sess`` or ``expired``) the type it needs; None when it has it.

        Here: any type is taken (a database without a class is not checked).
        """
        return None

    def index_names(self, conn: Connection, table: sa.Table) -> set[str]:
        """The names of ``table``'s indexes, expression indexes included."""
        return {str(index["name"]) for index in sa.inspect(conn).get_indexes(table.name, schema=table.schema)}

    # -- errors -----------------------------------------------------------------

    def is_conflict(self, exc: DBAPIError) -> bool:
        """Whether the error is a lost race (deadlock, certification conflict): try again."""
        return False

    def is_read_only(self, exc: DBAPIError) -> bool:
        """Whether the server refused a write for being read-only: a standby, a demoted primary.

        The connection reached the wrong server (a failover moved the
        primary): discard it and try a fresh one.
        """
        return False

    # -- a user's sessions (user_key) -----------------------------------------

    def user_expression(self, columns: SessionColumns, path: str) -> sa.ColumnElement[Any]:
        """The user id at ``path`` in ``sess``, as text: the expression the user index holds.

        Compared with ``=`` to a bound user id in a WHERE clause, it is
        answered from the index.
        """
        raise ConfigurationError(f"user_key is not supported on {self.sa_dialect.name}")

    def user_index_ddl(self, table: sa.Table, path: str) -> list[str]:
        """The statements that add the user index to ``table``, each safe to run again."""
        raise ConfigurationError(f"user_key is not supported on {self.sa_dialect.name}")

    def create_user_index(self, conn: Connection, table: sa.Table, path: str) -> None:
        """Add the user index (and its column, where there is one) to ``table`` unless it exists."""
        for ddl in self.user_index_ddl(table, path):
            conn.exec_driver_sql(ddl)

    def _index_ddl(self, table: sa.Table, expression: sa.ColumnElement[Any]) -> str:
        index = sa.Index(user_index_name(table), expression, _table=table)
        return str(CreateIndex(index, if_not_exists=True).compile(dialect=self.sa_dialect))

    def is_misconfiguration(self, exc: DBAPIError) -> bool:
        """Whether the server refused the configuration (credentials, database name): no retry helps."""
        return False

    def missing_schema(self, exc: DBAPIError) -> str | None:
        """The schema (database, on MySQL; attached database, on SQLite) the error says does not exist."""
        return None

    def is_missing_table(self, exc: DBAPIError) -> bool:
        """Whether the error is a missing table that the driver reports as it would an outage."""
        return False

    def stop_preparing(self, exc: DBAPIError, engine: Engine) -> bool:
        """Whether ``exc`` came from prepared statements a pooler moved; if so, preparing is now off.

        True: ``engine`` prepares no more statements, try the statement again.
        """
        return False

    # -- engines ----------------------------------------------------------------

    @classmethod
    def engine_options(cls, url: URL) -> dict[str, Any]:
        """This database's additions to :func:`wsgi_dbsession.store.create_engine`'s defaults."""
        options: dict[str, Any] = {}
        timeout_arg = cls.connect_timeout_arg.get(url.get_driver_name())
        if timeout_arg is not None and timeout_arg not in url.query:
            options["connect_args"] = {timeout_arg: CONNECT_TIMEOUT}
        return options

    @classmethod
    def database_file(cls, url: URL) -> str | None:
        """The absolute path of the file that holds the database, for embedded databases."""
        return None

    @classmethod
    def driver_url(cls, url: URL) -> URL:
        """The URL the driver gets, without the query settings :meth:`engine_options` consumed."""
        return url

    @classmethod
    def on_connect(cls, url: URL) -> Callable[[Any, Any], None] | None:
        """A ``connect`` event listener setting up each new connection, if the database needs one."""
        return None


class SessionColumns:
    """The sessions table and its three columns, whatever the sid column is called."""

    def __init__(self, table: sa.Table, sid_column: str) -> None:
        self.table = table
        self.sid: sa.Column[Any] = table.c[sid_column]
        self.sess: sa.Column[Any] = table.c.sess
        self.expired: sa.Column[Any] = table.c.expired

    @classmethod
    def of(cls, table: sa.Table) -> SessionColumns:
        """The columns of a sessions table whose primary key is its sid column."""
        (sid,) = table.primary_key.columns
        return cls(table, sid.name)

    def row_values(self) -> dict[sa.Column[Any], sa.BindParameter[Any]]:
        """A whole row's values, bound as ``sid``, ``sess`` and ``expired`` (the upserts')."""
        return {
            self.sid: sa.bindparam("sid"),
            self.sess: sa.bindparam("sess"),
            self.expired: sa.bindparam("expired", type_=ExpiryTimestamp()),
        }


def _create_if_not_exists(conn: Connection, table: sa.Table) -> None:
    conn.execute(CreateTable(table, if_not_exists=True))
    for index in table.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))


class _OnConflict(SessionDialect):
    """PostgreSQL's and SQLite's shared ``INSERT … ON CONFLICT`` (``insert``: the dialect's own)."""

    def insert(self, table: sa.Table) -> Any:
        raise NotImplementedError  # the dialect's insert() with on_conflict_do_*()

    def upsert(self, columns: SessionColumns) -> Any:
        stmt = self.insert(columns.table).values(columns.row_values())
        return stmt.on_conflict_do_update(
            index_elements=[columns.sid],
            set_={columns.sess: stmt.excluded.sess, columns.expired: stmt.excluded.expired},
        )

    def insert_if_absent(
        self, table: sa.Table, values: dict[str, sa.BindParameter[Any]]
    ) -> sa.Executable | None:
        insert: sa.Executable = self.insert(table).values(values).on_conflict_do_nothing()
        return insert


class PostgreSQL(_OnConflict):
    """``INSERT … ON CONFLICT``; ``timestamptz``; prepared statements off for PgBouncer."""

    default_driver = "psycopg"
    extra = "postgresql"
    connect_timeout_arg: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("psycopg", "psycopg2"), "connect_timeout"
    )
    expiry_type = postgresql.TIMESTAMP(timezone=True)

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def bind_expiry(self, value: dt.datetime) -> Any:
        return value

    def sess_text(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.cast(column, sa.Text)  # psycopg would parse json

    def sess_equals(
        self, column: sa.ColumnElement[Any], value: sa.BindParameter[Any]
    ) -> sa.ColumnElement[bool]:
        # json keeps its input text verbatim, so comparing text is exact.
        return sa.cast(column, sa.Text) == value

    def create_table(self, conn: Connection, table: sa.Table) -> None:
        # Two CREATE … IF NOT EXISTS at once can collide in the catalog; a
        # transaction-scoped lock serializes them and, unlike a session
        # lock, works through PgBouncer's transaction pooling.
        with self.transaction(conn):
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": lock_key(f"wsgi_dbsession create {table.fullname}")},
            )
            _create_if_not_exists(conn, table)

    def is_conflict(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) in ("40001", "40P01")

    def is_read_only(self, exc: DBAPIError) -> bool:
        # read_only_sql_transaction: what a hot standby, or a primary Patroni demoted, answers a write.
        return getattr(exc.orig, "sqlstate", None) == "25006"

    def column_type_fix(self, table: sa.Table, column: str, reflected: TypeEngine[Any]) -> str | None:
        # json, not jsonb: jsonb rewrites the text, so the compare-and-set would never match.
        target = self.sa_dialect.identifier_preparer.format_table(table)
        if column == "sess" and not (
            isinstance(reflected, postgresql.JSON) and not isinstance(reflected, postgresql.JSONB)
        ):
            return f"ALTER TABLE {target} ALTER COLUMN sess TYPE json USING sess::text::json"
        if column == "expired" and not (isinstance(reflected, sa.DateTime) and reflected.timezone):
            # Without a time zone the server reads an aware time in its own zone: rows expire off by hours.
            return (
                f"ALTER TABLE {target} ALTER COLUMN expired TYPE timestamptz USING expired AT TIME ZONE 'UTC'"
            )
        return None

    def user_expression(self, columns: SessionColumns, path: str) -> sa.ColumnElement[Any]:
        # json's own #>> (no cast to jsonb): text out, a number as its digits.
        literal = "'{" + ",".join(user_path(path)) + "}'"
        return columns.sess.op("#>>", precedence=20)(sa.literal_column(literal))

    def user_index_ddl(self, table: sa.Table, path: str) -> list[str]:
        return [self._index_ddl(table, self.user_expression(SessionColumns.of(table), path))]

    def create_user_index(self, conn: Connection, table: sa.Table, path: str) -> None:
        with self.transaction(conn):  # the lock of create_table: one creator at a time
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": lock_key(f"wsgi_dbsession create {table.fullname}")},
            )
            super().create_user_index(conn, table, path)

    def missing_schema(self, exc: DBAPIError) -> str | None:
        if getattr(exc.orig, "sqlstate", None) != "3F000":  # invalid_schema_name
            return None
        return _quoted(str(exc.orig), '"')

    def is_misconfiguration(self, exc: DBAPIError) -> bool:
        # At connect, psycopg gives the server's FATAL text and no sqlstate.
        if getattr(exc.orig, "sqlstate", None) in ("28P01", "28000", "3D000"):
            return True
        text = str(exc.orig)
        return isinstance(exc, sa.exc.OperationalError) and (
            "password authentication failed" in text or ("FATAL" in text and "does not exist" in text)
        )

    def stop_preparing(self, exc: DBAPIError, engine: Engine) -> bool:
        # A pooler in transaction mode (PgBouncer before 1.21, or without
        # max_prepared_statements) runs each transaction on any server
        # connection: a statement psycopg prepared on one is missing on the
        # next (26000), its name is taken there by another client's (42P05),
        # or that one's parameters differ (08P01). An engine from
        # create_engine has found the pooler at connect (on_connect); one
        # the application built learns it here.
        sqlstate, text = getattr(exc.orig, "sqlstate", None), str(exc.orig)
        moved = sqlstate in ("26000", "42P05") or (sqlstate == "08P01" and "prepared statement" in text)
        if not moved or engine.driver != "psycopg":
            return False
        with _UNPREPARE_LOCK:
            if not sa.event.contains(engine, "checkout", _unprepared):
                # Checkout, not only connect: the connections pooled now
                # have their threshold too, and are not closed for it.
                sa.event.listen(engine, "checkout", _unprepared)
                _warn_unprepared(f"PostgreSQL answered {text.strip()!r}", engine.url)
        return True

    @classmethod
    def on_connect(cls, url: URL) -> Callable[[Any, Any], None] | None:
        if url.get_driver_name() != "psycopg" or "prepare_threshold" in url.query:
            return None  # preparing is off, or on by the user's explicit choice
        warned = False

        def find_pooler(dbapi_connection: Any, _record: Any) -> None:
            # Directly connected, the backend key psycopg got at startup names
            # the server process; a pooler (PgBouncer, pgcat, Odyssey) hands
            # out a key of its own, as its server connections change under
            # the client. One query per new connection, none per statement.
            nonlocal warned
            if dbapi_connection.prepare_threshold is None:
                return
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                (pid,) = cursor.fetchone()
            if not dbapi_connection.autocommit:
                dbapi_connection.rollback()  # the isolation level is set next, outside a transaction
            if pid != dbapi_connection.info.backend_pid:
                # Before the first statement is prepared: a statement of another
                # client under the same name on the server is never executed.
                dbapi_connection.prepare_threshold = None
                if not warned:
                    warned = True
                    _warn_unprepared("the server connection is a pooler's", url)

        return find_pooler

    @classmethod
    def engine_options(cls, url: URL) -> dict[str, Any]:
        options = super().engine_options(url)
        threshold = url.query.get("prepare_threshold")
        if url.get_driver_name() == "psycopg" and isinstance(threshold, str):
            # psycopg prepares a statement after 5 runs (a read costs 1.7x as
            # much unprepared here), but a pooler in transaction mode moves
            # the next run to a server connection that never saw it: behind
            # one, ?prepare_threshold=none turns preparing off.
            value = None if threshold.lower() in ("none", "") else int(threshold)
            options.setdefault("connect_args", {})["prepare_threshold"] = value
        return options

    @classmethod
    def driver_url(cls, url: URL) -> URL:
        return url.difference_update_query(["prepare_threshold"])  # given as a connect argument instead


_UNPREPARE_LOCK = threading.Lock()


def _warn_unprepared(why: str, url: URL) -> None:
    log.warning(
        "%s: a pooler (PgBouncer) sits in front of PostgreSQL and, in transaction mode, moves prepared "
        "statements between clients, so this engine stops preparing statements from now on; add "
        "?prepare_threshold=none to the url (%s) to say so from the start (or a number of runs, to "
        "prepare anyway behind a pooler in session mode)",
        why,
        url.render_as_string(hide_password=True),
    )


def _unprepared(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    if dbapi_connection.prepare_threshold is not None:
        dbapi_connection.prepare_threshold = None  # psycopg: never prepare on this connection


class MySQL(SessionDialect):
    """MySQL and MariaDB: ``ON DUPLICATE KEY UPDATE``; ``DATETIME`` naive UTC; Galera-aware."""

    default_driver = "pymysql"
    extra = "mysql"
    connect_timeout_arg: ClassVar[Mapping[str, str]] = dict.fromkeys(
        ("pymysql", "mysqldb"), "connect_timeout"
    )
    expiry_type = mysql.DATETIME()
    # 1213: deadlock, also a Galera certification conflict; 1205: lock wait timeout.
    conflict_codes = frozenset((1213, 1205))
    # 1044/1045/1698: access denied (database, password, auth plugin); 1049: unknown database.
    misconfiguration_codes = frozenset((1044, 1045, 1049, 1698))
    # 1290: the server runs with --read-only (a replica); 1836: read-only mode;
    # 1792: a read-only transaction (SQLSTATE 25006, as PostgreSQL's).
    read_only_codes = frozenset((1290, 1792, 1836))

    def bind_expiry(self, value: dt.datetime) -> Any:
        # DATETIME keeps whole seconds; MySQL would round, MariaDB truncate:
        # truncate here so both store the same second knex would.
        return value.replace(tzinfo=None, microsecond=0)

    def live_at(self, now: dt.datetime) -> dt.datetime:
        # The stored second is the expiry rounded down: compared with ``now``
        # rounded down too, a session would load for up to a second after it
        # ended. Rounded up, it ends up to a second early, never late.
        if now.microsecond == 0:
            return now
        return now.replace(microsecond=0) + dt.timedelta(seconds=1)

    def sess_equals(
        self, column: sa.ColumnElement[Any], value: sa.BindParameter[Any]
    ) -> sa.ColumnElement[bool]:
        # MySQL's JSON type normalises its text, so compare JSON values there.
        return column == _CastAsJSON(value)

    def upsert(self, columns: SessionColumns) -> Any:
        stmt = mysql.insert(columns.table).values(columns.row_values())
        return stmt.on_duplicate_key_update(
            {columns.sess: stmt.inserted.sess, columns.expired: stmt.inserted.expired}
        )

    def insert_if_absent(
        self, table: sa.Table, values: dict[str, sa.BindParameter[Any]]
    ) -> sa.Executable | None:
        # IGNORE also turns a value the column refuses into a warning: the
        # callers insert only values of their own making.
        return sa.insert(table).values(values).prefix_with("IGNORE")

    def batch_delete(self, columns: SessionColumns, batch_size: int) -> sa.Executable:
        # MySQL refuses LIMIT in an IN subquery but takes it on DELETE.
        preparer = self.sa_dialect.identifier_preparer
        target, column = preparer.format_table(columns.table), preparer.quote(columns.expired.name)
        sql = f"DELETE FROM {target} WHERE {column} < :now LIMIT {int(batch_size)}"  # noqa: S608
        return sa.text(sql).bindparams(sa.bindparam("now", type_=ExpiryTimestamp()))

    def create_table(self, conn: Connection, table: sa.Table) -> None:
        # One CREATE TABLE IF NOT EXISTS carrying its indexes: atomic, safe to
        # race, and replicated by Galera as one event (two statements would be two).
        preparer = self.sa_dialect.identifier_preparer
        ddl = str(CreateTable(table, if_not_exists=True).compile(dialect=self.sa_dialect)).rstrip()
        indexes = "".join(
            f",\n\tINDEX {preparer.quote(str(index.name))} "
            f"({', '.join(preparer.quote(column.name) for column in index.columns)})"
            for index in table.indexes
        )
        assert ddl.endswith(")")
        conn.exec_driver_sql(f"{ddl[:-1].rstrip()}{indexes}\n)")
        # A table that was there already keeps whatever indexes it had: add those
        # missing (MySQL has no CREATE INDEX IF NOT EXISTS). Two processes adding
        # one at once: the loser's error 1061 makes the store look again.
        present = self.index_names(conn, table)
        for index in table.indexes:
            if index.name not in present:
                columns = ", ".join(preparer.quote(column.name) for column in index.columns)
                target = preparer.format_table(table)
                conn.exec_driver_sql(
                    f"ALTER TABLE {target} ADD INDEX {preparer.quote(str(index.name))} ({columns})"
                )

    def is_conflict(self, exc: DBAPIError) -> bool:
        return _error_code(exc) in self.conflict_codes

    def is_read_only(self, exc: DBAPIError) -> bool:
        return _error_code(exc) in self.read_only_codes

    def column_type_fix(self, table: sa.Table, column: str, reflected: TypeEngine[Any]) -> str | None:
        target = self.sa_dialect.identifier_preparer.format_table(table)
        # MariaDB's JSON is LONGTEXT with a json_valid check: reflected as LONGTEXT.
        if column == "sess" and not isinstance(reflected, (mysql.JSON, mysql.LONGTEXT)):
            return f"ALTER TABLE {target} MODIFY sess JSON NOT NULL"
        # TIMESTAMP converts to and from the connection's time zone; DATETIME keeps the UTC it is given.
        if column == "expired" and (
            not isinstance(reflected, sa.DATETIME) or isinstance(reflected, sa.TIMESTAMP)
        ):
            return f"ALTER TABLE {target} MODIFY expired DATETIME NOT NULL"
        return None

    def user_expression(self, columns: SessionColumns, path: str) -> sa.ColumnElement[Any]:
        return _user_column(self, path)

    def user_index_ddl(self, table: sa.Table, path: str) -> list[str]:
        # A VIRTUAL column costs no storage and no change to any INSERT that
        # names its columns (connect-session-knex's does); binary collation:
        # "Alice" is not "alice". LEFT keeps a long id from failing the write.
        preparer = self.sa_dialect.identifier_preparer
        target, column = preparer.format_table(table), preparer.quote(USER_COLUMN)
        json_path = "$." + ".".join(user_path(path))
        return [
            f"ALTER TABLE {target} ADD COLUMN {column} VARCHAR({USER_ID_LENGTH}) "
            f"CHARACTER SET utf8mb4 COLLATE utf8mb4_bin "
            f"AS (LEFT(JSON_UNQUOTE(JSON_EXTRACT({preparer.quote('sess')}, '{json_path}')), "
            f"{USER_ID_LENGTH})) VIRTUAL",
            f"ALTER TABLE {target} ADD INDEX {preparer.quote(user_index_name(table))} ({column})",
        ]

    def create_user_index(self, conn: Connection, table: sa.Table, path: str) -> None:
        # MySQL has no ADD COLUMN IF NOT EXISTS: look first, then add what is missing.
        inspector = sa.inspect(conn)
        columns = {column["name"] for column in inspector.get_columns(table.name, schema=table.schema)}
        indexes = {index["name"] for index in inspector.get_indexes(table.name, schema=table.schema)}
        add_column, add_index = self.user_index_ddl(table, path)
        if USER_COLUMN not in columns:
            conn.exec_driver_sql(add_column)
        if user_index_name(table) not in indexes:
            conn.exec_driver_sql(add_index)

    def is_misconfiguration(self, exc: DBAPIError) -> bool:
        return _error_code(exc) in self.misconfiguration_codes

    def missing_schema(self, exc: DBAPIError) -> str | None:
        # 1049 "Unknown database 'x'": the URL's database, or the table's schema (the caller tells).
        return _quoted(str(exc.orig), "'") if _error_code(exc) == 1049 else None

    @classmethod
    def engine_options(cls, url: URL) -> dict[str, Any]:
        return {**super().engine_options(url), "pool_recycle": 3600}  # below wait_timeout's 8 hours


class _CastAsJSON(sa.sql.functions.FunctionElement[Any]):
    inherit_cache = True
    name = "cast_as_json"


@compiles(_CastAsJSON)
def _cast_as_json(element: _CastAsJSON, compiler: Any, **kw: Any) -> str:
    # MariaDB's JSON is LONGTEXT (compare the text); MySQL's is a real type.
    # Decided at compile time: the server kind is known only once connected.
    value = compiler.process(element.clauses, **kw)
    return value if getattr(compiler.dialect, "is_mariadb", False) else f"CAST({value} AS JSON)"


_MSSQL_APPLOCK = (
    "EXEC sp_getapplock @Resource = :name, @LockMode = 'Exclusive', "
    "@LockOwner = 'Transaction', @LockTimeout = :timeout_ms"
)


class MSSQL(SessionDialect):
    """``MERGE … WITH (HOLDLOCK)``; ``DATETIME2`` naive UTC; ``NVARCHAR(max)`` JSON."""

    default_driver = "pymssql"
    extra = "mssql"
    connect_timeout_arg: ClassVar[Mapping[str, str]] = {"pymssql": "login_timeout"}
    begin_sql = "BEGIN TRANSACTION"
    expiry_type = mssql.DATETIME2()  # type: ignore[no-untyped-call]

    def upsert(self, columns: SessionColumns) -> Any:
        """``MERGE … WITH (HOLDLOCK)``: the lock makes the match-then-insert atomic."""
        preparer = self.sa_dialect.identifier_preparer
        sid, sess, expired = (preparer.quote(c.name) for c in (columns.sid, columns.sess, columns.expired))
        target = preparer.format_table(columns.table)
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

    def insert_if_absent(
        self, table: sa.Table, values: dict[str, sa.BindParameter[Any]]
    ) -> sa.Executable | None:
        # A WHERE NOT EXISTS insert still raises under a race; MERGE with HOLDLOCK does not.
        preparer = self.sa_dialect.identifier_preparer
        (key,) = table.primary_key.columns
        names = [preparer.quote(name) for name in values]
        source = ", ".join(
            f":{bind.key} AS {quoted}" for bind, quoted in zip(values.values(), names, strict=True)
        )
        sql = (
            f"MERGE INTO {preparer.format_table(table)} WITH (HOLDLOCK) AS t "  # noqa: S608
            f"USING (SELECT {source}) AS s ON t.{preparer.quote(key.name)} = s.{preparer.quote(key.name)} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
            f"VALUES ({', '.join(f's.{quoted}' for quoted in names)});"
        )
        return sa.text(sql).bindparams(*values.values())

    def lock_row(self, select: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
        # SQLAlchemy renders no FOR UPDATE for MSSQL: the table hint is its row lock.
        return select.with_hint(table, "WITH (UPDLOCK, ROWLOCK)", "mssql")

    def batch_delete(self, columns: SessionColumns, batch_size: int) -> sa.Executable:
        preparer = self.sa_dialect.identifier_preparer
        target, column = preparer.format_table(columns.table), preparer.quote(columns.expired.name)
        sql = f"DELETE TOP ({int(batch_size)}) FROM {target} WHERE {column} < :now"
        return sa.text(sql).bindparams(sa.bindparam("now", type_=ExpiryTimestamp()))

    def create_table(self, conn: Connection, table: sa.Table) -> None:
        # A transaction-owned application lock: the second creator waits, then finds the table.
        with self.transaction(conn):
            conn.execute(
                sa.text(_MSSQL_APPLOCK),
                {"name": f"wsgi_dbsession create {table.fullname}", "timeout_ms": CREATE_WAIT * 1000},
            )
            table.create(conn, checkfirst=True)

    def is_conflict(self, exc: DBAPIError) -> bool:
        return bool(_error_code(exc) == 1205)  # chosen as the deadlock victim

    def user_expression(self, columns: SessionColumns, path: str) -> sa.ColumnElement[Any]:
        return _user_column(self, path)

    def user_index_ddl(self, table: sa.Table, path: str) -> list[str]:
        # A computed column (not PERSISTED: JSON_VALUE is deterministic, so it
        # can be indexed as it is), binary collation, and its index.
        preparer = self.sa_dialect.identifier_preparer
        target, column = preparer.format_table(table), preparer.quote(USER_COLUMN)
        name = preparer.quote(user_index_name(table))
        json_path = "$." + ".".join(user_path(path))
        object_name = table.fullname.replace("'", "''")
        return [
            f"IF COL_LENGTH(N'{object_name}', N'{USER_COLUMN}') IS NULL "
            f"ALTER TABLE {target} ADD {column} AS "
            f"CAST(JSON_VALUE({preparer.quote('sess')}, '{json_path}') AS NVARCHAR({USER_ID_LENGTH})) "
            f"COLLATE Latin1_General_100_BIN2",
            f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'{user_index_name(table)}' "  # noqa: S608
            f"AND object_id = OBJECT_ID(N'{object_name}')) "
            f"CREATE INDEX {name} ON {target} ({column})",
        ]

    def missing_schema(self, exc: DBAPIError) -> str | None:
        # 2760: "The specified schema name "x" either does not exist or you do not have permission".
        return _quoted(str(exc.orig), '"') if _error_code(exc) == 2760 else None

    def is_misconfiguration(self, exc: DBAPIError) -> bool:
        # 18456: login failed; 4060: cannot open the database. pymssql may nest (code, text) at connect.
        code = _error_code(exc)
        if isinstance(code, tuple) and code:
            code = code[0]
        return code in (18456, 4060) or any(
            text in str(exc.orig) for text in ("Login failed for user", "Cannot open database")
        )


class SQLite(_OnConflict):
    """``INSERT … ON CONFLICT``; ISO text timestamps; WAL and a busy timeout on files."""

    begin_sql = "BEGIN IMMEDIATE"  # takes the write lock now, not at the first write
    expiry_type = _SQLiteTimestamp()

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def bind_expiry(self, value: dt.datetime) -> Any:
        return to_iso_z(value)

    def lock_row(self, select: sa.Select[Any], table: sa.Table) -> sa.Select[Any]:
        return select  # BEGIN IMMEDIATE holds the database's write lock already

    def create_table(self, conn: Connection, table: sa.Table) -> None:
        with self.transaction(conn):
            _create_if_not_exists(conn, table)

    def is_conflict(self, exc: DBAPIError) -> bool:
        return "database is locked" in str(exc.orig)

    def user_expression(self, columns: SessionColumns, path: str) -> sa.ColumnElement[Any]:
        # As text, so a numeric id (42) matches "42" as on the other databases.
        json_path = "'$." + ".".join(user_path(path)) + "'"
        return sa.cast(sa.func.json_extract(columns.sess, sa.literal_column(json_path)), sa.Text)

    def user_index_ddl(self, table: sa.Table, path: str) -> list[str]:
        return [self._index_ddl(table, self.user_expression(SessionColumns.of(table), path))]

    def create_user_index(self, conn: Connection, table: sa.Table, path: str) -> None:
        with self.transaction(conn):
            super().create_user_index(conn, table, path)

    def index_names(self, conn: Connection, table: sa.Table) -> set[str]:
        # SQLAlchemy skips expression indexes (the user index) with a warning: ask SQLite itself.
        preparer = self.sa_dialect.identifier_preparer
        schema = f"{preparer.quote_schema(table.schema)}." if table.schema else ""
        rows = conn.exec_driver_sql(f"PRAGMA {schema}index_list({preparer.quote(table.name)})")
        return {str(row[1]) for row in rows}

    def is_misconfiguration(self, exc: DBAPIError) -> bool:
        return "unable to open database file" in str(exc.orig)

    def is_missing_table(self, exc: DBAPIError) -> bool:
        # An OperationalError, as "database is locked" is: a mistake all the same.
        return str(exc.orig).startswith("no such table")

    def missing_schema(self, exc: DBAPIError) -> str | None:
        # A schema is an attached database here: "unknown database x" when none is attached as x.
        text = str(exc.orig)
        prefix = "unknown database "
        return text[len(prefix) :].strip() or "?" if text.startswith(prefix) else None

    @classmethod
    def database_file(cls, url: URL) -> str | None:
        if url.query.get("uri") == "true" or url.database in (None, "", ":memory:"):
            return None
        return os.path.abspath(url.database)

    @classmethod
    def on_connect(cls, url: URL) -> Callable[[Any, Any], None] | None:
        if url.database in (None, "", ":memory:"):
            return None
        return _sqlite_pragmas


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers and one writer in several processes work at once;
    # with WAL, synchronous=NORMAL keeps every committed transaction across a
    # process crash (only an OS crash can lose the last ones) without an
    # fsync per commit. Pass your own engine to choose FULL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=5000")
    deadline = time.monotonic() + 5
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError:
            # Switching a new file to WAL needs it alone, and SQLite answers
            # "locked" at once, without its busy handler, while other
            # processes open it too. WAL is kept in the file: done once any did.
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                break
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _user_column(dialect: SessionDialect, path: str) -> sa.ColumnElement[Any]:
    """The indexed column that holds the user id, where the database keeps it as a column."""
    user_path(path)
    return sa.literal_column(dialect.sa_dialect.identifier_preparer.quote(USER_COLUMN), sa.Unicode())


def _quoted(text: str, quote: str) -> str:
    """The first name between ``quote`` marks in a server's message ("?" when there is none)."""
    parts = text.split(quote)
    return parts[1] if len(parts) > 2 else "?"


def _autocommit(conn: Connection) -> bool:
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is None:
        return False
    try:
        return bool(conn.dialect.detect_autocommit_setting(dbapi_connection))
    except NotImplementedError:
        return False


def _error_code(exc: DBAPIError) -> Any:
    """The numeric code PyMySQL and pymssql put first in an error's args."""
    args: tuple[Any, ...] = getattr(exc.orig, "args", ())
    return args[0] if args else None


# URL schemes SQLAlchemy does not know, and the backend each means
# (postgres:// is what Heroku and other platforms give).
BACKEND_ALIASES = {"postgres": "postgresql"}

# SQLAlchemy's dialect names, and the class of each.
DIALECTS: dict[str, type[SessionDialect]] = {
    "postgresql": PostgreSQL,
    "mysql": MySQL,
    "mariadb": MySQL,
    "mssql": MSSQL,
    "sqlite": SQLite,
}


def dialect_class(backend: str) -> type[SessionDialect]:
    """The class for a backend name (``URL.get_backend_name()``); the fallback for unknown ones."""
    return DIALECTS.get(backend, SessionDialect)


@functools.lru_cache(maxsize=32)
def _dialect_for(dialect: Dialect) -> SessionDialect:
    return dialect_class(dialect.name)(dialect)


def dialect_for(dialect: Dialect) -> SessionDialect:
    """The dialect object for a SQLAlchemy dialect (one per SQLAlchemy dialect)."""
    return _dialect_for(dialect)
