"""Issue 15: a user's sessions, found by the user id in the stored JSON, through an index.

Real WSGI requests (WebTest) on SQLite, PostgreSQL and MariaDB; the CLI as
real processes; the real express-session + connect-session-knex app on the
indexed table (PostgreSQL and SQLite, as the other interop tests).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import pymysql
import pytest
import sqlalchemy as sa
import webtest

from conftest import SECRET, StatementLog
from tests.apps import session_app
from tests.cli_helpers import cli
from tests.node_helpers import (  # noqa: F401 - the fixtures `interop` and `node`
    MAX_AGE,
    Browser,
    Interop,
    interop_fixture,
    node_fixture,
)
from tests.schema_helpers import index_exists
from wsgi_dbsession import SessionMiddleware, SessionStore
from wsgi_dbsession.dialects import user_index_name
from wsgi_dbsession.exceptions import ConfigurationError
from wsgi_dbsession.express import UTC
from wsgi_dbsession.options import Options

MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
MakeStore = Callable[..., SessionStore]


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def logged_in_as(client: webtest.TestApp) -> Any:
    return client.get("/read").json["data"].get("user")


def insert_express_row(store: SessionStore, sid: str, sess: dict[str, Any], expires: dt.datetime) -> None:
    """A row as another program writes it: plain SQL, express-session's JSON, no ``_created``."""
    expired: Any = store.dialect.bind_expiry(expires)
    with store.engine.connect() as conn:
        conn.execute(
            sa.text(f"INSERT INTO {store.table.name} (sid, sess, expired) VALUES (:sid, :sess, :expired)"),
            {"sid": sid, "sess": json.dumps(sess), "expired": expired},
        )
        conn.commit()


# -- acceptance 1: three alices and a bob --------------------------------------------


def test_a_user_is_logged_out_everywhere_but_the_kept_session(make_app: MakeApp) -> None:
    _app, middleware = make_app(session_app, user_key="user")
    alices = [webtest.TestApp(middleware) for _ in range(3)]
    bob = webtest.TestApp(middleware)
    for client in alices:
        client.get("/login?user=alice")
    bob.get("/login?user=bob")
    store = middleware.store

    sessions = store.user_sessions("alice")
    assert len(sessions) == 3
    assert len(store.user_sessions("bob")) == 1
    assert store.user_sessions("nobody") == []
    first = sessions[0]
    assert first.data == {"user": "alice"}
    assert first.expires > utcnow() and first.expires.tzinfo is not None
    assert first.created is not None and abs((utcnow() - first.created).total_seconds()) < 60
    assert first.last_active is not None and abs((utcnow() - first.last_active).total_seconds()) < 60
    assert len(first.handle) == 12 and first.handle not in first.sid

    kept = sessions[1].sid
    assert store.destroy_user_sessions("alice", keep=kept) == 2

    assert [logged_in_as(client) for client in alices].count("alice") == 1
    assert [session.sid for session in store.user_sessions("alice")] == [kept]
    assert logged_in_as(bob) == "bob"
    assert len(store.user_sessions("bob")) == 1
    assert store.destroy_user_sessions("alice") == 1
    assert [logged_in_as(client) for client in alices] == [None, None, None]


def test_only_live_sessions_are_listed_and_numbers_match_as_text(make_store: MakeStore) -> None:
    store = make_store(user_key="account.id")
    store.create_table()
    now = utcnow()
    store.set("live-number", {"account": {"id": 42}}, now + dt.timedelta(hours=1))
    store.set("live-text", {"account": {"id": "42"}}, now + dt.timedelta(hours=2))
    store.set("expired", {"account": {"id": 42}}, now - dt.timedelta(hours=1))
    store.set("other", {"account": {"id": 420}}, now + dt.timedelta(hours=1))
    store.set("no-user", {"account": {}}, now + dt.timedelta(hours=1))
    store.set("case", {"account": {"id": "Alice"}}, now + dt.timedelta(hours=1))

    assert [s.sid for s in store.user_sessions(42)] == ["live-text", "live-number"]
    assert [s.sid for s in store.user_sessions("42")] == ["live-text", "live-number"]
    assert store.user_sessions("alice") == []  # ids are compared exactly, case included
    assert store.destroy_user_sessions("42") == 3  # the expired row, not pruned yet, goes too
    assert store.count() == 3


