"""The store's less travelled statements, on every live database: the table check, the
row-locking rewrite of a contended save, and what the store says about itself.

Written for the survivors of the mutation run of store.py (docs/reliability.md);
each was checked to fail with its mutant planted.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sys
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import LIVE_URLS, unique_table_name
from tests.schema_helpers import index_exists, scratch_schema
from wsgi_dbsession import ConfigurationError, SessionStore, StoreError, create_engine
from wsgi_dbsession.cookies import generate_sid
from wsgi_dbsession.express import UTC
from wsgi_dbsession.store import SessionStats, UserSession, normalize_url

MakeStore = Callable[..., SessionStore]


def at(seconds: float) -> dt.datetime:
    """Now plus ``seconds``, in whole seconds (every column keeps those exactly)."""
    return (dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)).replace(microsecond=0)


def test_has_table_says_whether_the_table_exists_without_creating_it(make_store: MakeStore) -> None:
    store = make_store()  # create_table=True: created on first use, and has_table is no use
    assert not store.has_table()
    assert not store.has_table(), "asking did not create it"
    store.create_table()
    assert store.has_table()
    other = sa.Table(
        f"{store.table.name}_other", sa.MetaData(), *[sa.Column("id", sa.Integer, primary_key=True)]
    )
    assert not store.has_table(other), "another table is looked up by its own name"
    assert store.has_table(store.table)


def test_has_table_is_false_when_the_database_cannot_be_asked() -> None:
    store = SessionStore(url="postgresql://nobody@127.0.0.1:1/none", create_table=False)
    try:
        assert store.has_table() is False
    finally:
        store.dispose()


def test_replace_locked_rewrites_the_live_row_only(store: SessionStore) -> None:
    sid, expires = generate_sid(), at(3600)
    store.write(sid, '{"v":1}', at(60))
    seen: list[str] = []

    def rewrite(current: str) -> tuple[str, dt.datetime]:
        seen.append(current)
        return '{"v":2}', expires

    now = at(0)
    assert store.replace_locked(sid, now, rewrite) is True
    assert seen == ['{"v":1}'], "rewrite got the stored text"
    stored = store.load(sid)
    assert stored is not None
    assert (stored.text, stored.expires) == ('{"v":2}', expires)

    missing = generate_sid()
    assert store.replace_locked(missing, now, rewrite) is False
    assert store.load(missing) is None, "no row is made for a missing id"

    expired = generate_sid()
    store.write(expired, '{"v":1}', at(-60))
    assert store.replace_locked(expired, now, rewrite) is False, "an expired row is not brought back"
    assert store.load(expired, at(-120)) is not None and store.count(expired=True, now=now) == 1
    assert seen == ['{"v":1}'], "rewrite was called for the live row only"


def test_stats_counts_live_and_expired_rows_at_the_time_given(store: SessionStore) -> None:
    store.set(generate_sid(), {}, at(60))
    store.set(generate_sid(), {}, at(-60))
    assert store.stats() == SessionStats(live=1, expired=1)
    assert store.stats(at(120)) == SessionStats(live=0, expired=2)
    assert store.stats(at(-120)) == SessionStats(live=2, expired=0)


@pytest.mark.parametrize(
    ("url", "blocked", "hint"),
    [
        # The tested driver of a database with an extra: the extra installs it.
        ("postgresql://postgres@127.0.0.1/test", "psycopg", "pip install 'wsgi_dbsession[postgresql]'"),
        # Another driver: install it, or use the tested one.
        (
            "mysql+mysqldb://root@127.0.0.1/test",
            "MySQLdb",
            "install it, or use a mysql+pymysql:// url, the tested driver "
            "(pip install 'wsgi_dbsession[mysql]')",
        ),
        # A database without an extra (its driver comes with Python).
        ("sqlite:///never-created.sqlite", "sqlite3", "install it"),
    ],
)
def test_a_missing_driver_is_a_configuration_error_saying_what_to_install(
    url: str, blocked: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # import fails, as without the package
    with pytest.raises(ConfigurationError) as raised:
        create_engine(url)
    message = str(raised.value)
    driver = normalize_url(url).drivername  # a bare URL gets its tested driver
    assert message.startswith(f"the database driver of {driver!r} is not installed ("), message
    assert message.endswith(f"); {hint}"), message


def test_the_repr_names_the_table_and_the_url_without_its_password() -> None:
    store = SessionStore(url="postgresql://app:s3cret@127.0.0.1:5432/test", table_name="web.sessions")
    try:
        assert (
            repr(store)
            == "<SessionStore 'web.sessions' on 'postgresql+psycopg://app:***@127.0.0.1:5432/test'>"
        )
    finally:
        store.dispose()


def test_adding_the_user_index_while_another_process_adds_it_succeeds_on_mariadb(
    backend: str, make_store: MakeStore
) -> None:
    # MariaDB (and MySQL) have no ADD COLUMN IF NOT EXISTS: the store looks, then adds
    # what is missing. Another process adding the column between the look and the ALTER
    # makes the ALTER fail; the store looks again and finds nothing left to add.
    if backend != "mariadb":
        pytest.skip("only MySQL and MariaDB look before they add (the others use IF NOT EXISTS)")
    make_store().create_table()  # an existing table without the user index
    mine, theirs = make_store(user_key="passport.user"), make_store(user_key="passport.user")
    raced: list[str] = []

    def the_other_process_first(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("ALTER TABLE") and not raced:
            raced.append(statement)
            theirs.create_user_index()

    sa.event.listen(mine.engine, "before_cursor_execute", the_other_process_first)
    mine.create_user_index()
    assert raced, "the race happened"
    assert index_exists(mine)
    sid = generate_sid()
    mine.set(sid, {"passport": {"user": "ann"}}, at(60))
    assert [found.sid for found in mine.user_sessions("ann")] == [sid]


def refuse_user_index_ddl(store: SessionStore, times: int) -> list[str]:
    """Make the database refuse the user index's DDL ``times`` times (as a missing privilege would).

    The DDL is swapped for a statement the database itself refuses, so the error
    comes from the driver as a refusal would (an error raised in the listener
    reaches the caller unwrapped on SQLAlchemy 2.0).
    """
    refused: list[str] = []
    missing = f"refused_by_the_test_{secrets.token_hex(4)}"

    def refuse(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> tuple[str, Any]:
        ddl = statement.lstrip().upper().startswith("ALTER TABLE") or "_user_index" in statement
        if ddl and len(refused) < times:
            refused.append(statement)
            return f"SELECT * FROM {missing}", parameters
        return statement, parameters

    sa.event.listen(store.engine, "before_cursor_execute", refuse, retval=True)
    return refused


def test_the_user_index_is_tried_again_once_after_a_refusal(make_store: MakeStore) -> None:
    # The second try is there for a race on MySQL (another process added the column between
    # the store's look and its ALTER); it runs whatever refused the first, here at first use.
    store = make_store(user_key="passport.user")
    refused = refuse_user_index_ddl(store, times=1)
    assert store.count() == 0  # the first use creates the table and its user index
    assert len(refused) == 1
    assert index_exists(store)


def test_a_user_index_refused_twice_is_an_error_naming_it(make_store: MakeStore) -> None:
    store = make_store(user_key="passport.user")
    store.create(store.table)  # the sessions table is there; its user index is not
    refused = refuse_user_index_ddl(store, times=2)
    with pytest.raises(StoreError, match=rf"the user index of '{store.table.name}' could not be created: "):
        store.create_user_index()
    assert len(refused) == 2


# -- a user's sessions -------------------------------------------------------------


def test_a_user_s_sessions_say_when_each_was_last_active_from_its_cookie_object(
    make_store: MakeStore,
) -> None:
    # last_active is the expiry less the lifetime the row's cookie object records; a
    # browser-session cookie's row lives a day from each write; a lifetime that is not a
    # positive number of milliseconds says nothing.
    store = make_store(user_key="passport.user")
    store.create_table()
    base = at(3600)
    day, ms = dt.timedelta(days=1), dt.timedelta(milliseconds=1)
    cookies: dict[str, tuple[Any, dt.datetime | None]] = {
        "hour": (3_600_000, base - dt.timedelta(hours=1)),
        "one-ms": (1, base - ms),
        "browser": (None, base - day),
        "zero": (0, None),
        "text": ("3600000", None),
        "flag": (True, None),
    }
    for offset, (sid, (original, _)) in enumerate(cookies.items()):
        cookie = {"originalMaxAge": original, "expires": None, "httpOnly": True, "path": "/"}
        text = json.dumps({"cookie": cookie, "passport": {"user": "zed"}})
        store.write(sid, text, base - dt.timedelta(seconds=offset))
    found = {session.sid: session for session in store.user_sessions("zed")}
    assert list(found) == list(cookies), "latest expiry first"
    for offset, (sid, (_, expected)) in enumerate(cookies.items()):
        moved = dt.timedelta(seconds=offset)
        assert found[sid].last_active == (None if expected is None else expected - moved), sid


class _Refusing:
    """A serializer whose loads refuses everything (a signed or encrypted format whose key changed)."""

    def dumps(self, value: Any) -> str:
        return json.dumps(value)

    def loads(self, text: str) -> Any:
        raise ValueError("refused")


def test_a_session_the_serializer_cannot_read_is_listed_with_its_id_and_expiry_only(
    make_store: MakeStore,
) -> None:
    store = make_store(user_key="passport.user", serializer=_Refusing())
    store.create_table()
    expires = at(60)
    store.write("unreadable", json.dumps({"passport": {"user": "ann"}, "_created": 1.0}), expires)
    assert store.user_sessions("ann") == [UserSession("unreadable", expires, {}, None, None)]


def test_a_user_s_session_expiring_this_very_second_is_still_listed(make_store: MakeStore) -> None:
    # As a load: a row is live up to and including its expiry (connect-session-knex's >=).
    store = make_store(user_key="passport.user")
    store.create_table()
    expires = at(60)
    store.set("edge", {"passport": {"user": "ann"}}, expires)
    assert [session.sid for session in store.user_sessions("ann", now=expires)] == ["edge"]
    assert store.user_sessions("ann", now=expires + dt.timedelta(seconds=1)) == []


def test_a_prune_in_batches_of_one_row_deletes_one_row_per_statement(make_store: MakeStore) -> None:
    store = make_store()
    seed_rows = 3
    store.create_table()
    for n in range(seed_rows):
        store.set(f"old-{n}", {}, at(-60))
    assert list(store.prune_batches(batch_size=1)) == [1, 1, 1, 0]


def test_the_row_lock_of_a_contended_save_is_asked_for_the_sessions_table(
    store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MSSQL renders the lock as a hint on that table (tests/test_mssql.py checks the SQL);
    # no MSSQL server runs here, so the store is checked to name the table it locks.
    asked: list[sa.Table] = []
    lock_row = store.dialect.lock_row

    def recording(select: Any, table: sa.Table) -> Any:
        asked.append(table)
        return lock_row(select, table)

    monkeypatch.setattr(store.dialect, "lock_row", recording)
    sid = generate_sid()
    store.write(sid, '{"v":1}', at(60))
    assert store.replace_locked(sid, at(0), lambda _text: ('{"v":2}', at(60)))
    assert asked == [store.table]


def test_a_helper_table_the_database_refuses_to_create_is_an_error_beside_an_existing_sessions_table(
    store: SessionStore,
) -> None:
    # create() forgives a failed CREATE only when the very table it was creating is there
    # (another process made it first), not when some other table (the sessions one) is.
    helper = sa.Table(
        f"{store.table.name}_helper", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    dbapi = store.engine.dialect.dbapi
    assert dbapi is not None

    def refuse(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "CREATE TABLE" in statement.upper() and helper.name in statement:
            raise dbapi.OperationalError("permission denied to create the table (refused by the test)")

    sa.event.listen(store.engine, "before_cursor_execute", refuse)
    with pytest.raises(StoreError):
        store.create(helper)
    assert not store.has_table(helper)


# -- the JSON of the sess column --------------------------------------------------------


def test_sessions_are_stored_as_compact_json_keeping_unicode_as_is(store: SessionStore) -> None:
    # As express-session's JSON.stringify writes them: no spaces, characters as they are.
    sid = generate_sid()
    store.set(sid, {"name": "Zoë 名前", "tags": [1, 2], "nested": {"a": None}}, at(60))
    stored = store.load(sid)
    assert stored is not None
    assert stored.text == '{"name":"Zoë 名前","tags":[1,2],"nested":{"a":null}}'


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_json_cannot_hold_is_refused_and_nothing_is_stored(
    store: SessionStore, number: float
) -> None:
    # JSON has no NaN or infinities: PostgreSQL's json column would refuse the text, and
    # JavaScript's JSON.parse (the Node app sharing the table) too.
    sid = generate_sid()
    with pytest.raises(ValueError, match="JSON compliant"):
        store.set(sid, {"x": number}, at(60))
    assert store.load(sid) is None


# -- URLs and engines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgres://app@db/sessions", "postgresql+psycopg://app@db/sessions"),  # Heroku's spelling
        ("postgres+psycopg2://app@db/sessions", "postgresql+psycopg2://app@db/sessions"),
        ("postgresql://app@db/sessions", "postgresql+psycopg://app@db/sessions"),
        ("mysql://root@db/sessions", "mysql+pymysql://root@db/sessions"),
        ("mysql+mysqldb://root@db/sessions", "mysql+mysqldb://root@db/sessions"),
        ("mssql://sa@db/sessions", "mssql+pymssql://sa@db/sessions"),
        ("sqlite:///sessions.sqlite", "sqlite:///sessions.sqlite"),
    ],
)
def test_a_bare_url_gets_its_tested_driver_and_postgres_is_read_as_postgresql(
    url: str, normalized: str
) -> None:
    assert normalize_url(url).render_as_string(hide_password=False) == normalized


def test_a_url_that_does_not_parse_is_a_configuration_error_naming_the_url_option() -> None:
    with pytest.raises(ConfigurationError, match=r"^url is not a database URL \("):
        normalize_url("not a url")


def test_a_store_is_refused_both_a_url_and_an_engine_or_an_empty_name(engine_for: Any) -> None:
    engine = engine_for("sqlite://")
    with pytest.raises(ConfigurationError, match=r"^give url or engine, not both$"):
        SessionStore(url="sqlite://", engine=engine)
    for names in ({"table_name": ""}, {"sid_column": ""}, {"table_name": "app."}):
        with pytest.raises(ConfigurationError, match=r"^table_name and sid_column must not be empty$"):
            SessionStore(engine=engine, **names)


def test_a_dotted_table_name_is_split_at_its_first_dot_only() -> None:
    # "schema.table"; a dot in the table's own name stays there. A dotted name with a
    # schema= as well is refused (tests/test_table_names.py): it was silently schema."a.b".
    store = SessionStore(url="sqlite://", table_name="app.sessions.v2", create_table=False)
    assert (store.table.schema, store.table.name) == ("app", "sessions.v2")


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_has_table_looks_in_the_store_s_schema(backend: str, engine_for: Any) -> None:
    engine = engine_for(LIVE_URLS[backend])
    table = unique_table_name()  # a name of its own: other suites may run beside this one
    with scratch_schema(engine) as schema:
        store = SessionStore(engine=engine, table_name=table, schema=schema)
        assert not store.has_table()
        store.create_table()
        assert store.has_table()
        assert not SessionStore(engine=engine, table_name=table, create_table=False).has_table()


def test_hot_statements_run_on_the_driver_s_cursor_and_the_store_s_hook_sees_each(
    make_store: MakeStore,
) -> None:
    # The request path's single statements skip SQLAlchemy's execution path (driver.py):
    # its cursor events see none of them; store.on_statement sees every one.
    store = make_store()
    store.create_table()
    core: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda _c, _cu, statement, *_a: core.append(statement)
    )
    seen: list[str] = []
    stop = store.on_statement(lambda statement, _parameters: seen.append(statement))
    sid = generate_sid()
    store.set(sid, {"a": 1}, at(60))
    assert store.load(sid) is not None
    store.destroy(sid)
    stop()
    assert core == []
    assert [statement.split()[0].upper() for statement in seen] == ["INSERT", "SELECT", "DELETE"]


def test_an_engine_without_a_url_is_the_default_sqlite_file_in_the_working_directory(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    engine = create_engine()
    try:
        assert engine.url.render_as_string() == "sqlite:///wsgi_dbsession.sqlite"
    finally:
        engine.dispose()
