"""The ``wsgi-dbsession`` command, run as a real process against the live databases."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import LIVE_URLS
from tests.cli_helpers import ROOT, cli
from tests.prune_helpers import live_rows, seed
from wsgi_dbsession import SessionStore, __version__
from wsgi_dbsession.cli import ExitStatus, main
from wsgi_dbsession.prune import PruneLease
from wsgi_dbsession.store import SessionStats, utcnow

MakeStore = Callable[..., SessionStore]
UNREACHABLE = "postgresql://postgres:hunter2-secret@127.0.0.1:1/test"


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
    # The URL from the environment stays there: the hint repeats only what was typed.
    result = cli("prune", "--table", table_name, env={"WSGI_DBSESSION_URL": db_url})
    assert result.returncode == ExitStatus.TABLE == 1
    assert f"there is no table {table_name!r} in " in result.stderr
    assert result.stderr.rstrip().endswith(
        f"create it with: wsgi-dbsession create-table --table {table_name}"
    )
    assert "Traceback" not in result.stderr


def test_the_hint_repeats_the_options_given_without_the_password(table_name: str) -> None:
    url = LIVE_URLS["mariadb"].replace("root@", "root:@")  # an empty password, still hidden
    result = cli("stats", "--url", url, "--table", table_name, "--sid-column", "id")
    assert result.returncode == ExitStatus.TABLE, result.stderr
    typed = f"--url {sa.make_url(url).render_as_string()} --table {table_name} --sid-column id"
    assert "***" in typed
    assert result.stderr.rstrip().endswith(f"create it with: wsgi-dbsession create-table {typed}")


# A wrong password, a wrong database name and a closed port: each its own message and status.
# PostgreSQL here trusts every local connection (it never refuses a password), so its
# refused login is a user the server does not know: the same refusal, the same message.
WRONG = {
    "postgresql": {
        "credentials": "postgresql://nobody:wrong-secret@127.0.0.1:5432/test",
        "database": "postgresql://postgres@127.0.0.1:5432/no_such_db",
        "closed port": "postgresql://postgres:wrong-secret@127.0.0.1:1/test",
    },
    "mariadb": {
        "credentials": "mysql://root:wrong-secret@127.0.0.1:3306/test",
        "database": "mysql://root@127.0.0.1:3306/no_such_db",
        "closed port": "mysql://root:wrong-secret@127.0.0.1:1/test",
    },
}
EXPECTED = {
    "credentials": (
        ExitStatus.REFUSED,
        "refused the configured credentials; check the url's user and password",
    ),
    "database": (ExitStatus.REFUSED, "the session database does not exist; check the url's database name"),
    "closed port": (ExitStatus.UNREACHABLE, "cannot reach the database at 127.0.0.1:1 "),
}


@pytest.mark.slow
@pytest.mark.parametrize("cause", list(EXPECTED))
@pytest.mark.parametrize("server", list(WRONG))
@pytest.mark.parametrize("command", [("stats",), ("prune",), ("check",), ("logout-user", "--user", "u")])
def test_each_connection_problem_has_its_own_message_and_exit_status(
    server: str, cause: str, command: tuple[str, ...]
) -> None:
    status, message = EXPECTED[cause]
    user_key = ("--user-key", "id") if command[0] == "logout-user" else ()
    result = cli(*command, *user_key, "--url", WRONG[server][cause])
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("wsgi-dbsession: error: ")
    assert message in result.stderr
    assert "no table" not in result.stderr and "create-table" not in result.stderr
    assert "wrong-secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_sqlite_names_a_missing_file_a_missing_schema_and_a_missing_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    no_file = cli("stats", "--url", url)
    assert no_file.returncode == ExitStatus.REFUSED, no_file.stderr
    assert "no such database file" in no_file.stderr
    assert cli("create-table", "--url", url).returncode == 0
    no_schema = cli("stats", "--url", url, "--table", "other.sessions")
    assert no_schema.returncode == ExitStatus.REFUSED, no_schema.stderr
    assert "there is no schema 'other'" in no_schema.stderr
    no_table = cli("stats", "--url", url, "--table", "web_sessions")
    assert no_table.returncode == ExitStatus.TABLE, no_table.stderr
    assert "there is no table 'web_sessions'" in no_table.stderr


def test_a_missing_driver_exits_4_with_its_install_line() -> None:
    result = cli("stats", "--url", "mysql+mysqldb://root@127.0.0.1/test")
    assert result.returncode == ExitStatus.REFUSED, result.stderr
    assert "is not installed" in result.stderr and "pip install 'wsgi_dbsession[mysql]'" in result.stderr


def test_the_exit_status_table_of_the_docs_is_the_command_s() -> None:
    text = (ROOT / "docs" / "pruning.md").read_text()
    documented = dict(re.findall(r"^\| `(\d)` \| `(\w+)` \|", text, re.MULTILINE))
    assert documented == {str(status.value): status.name for status in ExitStatus}


def test_an_unreachable_database_exits_3_without_the_password() -> None:
    result = cli("prune", "--url", UNREACHABLE)
    assert result.returncode == ExitStatus.UNREACHABLE
    assert result.stderr.startswith("wsgi-dbsession: error: cannot reach the database at 127.0.0.1:1 ")
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prune",), "give --url or set WSGI_DBSESSION_URL"),
        (("prune", "--url", "not a url"), "--url/--table"),
        (
            ("prune", "--url", "sqlite://", "--batch-size", "0"),
            "--batch-size: must be a positive number of rows",
        ),
        (("prune", "--url", "sqlite://", "--user-key", "id"), "unrecognized arguments: --user-key"),
        (("stats", "--url", "sqlite://", "--user-key", "id"), "unrecognized arguments: --user-key"),
        (
            ("sessions", "--url", "sqlite://", "--user-key", "id"),
            "the following arguments are required: --user",
        ),
        (("logout-user", "--url", "sqlite://", "--user", "u"), "required: --user-key"),
        (("logout-user", "--url", "sqlite://", "--user-key", "a;b", "--user", "u"), "user_key"),
    ],
)
def test_usage_errors_exit_2_with_the_command_s_usage(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No database is reached: the parser answers, so in this process.
    monkeypatch.delenv("WSGI_DBSESSION_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    assert exited.value.code == ExitStatus.USAGE == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith(f"usage: wsgi-dbsession {args[0]} ")


def test_version_and_help_through_the_console_script() -> None:
    version = cli("--version", script=True)
    assert version.returncode == 0 and version.stdout.strip() == f"wsgi-dbsession {__version__}"
    top_help = " ".join(cli("--help", script=True).stdout.split())
    assert "exit status: 0 ok, 1 table, 2 usage, 3 unreachable, 4 refused" in top_help
    unknown = cli("vacuum", script=True)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    prune_help = cli("prune", "--help", script=True).stdout
    assert "(default: 1000)" in prune_help and "(default: sid)" in prune_help
    assert "$WSGI_DBSESSION_URL" in prune_help and "$WSGI_DBSESSION_TABLE" in prune_help
    assert "--user-key" not in prune_help  # options only where they act
    assert "--user-key" in cli("check", "--help", script=True).stdout


def test_the_table_may_come_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    env = {"WSGI_DBSESSION_URL": url, "WSGI_DBSESSION_TABLE": "web_sessions"}
    assert cli("create-table", env=env).stdout.strip() == "table 'web_sessions' is ready"
    stats = cli("stats", "--json", env=env)
    assert json.loads(stats.stdout) == {"table": "web_sessions", "live": 0, "expired": 0}
    assert cli("stats", "--table", "other", env=env).returncode == ExitStatus.TABLE  # the option wins


def test_every_command_prints_one_json_object(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    key = ("--user-key", "user_id")
    created = json.loads(cli("create-table", "--url", url, *key, "--json").stdout)
    assert created == {"table": "sessions", "ready": True, "repaired": []}
    store = SessionStore(url=url, user_key="user_id")
    try:
        seed(store, expired=2, live=0)
        store.set("sid-of-ann", {"user_id": "ann"}, dt_in_a_day())
        checked = json.loads(cli("check", "--url", url, *key, "--json").stdout)
        assert checked["ok"] is True and len(checked["items"]) == 7
        stats = json.loads(cli("stats", "--url", url, "--json").stdout)
        assert stats == {"table": "sessions", "live": 1, "expired": 2}
        listed = json.loads(cli("sessions", "--url", url, *key, "--user", "ann", "--json").stdout)
        assert listed["user"] == "ann" and [s["handle"] for s in listed["sessions"]] == [
            s.handle for s in store.user_sessions("ann")
        ]
        pruned = json.loads(cli("prune", "--url", url, "--json").stdout)
        assert pruned["deleted"] == 2 and pruned["held_elsewhere"] is False and pruned["seconds"] >= 0
        out = json.loads(cli("logout-user", "--url", url, *key, "--user", "ann", "--json").stdout)
        assert out == {"table": "sessions", "user": "ann", "deleted": 1}
        failed = cli("stats", "--url", url, "--table", "nope", "--json")
        assert json.loads(failed.stdout) == {
            "ok": False,
            "error": failed.stderr.removeprefix("wsgi-dbsession: error: ").strip(),
            "exit_status": 1,
        }
    finally:
        store.dispose()


def dt_in_a_day() -> dt.datetime:
    return utcnow() + dt.timedelta(days=1)


def test_a_prune_on_a_terminal_shows_its_progress_and_is_quiet_elsewhere(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    store = SessionStore(url=url)
    seed(store, expired=25, live=0)
    store.dispose()
    args = [sys.executable, "-m", "wsgi_dbsession", "prune", "--url", url, "--batch-size", "10"]
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            args, stderr=terminal, stdout=subprocess.PIPE, text=True, timeout=60, check=False
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert done.stdout.startswith("deleted 25 expired sessions from 'sessions' in ")
    progress = shown.decode().replace("\r\n", "\n")
    assert "\rdeleted 10 expired sessions so far" in progress and "\rdeleted 20 expired" in progress
    assert "\rdeleted 25 expired sessions so far\n" in progress

    store = SessionStore(url=url)
    seed(store, expired=25, live=0)
    store.dispose()
    quiet = cli("prune", "--url", url, "--batch-size", "10")  # stderr is a pipe
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.slow
def test_flask_dbsession_check_and_its_hints_name_the_flask_command(tmp_path: Path) -> None:
    env = {"FLASK_DBSESSION_URL": f"sqlite:///{tmp_path / 's.sqlite'}", "FLASK_DBSESSION_TABLE_NAME": "web"}
    missing = cli("stats", flask=True, env=env)
    assert missing.returncode == ExitStatus.TABLE, missing.stderr
    assert missing.stderr.startswith("flask dbsession: error: there is no table 'web' in ")
    assert missing.stderr.rstrip().endswith("create it with: flask dbsession create-table")
    unchecked = cli("check", flask=True, env=env)
    assert unchecked.returncode == ExitStatus.TABLE
    assert unchecked.stdout.splitlines()[1] == "      fix: flask dbsession create-table"
    assert cli("create-table", flask=True, env=env).returncode == 0
    checked = cli("check", "--json", flask=True, env=env)
    assert checked.returncode == 0, checked.stdout
    assert json.loads(checked.stdout)["ok"] is True

    down = cli("prune", flask=True, env={**env, "FLASK_DBSESSION_URL": WRONG["mariadb"]["closed port"]})
    assert down.returncode == ExitStatus.UNREACHABLE, down.stderr
    assert down.stderr.startswith("flask dbsession: error: cannot reach the database at 127.0.0.1:1 ")
    assert "wrong-secret" not in down.stderr and "Traceback" not in down.stderr


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
    assert result.returncode == ExitStatus.REFUSED, result.stderr
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
