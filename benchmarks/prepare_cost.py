"""``python -m benchmarks.prepare_cost``: what a PgBouncer-safe PostgreSQL connection costs a read.

psycopg 3 prepares a statement on the server after 5 runs; behind PgBouncer
in transaction mode the URL's ``?prepare_threshold=none`` turns that off
(docs/deployment.md). This times ``store.load`` (one primary-key SELECT on
the driver-cursor path) both ways on a direct connection, in interleaved
rounds in one process, and prints the ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time

from wsgi_dbsession import SessionStore
from wsgi_dbsession.store import utcnow

from .common import SERVER_URLS

SID = "prepare-cost-session-id"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prepare_cost")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loads", type=int, default=500, help="loads per round and setting")
    args = parser.parse_args()
    url = SERVER_URLS["postgresql"]
    settings = {
        "default (prepared after 5 runs)": url,
        "?prepare_threshold=none": f"{url}?prepare_threshold=none",
    }
    stores = {
        name: SessionStore(url=target, table_name="bench_prepare_cost") for name, target in settings.items()
    }
    first = next(iter(stores.values()))
    first.create_table()
    first.set(SID, {"a": 1}, utcnow() + dt.timedelta(hours=1))
    timings: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for _ in range(args.rounds):
            for name, store in stores.items():
                started = time.perf_counter()
                for _ in range(args.loads):
                    store.load(SID)
                timings[name].append((time.perf_counter() - started) / args.loads * 1e6)
    finally:
        first.clear()
        for store in stores.values():
            store.dispose()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"### A read on a direct PostgreSQL connection (median µs over {args.rounds} interleaved rounds)\n")
    print("| psycopg setting | µs per read |\n|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} |")
    default, unprepared = medians.values()
    print(f"\nunprepared ÷ prepared: {unprepared / default:.2f}x")


if __name__ == "__main__":
    main()
