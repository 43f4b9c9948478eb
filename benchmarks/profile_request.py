"""Where wsgi_dbsession spends a request: cProfile over many identical requests.

``python -m benchmarks.profile_request --database sqlite --scenario read``
runs ``--requests`` requests of one scenario through wsgi_dbsession (the
same app and call as the per-request benchmark), first unprofiled to time
them (wall clock and this process's CPU time, beside min's on the same
requests), then under cProfile, and prints the functions with the most time,
per request: ``own`` is time in the function itself, ``total`` includes
what it calls. cProfile slows Python code far more than C code (the driver, json, hmac),
so read the shares and the order, and the unprofiled µs for the real cost.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import systems
from .common import BACKENDS, database_url, drop_tables, unique_table_name
from .request_cost import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_request", description=__doc__)
    parser.add_argument("--database", choices=BACKENDS, default="sqlite")
    parser.add_argument("--scenario", choices=SCENARIOS, default="read")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--top", type=int, default=30, help="rows of the profile to print")
    parser.add_argument("--all", action="store_true", help="every function, not only wsgi_dbsession's")
    parser.add_argument(
        "--profile", choices=("wsgi_dbsession", "min"), default="wsgi_dbsession", help="whose requests"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wsgi_dbsession-profile-") as tmp:
        url = database_url(args.database, Path(tmp))
        tables = [unique_table_name("bench_profile"), unique_table_name("bench_profile_min")]
        systems.create_session_table(url, tables[1])
        app = systems.ours(url, tables[0])
        reference = systems.Min(args.database, url, tables[1])
        try:
            path = systems.PATHS[args.scenario]
            runs = {
                name: _requests(served, path, args.scenario, args.requests)
                for name, served in (("wsgi_dbsession", app), ("min", reference))
            }
            for run in runs.values():
                run()  # warm: connections, statement caches
            timed = {name: _timed(run) for name, run in runs.items()}
            profiler = cProfile.Profile()
            profiler.runcall(runs[args.profile])
        finally:
            app.close()
            reference.close()
            drop_tables(url, tables)
    print(f"{args.database}, {args.scenario}, {args.requests} requests, unprofiled, per request:")
    for name, (wall, cpu) in timed.items():
        wall_us, cpu_us = wall / args.requests * 1e6, cpu / args.requests * 1e6
        print(f"  {name:>14}: {wall_us:8.1f} µs wall, {cpu_us:8.1f} µs CPU")
    stats = pstats.Stats(profiler)
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
    print(f"profiled ({args.profile}): {total / args.requests * 1e6:.1f} µs per request\n")
    rows = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if not args.all and "wsgi_dbsession" not in filename:
            continue
        where = f"{Path(filename).name}:{line} {name}"
        rows.append((own, cumulative, calls, where))
    rows.sort(reverse=True)
    print(f"{'own µs/req':>10} {'own %':>6} {'total µs/req':>12} {'total %':>7} {'calls/req':>9}  function")
    for own, cumulative, calls, where in rows[: args.top]:
        print(
            f"{own / args.requests * 1e6:10.2f} {own / total * 100:5.1f}% "
            f"{cumulative / args.requests * 1e6:12.2f} {cumulative / total * 100:6.1f}% "
            f"{calls / args.requests:9.2f}  {where}"
        )
    return 0


def _requests(app: systems.App, path: str, scenario: str, count: int) -> Callable[[], None]:
    """``count`` requests of ``scenario`` to ``app``, all on the same session (none for ``new``)."""
    cookie = None if scenario == "new" else systems.cookie_of(systems.call(app, "/new"))

    def run() -> None:
        for _ in range(count):
            systems.call(app, path, cookie)

    return run


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    """Seconds of wall clock and of this process's CPU that ``run`` takes."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


if __name__ == "__main__":
    raise SystemExit(main())