# -- acceptance 2: rows written by another program -------------------------------------


def test_an_express_session_row_inserted_by_plain_sql_is_found(make_store: MakeStore) -> None:
    store = make_store(user_key="passport.user")
    store.create_table()
    expires = (utcnow() + dt.timedelta(hours=1)).replace(microsecond=0)
    sess = {
        "cookie": {
            "originalMaxAge": 3_600_000,
            "expires": expires.isoformat(),
            "httpOnly": True,
            "path": "/",
        },
        "passport": {"user": "carol"},
    }
    insert_express_row(store, "node-made-sid", sess, expires)

    (found,) = store.user_sessions("carol")
    assert found.sid == "node-made-sid"
    assert found.data == {"passport": {"user": "carol"}}
    assert found.created is None
    assert found.expires == expires
    assert found.last_active == expires - dt.timedelta(hours=1)
    assert store.destroy_user_sessions("carol") == 1


def test_connect_session_knex_mysql_upsert_still_works_on_the_indexed_table(
    backend: str, make_store: MakeStore
) -> None:
    """connect-session-knex's MySQL upsert, verbatim, through a plain driver, beside the virtual column."""
    if backend != "mariadb":
        pytest.skip("the virtual column is MariaDB's and MySQL's")
    store = make_store(user_key="passport.user")
    store.create_table()
    table = store.table.name
    upsert = (  # getMysqlFastQuery of connect-session-knex 5.0.0, its ? as PyMySQL's %s
        f"insert into {table} (sid, expired, sess) values (%s, %s, %s) "
        "on duplicate key update expired=values(expired), sess=values(sess);"
    )
    url = store.engine.url
    conn = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, database=url.database)
    try:
        expires = (utcnow() + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        with conn.cursor() as cursor:
            for user in ("dave", "erin"):  # an insert, then an update of the same row
                sess = {"cookie": {"originalMaxAge": 3_600_000}, "passport": {"user": user}}
                cursor.execute(upsert, ("knex-sid", expires, json.dumps(sess)))
            cursor.execute(f"select sess from {table} where sid = %s", ("knex-sid",))
            (stored,) = cursor.fetchone()
        conn.commit()
    finally:
        conn.close()
    assert json.loads(stored)["passport"] == {"user": "erin"}
    assert store.user_sessions("dave") == []
    assert [s.sid for s in store.user_sessions("erin")] == ["knex-sid"]


@pytest.mark.slow
def test_the_node_app_keeps_working_on_the_indexed_table_and_its_sessions_are_found(
    interop: Interop,
) -> None:
    python_url = interop.start_python(user_key="passport.user")
    store = interop.middlewares[0].store
    store.create_table()  # the table and the index, before connect-session-knex looks
    node_url = interop.start_node()
    assert index_exists(store)
    browser = Browser()

    body, _ = browser.get(node_url + "/set?key=passport&value=" + quote('{"user":"frank"}'))
    body, _ = browser.get(node_url + "/incr")  # connect-session-knex's upsert on the indexed table
    assert body["data"] == {"passport": {"user": "frank"}, "count": 1}
    (found,) = store.user_sessions("frank")
    assert found.sid == browser.sid
    assert found.data == {"passport": {"user": "frank"}, "count": 1}
    body, _ = browser.get(python_url + "/incr")
    assert body["data"]["count"] == 2

    assert store.destroy_user_sessions("frank") == 1
    body, _ = browser.get(node_url + "/read")
    assert body["data"] == {}


# -- acceptance 3: the index ------------------------------------------------------------


def test_the_index_is_created_with_the_table_and_added_to_an_existing_one(make_store: MakeStore) -> None:
    plain = make_store()
    plain.create_table()
    plain.set("before", {"user_id": "gina"}, utcnow() + dt.timedelta(hours=1))
    keyed = make_store(user_key="user_id")
    assert not index_exists(keyed)
    keyed.create_table()  # the table exists: only the index is added
    assert index_exists(keyed)
    keyed.create_table()  # and again: nothing to do, no error
    keyed.create_user_index()
    assert [s.sid for s in keyed.user_sessions("gina")] == ["before"]


def test_sqlite_answers_the_lookup_from_the_index(backend: str, make_store: MakeStore) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's query plan")
    store = make_store(user_key="passport.user")
    store.create_table()
    stmt = sa.select(store.columns.sid).where(store._user)
    compiled = stmt.compile(dialect=store.engine.dialect)
    with store.engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", ("x",)).all()
    assert any(user_index_name(store.table) in str(row) for row in plan), plan


@pytest.fixture
def big_pg_store(table_name: str) -> Iterator[SessionStore]:
    store = SessionStore(
        url="postgresql://postgres@127.0.0.1:5432/test", table_name=table_name, user_key="passport.user"
    )
    store.create_table()
    yield store
    with store.engine.connect() as conn:
        store.table.drop(conn)
        conn.commit()
    store.dispose()


def fill_pg(store: SessionStore, rows: int, users: int) -> None:
    """``rows`` sessions of ``users`` users, generated by the server, then ANALYZE."""
    table = store.table.name
    with store.engine.connect() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {table} (sid, sess, expired) "
            "SELECT md5(i::text) || i, "
            "json_build_object('cookie', json_build_object('originalMaxAge', 86400000), "
            "'passport', json_build_object('user', 'u' || (i %% %(users)s)))::json, "
            "now() + interval '1 day' FROM generate_series(1, %(rows)s) AS i",
            {"rows": rows, "users": users},
        )
        conn.exec_driver_sql(f"ANALYZE {table}")
        conn.commit()


