"""Helpers of the database tests, and the code they run in other processes.

Kept apart from the test modules so a spawned child imports only the package,
not pytest and the fixtures.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from wsgi_dbsession import SessionStore, create_engine
from wsgi_dbsession.express import UTC

UPSERT_THREADS = 10
UPSERTS_PER_THREAD = 50
SHARED_SID = "shared"

# What a DBA or a driver might set on every connection: a session time zone
# that is neither UTC nor the process's.
SESSION_TIME_ZONES = {
    "postgresql": "SET TIME ZONE 'America/New_York'",
    "mariadb": "SET time_zone = '-07:00'",
}
SHOW_TIME_ZONE = {
    "postgresql": "SELECT current_setting('TimeZone')",
    "mariadb": "SELECT @@session.time_zone",
}
# The ``expired`` column as the database holds it, in UTC, as text.
RAW_EXPIRED = {
    "postgresql": "to_char(expired AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
    "mariadb": "CAST(expired AS CHAR)",
    "sqlite": "expired",
    "mssql": "CONVERT(VARCHAR(27), expired, 121)",
}


def server_connection_id(dbapi_connection: Any) -> int:
    """The server's id for a driver connection, known since the handshake (no query)."""
    info = getattr(dbapi_connection, "info", None)
    if info is not None and hasattr(info, "backend_pid"):  # psycopg
        return int(info.backend_pid)
    return int(dbapi_connection.thread_id())  # PyMySQL


def exercise(store: SessionStore) -> None:
    """Every statement the store sends, once, on a key that needs escaping too."""
    sid, expires = "a'b\"c", dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(seconds=60)
    store.set(sid, {"n": 1}, expires)
    store.set(sid, {"n": 2}, expires)
    assert store.get(sid) == {"n": 2}
    stored = store.load(sid)
    assert stored is not None
    assert store.replace(sid, '{"n":3}', expires, expected=stored.text)
    assert not store.replace(sid, '{"n":9}', expires, expected=stored.text)
    assert store.rename(sid, "renamed", '{"n":4}', expires)
    assert store.touch("renamed", dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(seconds=120))
    assert store.get("renamed") == {"n": 4}
    assert store.count() == 1
    store.destroy("renamed")
    assert store.count() == 0


def create_table_at_once(url: str, table_name: str, barrier: Any, results: Any) -> None:
    """Connect first, then create the table at the same moment as the other workers.

    Reports any failed CREATE, including one the store caught and recovered from.
    """
    errors: list[str] = []
    try:
        store = SessionStore(url=url, table_name=table_name)

        @sa.event.listens_for(store.engine, "handle_error")
        def record(context: Any) -> None:
            # Only CREATE counts: MySQL's has_table probes with a statement that may fail.
            if (context.statement or "").lstrip().upper().startswith("CREATE"):
                errors.append(repr(context.original_exception))

        with store.engine.connect():
            pass
        barrier.wait(timeout=60)
        store.create_table()
        store.dispose()
    except BaseException:
        errors.append(traceback.format_exc())
    results.put(errors)


def upsert_many(url: str, table_name: str, worker: int, barrier: Any, results: Any) -> None:
    """Threads that alternate between one id everybody writes and an id of their own."""
    store = SessionStore(url=url, table_name=table_name, create_table=False)
    expires = dt.datetime.now(UTC) + dt.timedelta(hours=1)
    start = threading.Barrier(UPSERT_THREADS)

    def run(thread: int) -> list[str]:
        errors = []
        start.wait(timeout=60)
        for i in range(UPSERTS_PER_THREAD):
            writer = f"{worker}-{thread}-{i}"
            sid = SHARED_SID if i % 2 == 0 else f"own-{worker}-{thread}"
            try:
                store.set(sid, {"writer": writer, "i": i}, expires)
            except Exception as exc:
                errors.append(f"{writer}: {exc!r}")
        return errors

    try:
        barrier.wait(timeout=60)
        with ThreadPoolExecutor(UPSERT_THREADS) as pool:
            errors = [error for found in pool.map(run, range(UPSERT_THREADS)) for error in found]
        store.dispose()
        results.put(errors)
    except BaseException:
        results.put([traceback.format_exc()])


def expiry_in_time_zones(backend: str, url: str, table_name: str) -> dict[str, Any]:
    """Write and read expiries here (this process has TZ set) and report what the database holds."""
    engine = create_engine(url)
    if backend in SESSION_TIME_ZONES:

        @sa.event.listens_for(engine, "connect")
        def set_session_time_zone(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(SESSION_TIME_ZONES[backend])
            cursor.close()

    store = SessionStore(engine=engine, table_name=table_name)
    second = dt.timedelta(seconds=1)
    expires = (dt.datetime.now(UTC) + dt.timedelta(hours=3)).replace(microsecond=0)
    store.set("boundary", {"x": 1}, expires)
    # A fraction of a second is dropped, never rounded up, where the column keeps whole seconds.
    store.set("fraction", {"x": 1}, expires + dt.timedelta(microseconds=999_999))
    # Live for minutes, expired for minutes: a time zone mistake shifts expiries by
    # hours (30 minutes at least) and flips one of them, while a loaded machine's
    # seconds between these statements and the reads below flip neither.
    store.set("soon", {"x": 1}, dt.datetime.now(UTC) + dt.timedelta(minutes=10))
    store.set("past", {"x": 1}, dt.datetime.now(UTC) - dt.timedelta(minutes=10))
    table = store.engine.dialect.identifier_preparer.format_table(store.table)
    with engine.connect() as conn:
        raw = {
            sid: conn.execute(
                sa.text(f"SELECT {RAW_EXPIRED[backend]} FROM {table} WHERE sid = :sid"), {"sid": sid}
            ).scalar_one()
            for sid in ("boundary", "fraction")
        }
        session_zone = (
            conn.execute(sa.text(SHOW_TIME_ZONE[backend])).scalar_one() if backend in SHOW_TIME_ZONE else None
        )
    loaded = store.load("boundary", expires)
    report = {
        "process_utc_offset": time.localtime().tm_gmtoff,
        "session_zone": session_zone,
        "expires": expires.isoformat(),
        "raw": raw,
        "loaded_expires": loaded.expires.isoformat() if loaded else None,
        "fraction_expires": store.load("fraction", expires - second).expires.isoformat(),  # type: ignore[union-attr]
        "live_a_second_before": store.load("boundary", expires - second) is not None,
        "live_at_expiry": loaded is not None,
        "live_a_second_after": store.load("boundary", expires + second) is not None,
        "expired_count_at_expiry": store.count(expired=True, now=expires),
        "expired_count_after": store.count(expired=True, now=expires + second),
        "soon_is_live": store.load("soon") is not None,
        "past_is_live": store.load("past") is not None,
    }
    with engine.connect() as conn:
        store.table.drop(conn)
        conn.commit()
    engine.dispose()
    return report


if __name__ == "__main__":
    print(json.dumps(expiry_in_time_zones(*sys.argv[1:4])))
