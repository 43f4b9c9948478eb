"""MSSQL: every statement the package sends, compiled by SQLAlchemy's mssql dialect.

No MSSQL server runs here, so the SQL itself is checked: types, quoting,
the MERGE's lock hint, bound values. With ``WSGI_DBSESSION_MSSQL_URL`` set,
the live tests at the end run too (and conftest adds "mssql" to the
backends, so the whole contract suite runs on it); without it they skip
and say so.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
import webtest
from sqlalchemy.schema import CreateIndex, CreateTable

from conftest import SECRET, StatementLog, backend_url, drop_table
from tests.apps import session_app
from tests.db_workers import exercise
from wsgi_dbsession import SessionMiddleware, SessionStore
from wsgi_dbsession.dialects import MSSQL, ExpiryTimestamp, SessionJSON, dialect_for
from wsgi_dbsession.driver import Prepared
from wsgi_dbsession.express import UTC
from wsgi_dbsession.prune import PruneLease

# Creating an engine does not connect: the dialect is all these tests use.
OFFLINE_URL = "mssql+pymssql://user:password@mssql.invalid/sessions"


@pytest.fixture
def offline_store() -> Iterator[SessionStore]:
    store = SessionStore(url=OFFLINE_URL, table_name="My-Sessions", sid_column="Session-Id", schema="app")
    yield store
    store.dispose()


def sql(statement: Any, store: SessionStore) -> str:
    """The statement as the mssql dialect renders it, on one line."""
    return " ".join(str(statement.compile(dialect=store.engine.dialect)).split())


def test_the_dialect_is_mssql_with_its_merge_upsert(offline_store: SessionStore) -> None:
    assert offline_store.engine.dialect.name == "mssql"
    assert isinstance(offline_store.dialect, MSSQL)
    assert offline_store.dialect is dialect_for(offline_store.engine.dialect)


def test_create_table_has_the_design_types(offline_store: SessionStore) -> None:
    assert sql(CreateTable(offline_store.table), offline_store) == (
        "CREATE TABLE app.[My-Sessions] ( "
        "[Session-Id] NVARCHAR(255) NOT NULL, "
        "sess NVARCHAR(max) NOT NULL, "
        "expired DATETIME2 NOT NULL, "
        "PRIMARY KEY ([Session-Id]) )"
    )
    (index,) = offline_store.table.indexes
    assert sql(CreateIndex(index), offline_store) == (
        "CREATE INDEX [My-Sessions_expired_index] ON app.[My-Sessions] (expired)"
    )


def test_select_reads_one_live_row(offline_store: SessionStore) -> None:
    assert sql(offline_store._select.statement, offline_store) == (
        "SELECT app.[My-Sessions].sess AS sess, app.[My-Sessions].expired FROM app.[My-Sessions] "
        "WHERE app.[My-Sessions].[Session-Id] = %(sid)s AND app.[My-Sessions].expired >= %(now)s"
    )


def test_merge_is_atomic_and_quotes_every_identifier(offline_store: SessionStore) -> None:
    merge = offline_store.dialect.upsert(offline_store.columns)
    assert sql(merge, offline_store) == (
        "MERGE INTO app.[My-Sessions] WITH (HOLDLOCK) AS t "
        "USING (SELECT %(sid)s AS sid, %(sess)s AS sess, %(expired)s AS expired) AS s "
        "ON t.[Session-Id] = s.sid "
        "WHEN MATCHED THEN UPDATE SET t.sess = s.sess, t.expired = s.expired "
        "WHEN NOT MATCHED THEN INSERT ([Session-Id], sess, expired) VALUES (s.sid, s.sess, s.expired);"
    )
    binds = merge.compile(dialect=offline_store.engine.dialect).binds
    assert isinstance(binds["sid"].type, sa.Unicode)
    assert isinstance(binds["sess"].type, sa.UnicodeText)
    assert isinstance(binds["expired"].type, ExpiryTimestamp)


def test_compare_and_set_rename_touch_and_delete(offline_store: SessionStore) -> None:
    table = "app.[My-Sessions]"
    assert sql(offline_store._replace.statement, offline_store) == (
        f"UPDATE {table} SET sess=%(sess)s, expired=%(expired)s "
        f"WHERE {table}.[Session-Id] = %(b_sid)s AND {table}.sess = %(expected)s"
    )
    assert sql(offline_store._rename.statement, offline_store) == (
        f"UPDATE {table} SET [Session-Id]=%(new_sid)s, sess=%(sess)s, expired=%(expired)s "
        f"WHERE {table}.[Session-Id] = %(old_sid)s"
    )
    assert sql(offline_store._touch.statement, offline_store) == (
        f"UPDATE {table} SET expired=%(expired)s WHERE {table}.[Session-Id] = %(b_sid)s"
    )
    assert sql(offline_store._delete.statement, offline_store) == (
        f"DELETE FROM {table} WHERE {table}.[Session-Id] = %(b_sid)s"
    )


def test_prune_deletes_in_batches_with_top(offline_store: SessionStore) -> None:
    statement = offline_store.dialect.batch_delete(offline_store.columns, 500)
    assert sql(statement, offline_store) == "DELETE TOP (500) FROM app.[My-Sessions] WHERE expired < %(now)s"


def test_a_contended_save_locks_its_row_with_updlock(offline_store: SessionStore) -> None:
    store = offline_store
    select = store.dialect.lock_row(sa.select(store.columns.sess).where(store._live), store.table)
    assert sql(select, offline_store) == (
        "SELECT app.[My-Sessions].sess FROM app.[My-Sessions] WITH (UPDLOCK, ROWLOCK) "
        "WHERE app.[My-Sessions].[Session-Id] = %(sid)s AND app.[My-Sessions].expired >= %(now)s"
    )


def test_the_prune_lease_is_plain_rows_taken_by_one_conditional_update(offline_store: SessionStore) -> None:
    lease = PruneLease(offline_store)
    assert sql(CreateTable(lease.table), offline_store) == (
        "CREATE TABLE app.[My-Sessions_lease] ( name NVARCHAR(255) NOT NULL, "
        "holder NVARCHAR(255) NOT NULL, expires DATETIME2 NOT NULL, PRIMARY KEY (name) )"
    )
    assert sql(lease._take, offline_store) == (
        "UPDATE app.[My-Sessions_lease] SET holder=%(me)s, expires=%(until)s "
        "WHERE app.[My-Sessions_lease].name = %(lease)s AND (app.[My-Sessions_lease].holder = %(me)s "
        "OR app.[My-Sessions_lease].expires < %(now)s)"
    )
    # Taken when absent by a MERGE that never fails on the server (a WHERE NOT EXISTS insert can).
    assert sql(lease._insert_if_absent, offline_store) == (
        "MERGE INTO app.[My-Sessions_lease] WITH (HOLDLOCK) AS t USING (SELECT %(lease)s AS name, "
        "%(me)s AS holder, %(until)s AS expires) AS s ON t.name = s.name WHEN NOT MATCHED THEN "
        "INSERT (name, holder, expires) VALUES (s.name, s.holder, s.expires);"
    )
    assert sql(lease._release, offline_store) == (
        "DELETE FROM app.[My-Sessions_lease] WHERE app.[My-Sessions_lease].name = %(lease)s "
        "AND app.[My-Sessions_lease].holder = %(me)s"
    )


def test_table_creation_waits_on_a_transaction_applock(offline_store: SessionStore) -> None:
    from wsgi_dbsession.dialects import _MSSQL_APPLOCK

    assert sql(sa.text(_MSSQL_APPLOCK), offline_store) == (
        "EXEC sp_getapplock @Resource = %(name)s, @LockMode = 'Exclusive', "
        "@LockOwner = 'Transaction', @LockTimeout = %(timeout_ms)s"
    )
    assert offline_store.dialect.begin_sql == "BEGIN TRANSACTION"


def test_expiry_is_bound_as_naive_utc_with_datetime2_precision(offline_store: SessionStore) -> None:
    dialect = offline_store.engine.dialect
    kolkata = dt.timezone(dt.timedelta(hours=5, minutes=30))
    moment = dt.datetime(2030, 1, 2, 8, 0, 0, 123456, tzinfo=kolkata)
    bound = ExpiryTimestamp().process_bind_param(moment, dialect)
    assert bound == dt.datetime(2030, 1, 2, 2, 30, 0, 123000)
    assert bound.tzinfo is None
    read = ExpiryTimestamp().process_result_value(bound, dialect)
    assert read == dt.datetime(2030, 1, 2, 2, 30, 0, 123000, tzinfo=UTC)
    assert sa.types.to_instance(SessionJSON()).compile(dialect=dialect) == "NVARCHAR(max)"


def test_the_hot_path_hands_pymssql_the_dialect_s_sql_and_a_dict_of_driver_values(
    offline_store: SessionStore,
) -> None:
    # driver.py runs the MERGE on pymssql's own cursor: pyformat SQL, named values, the
    # expiry as the naive UTC datetime Core would bind.
    merge = offline_store.dialect.upsert(offline_store.columns)
    compiled = Prepared(merge, "write").compiled(offline_store.engine.dialect)
    assert " ".join(compiled.sql.split()) == sql(merge, offline_store)
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert compiled.parameters({"sid": "s1", "sess": "{}", "expired": expires}) == {
        "sid": "s1",
        "sess": "{}",
        "expired": dt.datetime(2030, 1, 2, 3, 4, 5, 678000),
    }


# -- a live server, when there is one ---------------------------------------------------


@pytest.fixture
def mssql_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return backend_url("mssql", tmp_path_factory)  # skips, saying "set WSGI_DBSESSION_MSSQL_URL"


@pytest.fixture
def mssql_store(mssql_url: str, table_name: str) -> Iterator[SessionStore]:
    store = SessionStore(url=mssql_url, table_name=table_name)
    yield store
    drop_table(store.engine, store.table)
    store.dispose()


def test_live_mssql_store_round_trip(mssql_store: SessionStore) -> None:
    exercise(mssql_store)


def test_live_mssql_table_types(mssql_store: SessionStore) -> None:
    mssql_store.create_table()
    with mssql_store.engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT column_name, data_type, character_maximum_length, is_nullable "
                "FROM information_schema.columns WHERE table_name = :table ORDER BY ordinal_position"
            ),
            {"table": mssql_store.table.name},
        ).all()
    assert [tuple(row) for row in columns] == [
        ("sid", "nvarchar", 255, "NO"),
        ("sess", "nvarchar", -1, "NO"),
        ("expired", "datetime2", None, "NO"),
    ]


def test_live_mssql_request_budget(mssql_store: SessionStore) -> None:
    middleware = SessionMiddleware(
        session_app,
        secret=SECRET,
        engine=mssql_store.engine,
        table_name=mssql_store.table.name,
        cleanup_interval=0,
    )
    app = webtest.TestApp(middleware)
    log = StatementLog(middleware.store)
    assert app.get("/incr").json["data"] == {"count": 1}
    assert len(log) == 1, log.statements
    log.clear()
    assert app.get("/incr").json["data"] == {"count": 2}
    assert len(log) == 2, log.statements
    log.clear()
    app.get("/read")
    assert len(log) == 1, log.statements
    log.remove()


# -- user_key (issue 15): the computed column, its index, the lookup ------------------------


def test_the_user_index_is_a_binary_computed_column_on_json_value_with_its_index() -> None:
    store = SessionStore(
        url=OFFLINE_URL,
        table_name="My-Sessions",
        sid_column="Session-Id",
        schema="app",
        user_key="passport.user",
    )
    try:
        add_column, add_index = store.dialect.user_index_ddl(store.table, "passport.user")
        assert add_column == (
            "IF COL_LENGTH(N'app.My-Sessions', N'sess_user') IS NULL "
            "ALTER TABLE app.[My-Sessions] ADD sess_user AS "
            "CAST(JSON_VALUE(sess, '$.passport.user') AS NVARCHAR(255)) COLLATE Latin1_General_100_BIN2"
        )
        assert add_index == (
            "IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'My-Sessions_user_index' "
            "AND object_id = OBJECT_ID(N'app.My-Sessions')) "
            "CREATE INDEX [My-Sessions_user_index] ON app.[My-Sessions] (sess_user)"
        )
        lookup = sa.select(store.columns.sid).where(store._user)
        assert sql(lookup, store) == (
            "SELECT app.[My-Sessions].[Session-Id] FROM app.[My-Sessions] WHERE sess_user = %(user)s"
        )
        delete = sa.delete(store.table).where(store._user).where(store.columns.sid != sa.bindparam("keep"))
        assert sql(delete, store) == (
            "DELETE FROM app.[My-Sessions] WHERE sess_user = %(user)s "
            "AND app.[My-Sessions].[Session-Id] != %(keep)s"
        )
    finally:
        store.dispose()
