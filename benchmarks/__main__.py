"""``python -m benchmarks``: run every benchmark and print its tables (Markdown).

``--quick`` runs each once with tiny counts (seconds, for a smoke test; its
numbers mean nothing). The default run takes several minutes on 2 cores and
redraws docs/benchmarks.svg from the per-request results (with matplotlib
installed; without it, it says so and skips the chart).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from . import chart, load, request_cost, table_size
from .common import BACKENDS, database_url

SECTIONS = ("request", "rows", "load", "prune")
PRUNE_SCRIPT = Path(__file__).with_name("prune_latency.py")
CHART = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.svg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks that everything runs")
    parser.add_argument("--databases", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rounds", type=int, help="interleaved rounds per measurement (default 25)")
    parser.add_argument("--big-rows", type=int, help="rows in the large table (default 1,000,000)")
    parser.add_argument("--load-seconds", type=float, help="length of one load run (default 3)")
    parser.add_argument("--load-rounds", type=int, help="alternating load runs per app (default 9)")
    parser.add_argument(
        "--chart",
        type=Path,
        nargs="+",
        help="where to draw the per-request chart, .svg or .png, one or more files "
        "(default docs/benchmarks.svg; with --quick, none unless given)",
    )
    parser.add_argument("--no-chart", action="store_true", help="draw no chart")
    args = parser.parse_args(argv)
    charts = [] if args.no_chart else args.chart or ([] if args.quick else [CHART])
    quick = args.quick
    rounds = args.rounds or (2 if quick else 25)
    batch_seconds = 0.002 if quick else 0.05
    big_rows = args.big_rows or (200 if quick else 1_000_000)
    small_rows = 20 if quick else 1_000
    load_seconds = args.load_seconds or (0.3 if quick else 3.0)
    # One 3 s run moves by a tenth on a shared machine: the median of 9 holds still.
    load_rounds = args.load_rounds or (1 if quick else 9)

    with tempfile.TemporaryDirectory(prefix="wsgi_dbsession-bench-") as tmp:
        workdir = Path(tmp)
        print(machine(args.databases, workdir))
        if "request" in args.only:
            results = []
            for backend in args.databases:
                results.append(
                    request_cost.measure(backend, workdir, rounds=rounds, batch_seconds=batch_seconds)
                )
                print(f"\n### Per-request cost: {backend} (median µs over {rounds} interleaved rounds)\n")
                print(request_cost.render(results[-1]))
            print(f"\n### Summary (median µs over {rounds} interleaved rounds)\n")
            print(request_cost.render_summary(results))
            print(f"\n### Django's session engines (median µs over {rounds} interleaved rounds)\n")
            print(request_cost.render_django(results))
            print(f"\n### CPU time of the benchmark process (median µs over {rounds} interleaved rounds)\n")
            print(request_cost.render_cpu(results))
            print("\n### Targets\n")
            print(request_cost.render_targets(results))
            for chart_path in charts:
                print(f"\n({chart.draw(results, chart_path)})")
        if "rows" in args.only:
            sizes = [
                table_size.measure(
                    backend,
                    workdir,
                    small=small_rows,
                    big=big_rows,
                    rounds=rounds,
                    batch_seconds=batch_seconds,
                )
                for backend in args.databases
            ]
            print(f"\n### Read latency by table size (median µs over {rounds} interleaved rounds)\n")
            print(table_size.render(sizes))
        if "load" in args.only:
            loads = [
                load.measure(backend, workdir, concurrency=4, seconds=load_seconds, rounds=load_rounds)
                for backend in args.databases
            ]
            print("\n### Session-writing endpoint under gunicorn (2 workers, 4 clients on loopback)\n")
            print(load.render(loads))
            print("\n### Load targets\n")
            print(load.render_targets(loads))
        if "prune" in args.only and not quick:
            print("\n### Pruning\n")
            if PRUNE_SCRIPT.exists():
                sys.stdout.flush()
                subprocess.run([sys.executable, "-m", "benchmarks.prune_latency"], check=True)
            else:
                print(f"({PRUNE_SCRIPT.name} is not there yet)")
    return 0


def machine(backends: list[str], workdir: Path) -> str:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("SQLAlchemy", "psycopg", "PyMySQL", "Beaker", "Django", "gunicorn", "WebOb")
    )
    lines = [
        "## Machine",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M %Z')}; {cpu}, {os.cpu_count()} cores; "
        f"load average {', '.join(f'{value:.2f}' for value in os.getloadavg())} at start",
        f"- Python {platform.python_version()} on {platform.system()} {platform.release()}; {packages}",
    ]
    for backend in backends:
        engine = sa.create_engine(database_url(backend, workdir))
        try:
            with engine.connect() as conn:
                query = "SELECT sqlite_version()" if backend == "sqlite" else "SELECT version()"
                lines.append(f"- {backend}: {conn.exec_driver_sql(query).scalar()}")
        finally:
            engine.dispose()
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
