"""Does finding a user's sessions cost more on a million sessions than on a thousand? (issue 15)

``python -m benchmarks.user_lookup [--url URL] [--small N] [--big N] [--lookups N]``

Two tables of live sessions (PostgreSQL by default), each with the user
index of ``user_key="passport.user"``, filled server-side by
``generate_series`` (five sessions per user, express-session's JSON) and
ANALYZEd. Each lookup is ``SessionStore.user_sessions(user)`` for a random
user, alternating between the tables so both see the same machine; the
report is the median and the ratio big/small (issue 15: at most 2x). The
tables are dropped afterwards.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import time

from wsgi_dbsession import SessionStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SESSIONS_PER_USER = 5


def fill(store: SessionStore, rows: int) -> int:
    """``rows`` live sessions, ``SESSIONS_PER_USER`` per user; returns the number of users."""
    users = max(1, rows // SESSIONS_PER_USER)
    table = store.table.name
    with store.engine.connect() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {table} (sid, sess, expired) "
            "SELECT md5(i::text) || i, "
            "json_build_object('cookie', json_build_object('originalMaxAge', 86400000), "
            "'_created', extract(epoch from now()), "
            "'passport', json_build_object('user', 'u' || (i %% %(users)s)))::json, "
            "now() + interval '1 day' FROM generate_series(1, %(rows)s) AS i",
            {"rows": rows, "users": users},
        )
        conn.exec_driver_sql(f"ANALYZE {table}")
        conn.commit()
    return users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_lookup", description=__doc__)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=2_000, help="lookups per table")
    args = parser.parse_args(argv)

    stores = {
        size: SessionStore(
            url=args.url, table_name=f"bench_users_{secrets.token_hex(4)}", user_key="passport.user"
        )
        for size in (args.small, args.big)
    }
    try:
        users = {}
        for size, store in stores.items():
            store.create_table()
            started = time.perf_counter()
            users[size] = fill(store, size)
            print(f"filled {size:,} rows in {time.perf_counter() - started:.1f} s")
        timings: dict[int, list[float]] = {size: [] for size in stores}
        rng = random.Random(15)
        for size, store in stores.items():  # warm up: pool, plan, cache
            for _ in range(50):
                store.user_sessions(f"u{rng.randrange(users[size])}")
        for _ in range(args.lookups):
            for size, store in stores.items():
                user = f"u{rng.randrange(users[size])}"
                started = time.perf_counter()
                found = store.user_sessions(user)
                timings[size].append(time.perf_counter() - started)
                assert len(found) == SESSIONS_PER_USER, (user, len(found))
        medians = {size: statistics.median(values) for size, values in timings.items()}
        print("| rows | median lookup | p90 |")
        print("|---|---|---|")
        for size, values in timings.items():
            p90 = statistics.quantiles(values, n=10)[-1]
            print(f"| {size:,} | {medians[size] * 1e6:.0f} µs | {p90 * 1e6:.0f} µs |")
        ratio = medians[args.big] / medians[args.small]
        print(f"ratio {args.big:,} / {args.small:,} rows: {ratio:.2f}x (issue 15: at most 2x)")
        return 0 if ratio <= 2 else 1
    finally:
        for store in stores.values():
            with store.engine.connect() as conn:
                store.table.drop(conn, checkfirst=True)
                conn.commit()
            store.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
