"""``wsgi-dbsession check`` on a healthy table and on each broken shape, and ``create-table`` repairing it.

Everything runs the real command in a subprocess against the live databases;
the store's first use of another package's table is tested here too (the same
inspection).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webtest
from sqlalchemy.schema import DropIndex

from conftest import SECRET, drop_table
from tests.cli_helpers import cli
from wsgi_dbsession import SessionMiddleware, SessionStore
from wsgi_dbsession.dialects import user_index_name
from wsgi_dbsession.exceptions import StoreError
from wsgi_dbsession.prune import PruneLease

USER_KEY = "passport.user"
ITEMS = [
    "table",
    "columns",
    "sess type (JSON)",
    "expired type",
    "expiry index",
    "lease table '{table}_lease'",
    f"user index ({USER_KEY})",
]
# The table Flask-Session 0.8's SQLAlchemy backend creates.
FLASK_SESSION_TABLE = (
    "CREATE TABLE {table} (id INTEGER PRIMARY KEY, session_id VARCHAR(255), data TEXT, expiry TIMESTAMP)"
)


@pytest.fixture
def make(db_url: str, table_name: str) -> Iterator[Callable[..., SessionStore]]:
    """Stores on this test's table; the table and its lease table are dropped afterwards."""
    stores: list[SessionStore] = []

    def build(**options: object) -> SessionStore:
        store = SessionStore(url=db_url, table_name=table_name, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield build
    for store in stores:
        drop_table(store.engine, PruneLease(store).table)
        drop_table(store.engine, store.table)
        store.dispose()


def created(store: SessionStore) -> SessionStore:
    """``store`` with its table as create-table makes it: indexes and the lease table."""
    store.create_table()
    store.create(PruneLease(store).table)
    return store


@pytest.fixture
def healthy(make: Callable[..., SessionStore]) -> SessionStore:
    return created(make(user_key=USER_KEY))


def target(store: SessionStore, *more: str) -> tuple[str, ...]:
    return (
        "--url",
        store.engine.url.render_as_string(hide_password=False),
        "--table",
        store.table.name,
        *more,
    )


def check(store: SessionStore, *more: str) -> tuple[int, dict[str, dict[str, object]]]:
    result = cli("check", *target(store, "--json", *more))
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is (result.returncode == 0)
    return result.returncode, {item["item"]: item for item in report["items"]}


def execute(store: SessionStore, sql: str | sa.Executable) -> None:
    with store.engine.connect() as conn:
        conn.execute(sa.text(sql) if isinstance(sql, str) else sql)
        conn.commit()


def test_a_healthy_table_is_ok_item_by_item(healthy: SessionStore) -> None:
    status, items = check(healthy, "--user-key", USER_KEY)
    assert status == 0
    assert list(items) == [item.format(table=healthy.table.name) for item in ITEMS]
    assert all(item["ok"] and item["problem"] is None for item in items.values())

    text = cli("check", *target(healthy))  # without --user-key: no user index item; text output
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0] == "OK    table"
    assert "user index" not in text.stdout


def drop_expiry_index(store: SessionStore) -> None:
    execute(store, DropIndex(sa.Index(f"{store.table.name}_expired_index", store.table.c.expired)))


def drop_user_index(store: SessionStore) -> None:
    execute(store, DropIndex(sa.Index(user_index_name(store.table), store.table.c.sess)))


def drop_lease_table(store: SessionStore) -> None:
    drop_table(store.engine, PruneLease(store).table)


# slow: two console-script processes per missing item and database; once per CI run
# (test_cli.py runs the commands on every Python)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("item", "breaks"),
    [
        ("expiry index", drop_expiry_index),
        ("lease table '{table}_lease'", drop_lease_table),
        (f"user index ({USER_KEY})", drop_user_index),
    ],
)
def test_create_table_adds_what_check_finds_missing(
    healthy: SessionStore, item: str, breaks: Callable[[SessionStore], None]
) -> None:
    item = item.format(table=healthy.table.name)
    breaks(healthy)
    status, items = check(healthy, "--user-key", USER_KEY)
    assert status == 1
    assert [name for name, found in items.items() if not found["ok"]] == [item]
    command = items[item]["fix"]
    assert isinstance(command, str) and command.startswith("wsgi-dbsession create-table --url ")

    repaired = cli("create-table", *target(healthy, "--user-key", USER_KEY))
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stdout.strip() == f"table {healthy.table.name!r} is ready (added: {item})"
    assert check(healthy, "--user-key", USER_KEY)[0] == 0
    again = cli("create-table", *target(healthy, "--user-key", USER_KEY))  # idempotent
    assert again.returncode == 0 and again.stdout.strip() == f"table {healthy.table.name!r} is ready"