def test_postgresql_explain_uses_the_index_on_100000_sessions(big_pg_store: SessionStore) -> None:
    fill_pg(big_pg_store, 100_000, 20_000)
    store = big_pg_store
    stmt = (
        sa.select(store.columns.sid)
        .where(store._user)
        .where(store.columns.expired >= sa.bindparam("now", type_=sa.DateTime(timezone=True)))
    )
    compiled = str(stmt.compile(dialect=store.engine.dialect))
    with store.engine.connect() as conn:
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql(f"EXPLAIN {compiled}", {"user": "u7", "now": utcnow()}).all()
        )
    assert user_index_name(store.table) in plan, plan
    assert "Seq Scan" not in plan, plan
    assert len(store.user_sessions("u7")) == 5


# -- acceptance 5: the request path is unchanged ------------------------------------------


def test_the_statement_budget_per_request_is_unchanged(make_app: MakeApp) -> None:
    app, middleware = make_app(session_app, user_key="user")
    log = StatementLog(middleware.store)
    app.get("/unused")
    assert len(log) == 0, log.statements
    app.get("/login?user=alice")  # a new session: one write, no SELECT
    assert len(log) == 1, log.statements
    log.clear()
    app.get("/incr")  # read + write
    assert len(log) == 2, log.statements
    log.clear()
    app.get("/read")
    assert len(log) == 1, log.statements
    log.remove()


# -- a request in flight while its session is deleted ---------------------------------------


