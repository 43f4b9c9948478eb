"""What differs per database, checked on the live servers.

The table's exact shape (read back from the catalog), quoted and
schema-qualified names, table creation racing across processes, upserts from
many processes and threads, time zones that are not UTC, and the retry after
the server killed a pooled connection.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conftest import LIVE_URLS, drop_table
from tests import db_workers
from tests.apps import session_app
from tests.schema_helpers import scratch_schema
from wsgi_dbsession import SessionStore, create_engine
from wsgi_dbsession.express import UTC, to_iso_z

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ["postgresql", "mariadb"]
# spawn, not fork: the children must not inherit pytest's pooled connections or threads.
SPAWN = multiprocessing.get_context("spawn")


def whole_second(offset: float = 0) -> dt.datetime:
    """A moment with no fraction of a second, which every column type keeps exactly."""
    return (dt.datetime.now(UTC) + dt.timedelta(seconds=offset)).replace(microsecond=0)


# -- the table's shape ---------------------------------------------------------


def pg_columns(conn: sa.Connection, schema: str, table: str) -> dict[str, tuple[str, int | None, str]]:
    rows = conn.execute(
        sa.text(
            "SELECT column_name, data_type, character_maximum_length, is_nullable "
            "FROM information_schema.columns WHERE table_schema = :schema AND table_name = :table"
        ),
        {"schema": schema, "table": table},
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_postgresql_table_is_the_one_connect_session_knex_creates(engine_for: Any) -> None:
    # The default table name in a schema of its own, so the index name is the seed's.
    engine = engine_for(LIVE_URLS["postgresql"])
    with scratch_schema(engine) as schema:
        store = SessionStore(engine=engine, schema=schema)
        store.create_table()
        with engine.connect() as conn:
            assert pg_columns(conn, schema, "sessions") == {
                "sid": ("character varying", 255, "NO"),
                "sess": ("json", None, "NO"),
                "expired": ("timestamp with time zone", None, "NO"),
            }
            primary_key = conn.execute(
                sa.text(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
                    "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                    "WHERE i.indrelid = CAST(:table AS regclass) AND i.indisprimary"
                ),
                {"table": f'"{schema}".sessions'},
            ).all()
            assert primary_key == [("sid",)]
            indexes = conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :schema"),
                {"schema": schema},
            ).all()
        definitions = dict(indexes)
        assert set(definitions) == {"sessions_pkey", "sessions_expired_index"}
        assert definitions["sessions_expired_index"].endswith("USING btree (expired)")


def test_mariadb_table_matches_design(engine_for: Any, table_name: str) -> None:
    engine = engine_for(LIVE_URLS["mariadb"])
    store = SessionStore(engine=engine, table_name=table_name)
    store.create_table()
    try:
        with engine.connect() as conn:
            columns = conn.execute(
                sa.text(
                    "SELECT column_name, column_type, is_nullable, column_key "
                    "FROM information_schema.columns "
                    "WHERE table_schema = DATABASE() AND table_name = :table ORDER BY ordinal_position"
                ),
                {"table": table_name},
            ).all()
            checks = conn.execute(
                sa.text(
                    "SELECT check_clause FROM information_schema.check_constraints "
                    "WHERE constraint_schema = DATABASE() AND table_name = :table"
                ),
                {"table": table_name},
            ).all()
            indexes = conn.execute(
                sa.text(
                    "SELECT index_name, column_name FROM information_schema.statistics "
                    "WHERE table_schema = DATABASE() AND table_name = :table ORDER BY index_name"
                ),
                {"table": table_name},
            ).all()
        # MariaDB's JSON is LONGTEXT with a json_valid check: what "JSON" means there.
        assert [tuple(row) for row in columns] == [
            ("sid", "varchar(255)", "NO", "PRI"),
            ("sess", "longtext", "NO", ""),
            ("expired", "datetime", "NO", "MUL"),
        ]
        assert [row[0] for row in checks] == ["json_valid(`sess`)"]
        assert [tuple(row) for row in indexes] == [
            ("PRIMARY", "sid"),
            (f"{table_name}_expired_index", "expired"),
        ]
    finally:
        drop_table(engine, store.table)


def test_sqlite_table_matches_design(tmp_path: Path, table_name: str) -> None:
    store = SessionStore(url=f"sqlite:///{tmp_path / 'shape.sqlite'}", table_name=table_name)
    store.create_table()
    try:
        with store.engine.connect() as conn:
            columns = conn.exec_driver_sql(f'PRAGMA table_info("{table_name}")').all()
            indexes = conn.exec_driver_sql(f'PRAGMA index_list("{table_name}")').all()
            indexed = conn.exec_driver_sql(f'PRAGMA index_info("{table_name}_expired_index")').all()
        # (name, declared type, not null, primary key position)
        assert [(c[1], c[2], c[3], c[5]) for c in columns] == [
            ("sid", "VARCHAR(255)", 1, 1),
            ("sess", "JSON", 1, 0),
            ("expired", "timestamp", 1, 0),
        ]
        assert f"{table_name}_expired_index" in {row[1] for row in indexes}
        assert [row[2] for row in indexed] == ["expired"]
    finally:
        store.dispose()


def test_sqlite_file_is_wal_with_synchronous_normal_and_full_can_be_chosen(tmp_path: Path) -> None:
    def pragmas(engine: sa.Engine) -> tuple[Any, ...]:
        with engine.connect() as conn:
            return tuple(
                conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout")
            )

    default = create_engine(f"sqlite:///{tmp_path / 'normal.sqlite'}")
    assert pragmas(default) == ("wal", 1, 5000)  # synchronous 1 is NORMAL
    default.dispose()

    # The recipe of docs/databases.md: a listener added after the package's own runs last.
    full = create_engine(f"sqlite:///{tmp_path / 'full.sqlite'}")

    @sa.event.listens_for(full, "connect")
    def synchronous_full(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=FULL")

    assert pragmas(full) == ("wal", 2, 5000)
    store = SessionStore(engine=full)
    store.set("sid", {"durable": True}, whole_second(60))
    assert store.get("sid") == {"durable": True}
    full.dispose()


# -- names -----------------------------------------------------------------------


def test_quoted_table_and_column_names_work(make_store: Callable[..., SessionStore]) -> None:
    store = make_store(table_name=f"My-Sessions {secrets.token_hex(3)}", sid_column="Session-Id")
    store.create_table()
    db_workers.exercise(store)
    assert sa.inspect(store.engine).has_table(store.table.name)


@pytest.mark.parametrize("backend", SERVERS)
@pytest.mark.parametrize("spelling", ["option", "dotted"])
def test_table_in_another_schema(backend: str, spelling: str, engine_for: Any) -> None:
    engine = engine_for(LIVE_URLS[backend])
    with scratch_schema(engine) as schema:
        table = "Other-Sessions"
        if spelling == "option":
            store = SessionStore(engine=engine, table_name=table, schema=schema)
        else:
            store = SessionStore(engine=engine, table_name=f"{schema}.{table}")
        assert (store.table.schema, store.table.name) == (schema, table)
        store.create_table()
        store.create_table()  # a second start finds it there
        db_workers.exercise(store)
        inspector = sa.inspect(engine)
        assert inspector.has_table(table, schema=schema)
        assert not inspector.has_table(table)
        assert [index["name"] for index in inspector.get_indexes(table, schema=schema)] == [
            f"{table}_expired_index"
        ]


# -- several processes at once -------------------------------------------------------


def run_processes(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[Any]:
    """Start one process per argument tuple, all released together by a barrier."""
    barrier = SPAWN.Barrier(len(args))
    results = SPAWN.Queue()
    processes = [SPAWN.Process(target=target, args=(*arg, barrier, results)) for arg in args]
    for process in processes:
        process.start()
    try:
        return [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)


# slow: starts processes; the database's concurrency, the same on every Python
@pytest.mark.slow
def test_four_processes_creating_the_table_at_once_all_succeed(
    db_url: str, table_name: str, make_store: Callable[..., SessionStore]
) -> None:
    store = make_store(create_table=False)  # only to drop the table afterwards
    errors = run_processes(db_workers.create_table_at_once, [(db_url, table_name)] * 4)
    assert errors == [[]] * 4, "not even a caught error: the creators must not collide"
    indexes = sa.inspect(store.engine).get_indexes(table_name)
    assert [(index["name"], index["column_names"]) for index in indexes] == [
        (f"{table_name}_expired_index", ["expired"])
    ]


# slow: starts processes; the database's concurrency, the same on every Python
@pytest.mark.slow
def test_upserts_from_many_processes_and_threads(db_url: str, store: SessionStore, table_name: str) -> None:
    errors = run_processes(db_workers.upsert_many, [(db_url, table_name, worker) for worker in range(2)])
    assert errors == [[], []]
    table = store.table
    with store.engine.connect() as conn:
        duplicates = conn.execute(
            sa.select(table.c.sid).group_by(table.c.sid).having(sa.func.count() > 1)
        ).all()
    assert duplicates == []
    owners = [(worker, thread) for worker in range(2) for thread in range(db_workers.UPSERT_THREADS)]
    assert store.count() == 1 + len(owners)
    last = db_workers.UPSERTS_PER_THREAD - 1
    for worker, thread in owners:
        # One thread writes its own id in order, so its last write is what stays.
        assert store.get(f"own-{worker}-{thread}") == {"writer": f"{worker}-{thread}-{last}", "i": last}
    shared = store.get(db_workers.SHARED_SID)
    assert shared is not None
    written = {f"{worker}-{thread}-{i}" for worker, thread in owners for i in range(0, last + 1, 2)}
    assert shared["writer"] in written
    assert shared["writer"].endswith(f"-{shared['i']}")


# -- time zones ---------------------------------------------------------------------


def test_expiry_is_exact_whatever_the_process_and_session_time_zones(
    backend: str, db_url: str, table_name: str, engine_for: Any
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.db_workers", backend, db_url, table_name],
        cwd=ROOT,
        env={**os.environ, "TZ": "Asia/Kolkata"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        drop_table(engine_for(db_url), SessionStore(url=db_url, table_name=table_name).table)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    expires = dt.datetime.fromisoformat(report["expires"])
    fraction = expires + dt.timedelta(microseconds=999_999)
    assert report["process_utc_offset"] == 5 * 3600 + 30 * 60  # the TZ really applied
    assert report["session_zone"] == {"postgresql": "America/New_York", "mariadb": "-07:00"}.get(backend)
    stored_as = {
        "postgresql": lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "mariadb": lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S"),
        "sqlite": to_iso_z,
        "mssql": lambda moment: f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}0000",
    }[backend]
    assert report["raw"] == {
        "boundary": stored_as(expires),
        "fraction": stored_as(expires if backend == "mariadb" else fraction),
    }
    assert report["loaded_expires"] == expires.isoformat()
    milliseconds = fraction.replace(microsecond=999_000)
    kept = {"mariadb": expires, "sqlite": milliseconds, "mssql": milliseconds}.get(backend, fraction)
    assert report["fraction_expires"] == kept.isoformat()
    assert report["live_a_second_before"]
    assert report["live_at_expiry"]
    assert not report["live_a_second_after"]
    assert report["expired_count_at_expiry"] == 2  # "soon" and "past"
    assert report["expired_count_after"] == 4
    assert report["soon_is_live"]
    assert not report["past_is_live"]


# -- a connection the server killed ----------------------------------------------------


KILL = {
    "postgresql": "SELECT pg_terminate_backend(:id, 5000)",
    "mariadb": "KILL :id",
}


@pytest.fixture
def pooled_ids() -> Iterator[Callable[[sa.Engine], list[int]]]:
    """The server ids of the connections an engine checked out, oldest first."""
    listeners: list[tuple[sa.Engine, Callable[..., None]]] = []

    def watch(engine: sa.Engine) -> list[int]:
        seen: list[int] = []

        def record(dbapi_connection: Any, *_args: Any) -> None:
            if db_workers.server_connection_id(dbapi_connection) not in seen:
                seen.append(db_workers.server_connection_id(dbapi_connection))

        sa.event.listen(engine, "checkout", record)
        listeners.append((engine, record))
        return seen

    yield watch
    for engine, record in listeners:
        sa.event.remove(engine, "checkout", record)


def kill(backend: str, ids: list[int]) -> None:
    engine = sa.create_engine(create_engine(LIVE_URLS[backend]).url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for server_id in ids:
            conn.execute(sa.text(KILL[backend]), {"id": server_id})
    engine.dispose()


@pytest.mark.parametrize("backend", SERVERS)
def test_store_call_after_the_server_killed_every_pooled_connection_succeeds(
    backend: str,
    make_store: Callable[..., SessionStore],
    pooled_ids: Callable[[sa.Engine], list[int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store()
    store.set("kept", {"n": 1}, whole_second(60))
    store.release_connection()  # back in the pool with the others
    ids = pooled_ids(store.engine)
    with store.engine.connect(), store.engine.connect(), store.engine.connect():
        pass  # three pooled connections, all about to die as in a server restart
    assert len(ids) == 3
    kill(backend, ids)
    caplog.set_level("INFO", logger="wsgi_dbsession.statements")
    assert store.get("kept") == {"n": 1}
    assert caplog.text.count("retrying on a fresh one") == 1
    assert ids[3:] and not set(ids[3:]) & set(ids[:3]), "the retry ran on a new connection"


@pytest.mark.parametrize("backend", SERVERS)
def test_request_after_the_server_killed_its_connection_succeeds(
    backend: str, make_app: Any, pooled_ids: Callable[[sa.Engine], list[int]]
) -> None:
    app, middleware = make_app(session_app)
    ids = pooled_ids(middleware.store.engine)
    assert app.get("/incr").json["data"] == {"count": 1}
    kill(backend, ids)
    assert app.get("/incr").json["data"] == {"count": 2}
