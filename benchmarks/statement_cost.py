"""``python -m benchmarks.statement_cost``: what one session read costs on each way to send it.

The store's read (a primary-key ``SELECT`` with the expiry checked in SQL)
sent four ways on the same pooled engine, in interleaved rounds in one
process: through the store's hot path (``wsgi_dbsession/driver.py``: SQL
compiled once, the DBAPI cursor of the connection the thread keeps), the
same with the connection given back to the pool each time, through Core's
``Connection.execute`` (with its compiled cache) and through
``Connection.exec_driver_sql`` with the same SQL text compiled once. Each
includes the pool checkout, the fetch and the return, and is timed as CPU
of this process (``time.process_time``) and as wall-clock time. The ratios
against the hot path are what decided it (docs/architecture.md, Statements).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from wsgi_dbsession import SessionStore
from wsgi_dbsession.cookies import generate_sid
from wsgi_dbsession.dialects import ExpiryTimestamp
from wsgi_dbsession.driver import Prepared
from wsgi_dbsession.statements import needs_commit
from wsgi_dbsession.store import utcnow

from .common import (
    BACKENDS,
    database_url,
    drop_tables,
    fmt_ratio,
    fmt_us,
    markdown_table,
    median,
    unique_table_name,
)


def ways(store: SessionStore, sid: str) -> dict[str, Callable[[], Any]]:
    """The same read, the same SQL and parameters, sent each way; every one returns the row."""
    engine, columns = store.engine, store.columns
    live = (columns.sid == sa.bindparam("sid")) & (
        columns.expired >= sa.bindparam("now", type_=ExpiryTimestamp())
    )
    statement = sa.select(columns.sess, columns.expired).where(live)
    prepared = Prepared(statement, "load")
    params = {"sid": sid, "now": utcnow()}
    compiled = prepared.compiled(engine.dialect)
    sql, parameters = compiled.sql, compiled.parameters(params)

    def on_a_connection(send: Callable[[Connection], Any]) -> Callable[[], Any]:
        def read() -> Any:
            with engine.connect() as conn:
                row = send(conn).first()
                if needs_commit(engine.dialect, conn.connection.dbapi_connection):  # as the hot path
                    conn.commit()
                return row

        return read

    def hot_checked_out() -> Any:
        row = store.runner.first(prepared, params)
        store.release_connection()  # back to the pool: a checkout each time, as Core's
        return row

    return {
        "hot path (driver.py)": lambda: store.runner.first(prepared, params),
        "hot path, checkout each time": hot_checked_out,
        "Connection.execute (Core)": on_a_connection(lambda conn: conn.execute(statement, params)),
        "Connection.exec_driver_sql": on_a_connection(lambda conn: conn.exec_driver_sql(sql, parameters)),
    }


def measure(backend: str, workdir: Path, rounds: int, reads: int) -> list[list[object]]:
    url, table = database_url(backend, workdir), unique_table_name("bench_statement")
    store = SessionStore(url=url, table_name=table)
    try:
        store.create_table()
        sid = generate_sid()
        store.set(sid, {"user": "ann"}, utcnow() + dt.timedelta(hours=1))
        sent = ways(store, sid)
        cpu: dict[str, list[float]] = {name: [] for name in sent}
        wall: dict[str, list[float]] = {name: [] for name in sent}
        for name, send in sent.items():
            assert send() is not None, f"{name} found no row"
        for _ in range(rounds):
            for name, send in sent.items():
                started_cpu, started = time.process_time(), time.perf_counter()
                for _ in range(reads):
                    send()
                cpu[name].append((time.process_time() - started_cpu) / reads * 1e6)
                wall[name].append((time.perf_counter() - started) / reads * 1e6)
    finally:
        store.dispose()
        drop_tables(url, [table])
    base_cpu, base_wall = (median(values) for values in (cpu[next(iter(sent))], wall[next(iter(sent))]))
    return [
        [
            backend,
            name,
            fmt_us(median(cpu[name])),
            fmt_ratio(median(cpu[name]) / base_cpu),
            fmt_us(median(wall[name])),
            fmt_ratio(median(wall[name]) / base_wall),
        ]
        for name in sent
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.statement_cost", description=__doc__)
    parser.add_argument("--databases", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reads", type=int, default=1000, help="reads per round and way")
    args = parser.parse_args()
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="wsgi_dbsession-bench-") as tmp:
        for backend in args.databases:
            rows += measure(backend, Path(tmp), args.rounds, args.reads)
    print(f"### One session read, sent four ways (median over {args.rounds} interleaved rounds)\n")
    headers = ["database", "way", "CPU µs", "CPU ÷ hot path", "wall µs", "wall ÷ hot path"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