# Column types a hand-made table may have, per database, and the item that names each.
WRONG_TYPES = {
    "postgresql": [
        ("sess type (JSON)", "ALTER TABLE {table} ALTER COLUMN sess TYPE jsonb"),
        ("sess type (JSON)", "ALTER TABLE {table} ALTER COLUMN sess TYPE text"),
        ("expired type", "ALTER TABLE {table} ALTER COLUMN expired TYPE timestamp"),
    ],
    "mariadb": [
        ("sess type (JSON)", "ALTER TABLE {table} MODIFY sess VARCHAR(2000) NOT NULL"),
        ("expired type", "ALTER TABLE {table} MODIFY expired TIMESTAMP NOT NULL"),
    ],
}


@pytest.mark.parametrize("case", range(3))
def test_a_wrong_column_type_is_named_with_the_sql_that_fixes_it(
    backend: str, make: Callable[..., SessionStore], case: int
) -> None:
    healthy = created(make())  # no user index: on PostgreSQL it needs sess to be json
    cases = WRONG_TYPES.get(backend, [])
    if case >= len(cases):
        pytest.skip(f"{backend} has {len(cases)} wrong types to try" + (" (it takes any type)" * (not cases)))
    item, alter = cases[case]
    execute(healthy, alter.format(table=healthy.table.name))
    status, items = check(healthy)
    assert status == 1
    assert [name for name, found in items.items() if not found["ok"]] == [item]
    fix = items[item]["fix"]
    assert isinstance(fix, str)
    execute(healthy, fix)  # the printed SQL, run as printed
    assert check(healthy)[0] == 0


def test_a_missing_table_is_the_one_finding(make: Callable[..., SessionStore], db_url: str) -> None:
    store = make()
    store.engine.connect().close()  # SQLite: the file exists (a missing file is another error)
    result = cli("check", "--url", db_url, "--table", store.table.name)
    assert result.returncode == 1
    create = f"wsgi-dbsession create-table --url {sa.make_url(db_url).render_as_string()}"
    assert result.stdout.splitlines() == [
        f"FAIL  table: there is no table {store.table.name!r}",
        f"      fix: {create} --table {store.table.name}",
    ]


@pytest.fixture
def flask_session_table(make: Callable[..., SessionStore]) -> SessionStore:
    """A store named after a table Flask-Session made."""
    store = make(create_table=False)
    execute(store, FLASK_SESSION_TABLE.format(table=store.table.name))
    return store


# slow: every command as a process on every database; once per CI run
@pytest.mark.slow
def test_another_packages_table_is_named_by_check_and_every_command(
    flask_session_table: SessionStore,
) -> None:
    status, items = check(flask_session_table)
    assert status == 1
    assert list(items) == ["table", "columns"]
    assert "it is a Flask-Session table" in str(items["columns"]["problem"])
    assert "another table name" in str(items["columns"]["fix"])
    for command in ("stats", "prune", "create-table"):
        result = cli(command, *target(flask_session_table))
        assert result.returncode == 1, (command, result.stderr)
        assert "is not usable: it has no column 'sid', 'sess', 'expired': it is a Flask-Session table" in (
            result.stderr
        ), (command, result.stderr)
        assert "Traceback" not in result.stderr


def test_the_store_names_another_packages_table_on_first_use(
    make: Callable[..., SessionStore], flask_session_table: SessionStore
) -> None:
    store = make()  # create_table=True: the app default
    for _ in range(2):  # the same clear error each time, not "column sid does not exist"
        with pytest.raises(StoreError, match="it is a Flask-Session table") as raised:
            store.get("some-sid")
        assert "another table name" in str(raised.value)


def test_a_request_on_another_packages_table_is_a_500_that_names_it(
    make: Callable[..., SessionStore], flask_session_table: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["dbsession"]["user"] = "ann"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"saved"]

    url = flask_session_table.engine.url.render_as_string(hide_password=False)
    middleware = SessionMiddleware(
        app, secret=SECRET, url=url, table_name=flask_session_table.table.name, cleanup_interval=0
    )
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_dbsession"):
            response = webtest.TestApp(middleware).get("/", expect_errors=True)
        assert response.status_int == 500  # a mistake, not the unavailable status of an outage
        (record,) = [r for r in caplog.records if r.exc_info]
        assert "it is a Flask-Session table" in str(record.exc_info[1])  # type: ignore[index]
    finally:
        middleware.close()


@pytest.mark.parametrize(
    ("owner", "ddl"),
    [
        (
            "Beaker",
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, namespace VARCHAR(255), accessed TIMESTAMP, "
            "created TIMESTAMP, data BLOB)",
        ),
        (
            "Django",
            "CREATE TABLE {table} (session_key VARCHAR(40) PRIMARY KEY, session_data TEXT, "
            "expire_date TIMESTAMP)",
        ),
    ],
)
def test_beaker_and_django_tables_are_named_too(owner: str, ddl: str, tmp_path: Path) -> None:
    store = SessionStore(url=f"sqlite:///{tmp_path / 's.sqlite'}", table_name="sessions")
    try:
        execute(store, ddl.format(table="sessions"))
        with pytest.raises(StoreError, match=f"it is a {owner} table"):
            store.get("some-sid")
    finally:
        store.dispose()
