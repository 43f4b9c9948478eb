"""The ``wsgi-dbsession`` command, run as a real process against the live databases."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import LIVE_URLS
from tests.prune_helpers import live_rows, seed
from wsgi_dbsession import SessionStore
from wsgi_dbsession.cli import main
from wsgi_dbsession.prune import PruneLease
from wsgi_dbsession.store import SessionStats

MakeStore = Callable[..., SessionStore]
ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).with_name("wsgi-dbsession")
UNREACHABLE = "postgresql://postgres:hunter2-secret@127.0.0.1:1/test"


def cli(
    *args: str, script: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "wsgi_dbsession"]
    environment = {key: value for key, value in os.environ.items() if key != "WSGI_DBSESSION_URL"}
    return subprocess.run(
        [*command, *args],
        cwd=ROOT,
        env={**environment, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_table_stats_and_prune(db_url: str, table_name: str, make_store: MakeStore) -> None:
    target = ("--url", db_url, "--table", table_name)
    created = cli("create-table", *target, script=True)
    assert created.returncode == 0, created.stderr
    assert f"table {table_name!r} is ready" in created.stdout
    store = make_store(create_table=False)
    assert sa.inspect(store.engine).has_table(table_name)
    live = seed(store, expired=7, live=3)

    stats = cli("stats", *target, "--json", script=True)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout) == {"table": table_name, "live": 3, "expired": 7}

    pruned = cli("prune", *target, "--batch-size", "3", script=True)
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith(f"deleted 7 expired sessions from {table_name!r} in ")
    assert live_rows(store) == live
    assert store.stats() == SessionStats(live=3, expired=0)


def test_prune_does_nothing_while_another_process_holds_the_lock(
    db_url: str, table_name: str, make_store: MakeStore
) -> None:
    store = make_store()
    seed(store, expired=4, live=0)
    lock = PruneLease(store)
    assert lock.try_acquire()
    try:
        pruned = cli("prune", "--url", db_url, "--table", table_name)
    finally:
        lock.release()
    assert pruned.returncode == 0, pruned.stderr
    assert "holds the prune lock" in pruned.stdout and "nothing done" in pruned.stdout
    assert store.count(expired=True) == 4


def test_a_missing_table_is_an_error_that_says_what_to_do(db_url: str, table_name: str) -> None:
    if db_url.startswith("sqlite"):  # a database without the table (a missing file is another error)
        engine = sa.create_engine(db_url)
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TABLE other (x INTEGER)")
        engine.dispose()
    result = cli("prune", "--table", table_name, env={"WSGI_DBSESSION_URL": db_url})
    assert result.returncode == 1
    assert f"there is no table {table_name!r}" in result.stderr
    assert "wsgi-dbsession create-table" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_exits_1_without_the_password() -> None:
    result = cli("prune", "--url", UNREACHABLE)
    assert result.returncode == 1
    assert result.stderr.startswith("wsgi-dbsession: error: ")
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prune",), "give --url or set WSGI_DBSESSION_URL"),
        (("prune", "--url", "not a url"), "--url/--table"),
        (("prune", "--url", "sqlite://", "--batch-size", "0"), "--batch-size must be at least 1"),
        (("vacuum", "--url", "sqlite://"), "invalid choice"),
    ],
)
def test_usage_errors_exit_2(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No database is reached: the parser answers, so in this process.
    monkeypatch.delenv("WSGI_DBSESSION_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_stats_prints_one_line_per_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    assert main(["create-table", "--url", url]) == 0
    store = SessionStore(url=url)
    seed(store, expired=1, live=2)
    store.dispose()
    capsys.readouterr()
    assert main(["stats", "--url", url]) == 0
    assert capsys.readouterr().out == "live 2\nexpired 1\n"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    schema = f"prune_cli_{secrets.token_hex(4)}"
    engine = sa.create_engine(LIVE_URLS["postgresql"].replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def test_schema_and_sid_column_options_on_postgresql(pg_schema: str, table_name: str) -> None:
    url = LIVE_URLS["postgresql"]
    options = ("--url", url, "--schema", pg_schema, "--table", table_name, "--sid-column", "session_id")
    assert cli("create-table", *options).returncode == 0
    store = SessionStore(url=url, schema=pg_schema, table_name=table_name, sid_column="session_id")
    try:
        assert [column["name"] for column in sa.inspect(store.engine).get_columns(table_name, pg_schema)] == [
            "session_id",
            "sess",
            "expired",
        ]
        seed(store, expired=2, live=1)
        # "schema.table" in --table is the same as --schema.
        dotted = ("--url", url, "--table", f"{pg_schema}.{table_name}", "--sid-column", "session_id")
        pruned = cli("prune", *dotted)
        assert pruned.returncode == 0, pruned.stderr
        assert "deleted 2 expired sessions" in pruned.stdout
        assert store.stats().live == 1
    finally:
        store.dispose()


@pytest.mark.parametrize("command", ["stats", "prune"])
def test_a_missing_sqlite_file_is_an_error_and_is_not_created(command: str, tmp_path: Path) -> None:
    typo = tmp_path / "typo.sqlite"
    result = cli(command, "--url", f"sqlite:///{typo}")
    assert result.returncode == 1, result.stderr
    assert f"no such database file: {typo}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not typo.exists()
    assert not list(tmp_path.iterdir())  # nor its -wal or -shm files


def test_create_table_creates_a_missing_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    result = cli("create-table", "--url", f"sqlite:///{path}")
    assert result.returncode == 0, result.stderr
    assert path.exists()
    assert cli("stats", "--url", f"sqlite:///{path}").returncode == 0