def test_a_request_in_flight_does_not_bring_back_a_session_deleted_under_it(make_app: MakeApp) -> None:
    holder: dict[str, SessionMiddleware] = {}

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        session = environ["dbsession"]
        if environ["PATH_INFO"] == "/login":
            session["user"] = "hank"
        else:
            assert session["user"] == "hank"  # loaded before the admin acts
            assert holder["m"].store.destroy_user_sessions("hank") == 1
            session["cart"] = ["late write"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    client, middleware = make_app(app, user_key="user")
    holder["m"] = middleware
    client.get("/login")
    client.get("/shop")
    assert middleware.store.user_sessions("hank") == []
    assert middleware.store.count() == 0


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["", "user.", ".user", "a..b", "1user", "passport.user'", "a-b", "a b", "a[0]", "$.a"]
)
def test_a_user_key_that_is_not_a_dotted_identifier_path_is_refused(path: str) -> None:
    with pytest.raises(ConfigurationError, match="user_key"):
        SessionStore(url="sqlite://", user_key=path)
    with pytest.raises(ConfigurationError, match="user_key"):
        Options(secret=SECRET, user_key=path)


def test_the_user_api_needs_a_user_key() -> None:
    store = SessionStore(url="sqlite://")
    with pytest.raises(ConfigurationError, match="user_key"):
        store.user_sessions("alice")
    with pytest.raises(ConfigurationError, match="user_key"):
        store.destroy_user_sessions("alice")
    assert Options(secret=SECRET).user_key is None
    assert Options(secret=SECRET, user_key="passport.user").user_key == "passport.user"


# -- acceptance 4: the CLI as real processes ------------------------------------------------------


# slow: console-script processes on every database; once per CI run (test_cli.py runs
# the commands on every Python)
@pytest.mark.slow
def test_cli_lists_and_logs_out_a_user(db_url: str, table_name: str, make_store: MakeStore) -> None:
    target = ("--url", db_url, "--table", table_name)
    assert cli("create-table", *target).returncode == 0
    store = make_store(user_key="passport.user", create_table=False)
    assert not index_exists(store)
    created = cli("create-table", *target, "--user-key", "passport.user", script=True)
    assert created.returncode == 0, created.stderr
    assert index_exists(store)

    later = utcnow() + dt.timedelta(hours=1)
    sids = [secrets.token_urlsafe(24) for _ in range(3)]
    for sid in sids[:2]:
        store.set(sid, {"passport": {"user": "ivy"}}, later)
    store.set(sids[2], {"passport": {"user": "jack"}}, later)

    listed = cli("sessions", *target, "--user-key", "passport.user", "--user", "ivy", script=True)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert not any(sid in listed.stdout or sid[:8] in listed.stdout for sid in sids)
    assert sorted(line.split()[0] for line in lines) == sorted(s.handle for s in store.user_sessions("ivy"))
    assert all(" expires " in line and " created " in line and " last-active " in line for line in lines)

    out = cli("logout-user", "--user", "ivy", *target, "--user-key", "passport.user")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("deleted 2 sessions of user 'ivy'")
    assert store.user_sessions("ivy") == []
    assert len(store.user_sessions("jack")) == 1
    assert cli("sessions", *target, "--user-key", "passport.user", "--user", "ivy").stdout == ""


# slow: console-script processes on every database; once per CI run
@pytest.mark.slow
def test_cli_user_commands_exit_codes(db_url: str, table_name: str) -> None:
    target = ("--url", db_url, "--table", table_name)
    for args in (("sessions", "--user", "ivy"), ("logout-user", "--user", "ivy")):
        no_key = cli(*args, *target)
        assert no_key.returncode == 2 and "--user-key" in no_key.stderr
        bad_key = cli(*args, *target, "--user-key", "a;drop")
        assert bad_key.returncode == 2 and "user_key" in bad_key.stderr
        no_table = cli(*args, *target, "--user-key", "passport.user")
        assert no_table.returncode in (1, 4), no_table.stderr  # no table (1), or, SQLite, no file (4)
        down = cli(
            *args,
            "--url",
            "postgresql://postgres:hunter2-secret@127.0.0.1:1/test",
            "--user-key",
            "passport.user",
        )
        assert down.returncode == 3 and "hunter2" not in down.stderr
