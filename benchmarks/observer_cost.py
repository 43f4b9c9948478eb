"""``python -m benchmarks.observer_cost``: what the metrics observer costs, unused and used.

Times a read (``store.load``) and a read-and-write request (the middleware,
called directly) in one process, in interleaved rounds, with:

- ``baseline``: the package as it was before the observer (its source at
  the parent of the commit that added ``wsgi_dbsession/observe.py``,
  imported from ``git archive`` as ``wsgi_dbsession_baseline``; ``--baseline``
  names another revision);
- ``unobserved``: this package, no observer registered;
- ``no-op observer``, ``Prometheus``, ``OpenTelemetry``: an observer
  that does nothing, and the two bridges on their own registry / SDK provider.

Times are this thread's CPU time (``time.thread_time``): an observer's cost
is CPU in the application's process, the database's own time is the same
for every variant, and CPU time does not count the spells when a busy
machine runs something else. Prints each one's median µs and the median of its per-round ratios to the
baseline of the same round, with the middle half of those ratios: on a busy
machine, "nothing measurable" means the unobserved ratio's middle half
holds 1.00.
"""

from __future__ import annotations

import argparse
import importlib
import io
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any
from wsgiref.util import setup_testing_defaults

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import wsgi_dbsession
from wsgi_dbsession.opentelemetry import OpenTelemetryMetrics
from wsgi_dbsession.prometheus import PrometheusMetrics

from .common import BACKENDS, SECRET, database_url, drop_tables, fmt_ratio, markdown_table, unique_table_name

ROOT = Path(__file__).resolve().parent.parent
OBSERVER_MODULE = "wsgi_dbsession/observe.py"


def baseline_package(revision: str | None, workdir: Path) -> ModuleType:
    """The package at ``revision`` (default: just before the observer), importable beside this one."""
    if revision is None:
        added = _git("log", "--diff-filter=A", "--format=%H", "--", OBSERVER_MODULE).split()
        if not added:
            raise SystemExit(f"{OBSERVER_MODULE} is not in this checkout's history: give --baseline")
        revision = f"{added[-1]}^"
    archive = subprocess.run(
        ["git", "archive", revision, "wsgi_dbsession"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir, filter="data")
    (workdir / "wsgi_dbsession").rename(workdir / "wsgi_dbsession_baseline")
    sys.path.insert(0, str(workdir))
    return importlib.import_module("wsgi_dbsession_baseline")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    session = environ["dbsession"]
    session["n"] = session.get("n", 0) + 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class Variant:
    """One configuration: a middleware on the shared table, with its own session."""

    def __init__(self, package: ModuleType, url: Any, table: str, observer: Callable[[Any], None] | None):
        self.middleware = package.SessionMiddleware(
            _app, secret=SECRET, url=url, table_name=table, cleanup_interval=0
        )
        if observer is not None:
            self.middleware.store.observe(observer)
        self.cookie = ""
        self.headers: list[tuple[str, str]] = []
        self.request()  # a new session; its cookie is kept
        self.cookie = next(value.split(";")[0] for name, value in self.headers if name == "Set-Cookie")
        self.sid = self.middleware.manager.cookie.read(self.cookie)

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        self.headers = headers

    def request(self) -> None:
        environ: dict[str, Any] = {"HTTP_COOKIE": self.cookie} if self.cookie else {}
        setup_testing_defaults(environ)
        for _ in self.middleware(environ, self.start_response):
            pass

    def read(self) -> None:
        self.middleware.store.load(self.sid)

    def close(self) -> None:
        self.middleware.close()


def measure(backend: str, package: ModuleType, rounds: int, count: int, workdir: Path) -> list[list[object]]:
    url = database_url(backend, workdir)
    table = unique_table_name("bench_observer")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    observers: dict[str, tuple[ModuleType, Callable[[Any], None] | None]] = {
        "baseline": (package, None),
        "unobserved": (wsgi_dbsession, None),
        "no-op observer": (wsgi_dbsession, lambda event: None),
        "Prometheus": (wsgi_dbsession, PrometheusMetrics(CollectorRegistry())),
        "OpenTelemetry": (wsgi_dbsession, OpenTelemetryMetrics(provider)),
    }
    variants = {name: Variant(pkg, url, table, observer) for name, (pkg, observer) in observers.items()}
    timings: dict[tuple[str, str], list[float]] = {}
    order = list(variants)
    try:
        for _ in range(rounds):
            random.shuffle(order)  # no variant always runs first, or just after another
            for work in ("read", "request"):
                for name in order:
                    variant = variants[name]
                    run = variant.read if work == "read" else variant.request
                    started = time.thread_time()
                    for _ in range(count):
                        run()
                    timings.setdefault((work, name), []).append((time.thread_time() - started) / count * 1e6)
    finally:
        for variant in variants.values():
            variant.close()
        provider.shutdown()
        drop_tables(url, [table, f"{table}_lease"])
    rows: list[list[object]] = []
    for work in ("read", "request"):
        base = timings[work, "baseline"]
        for name in variants:
            values = timings[work, name]
            # Each round's ratio to the baseline of the same round: a busy
            # machine's slow spells hit both and cancel out.
            ratios = [value / reference for value, reference in zip(values, base, strict=True)]
            low, _, high = statistics.quantiles(ratios, n=4)
            rows.append(
                [work, name, f"{statistics.median(values):.1f}", fmt_ratio(statistics.median(ratios)),
                 f"{low:.2f}-{high:.2f}"]
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.observer_cost", description=__doc__)
    parser.add_argument("--databases", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument(
        "--count", type=int, default=200, help="operations per round and variant (default 200)"
    )
    parser.add_argument("--baseline", help="git revision of the baseline (default: before the observer)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks that it runs")
    args = parser.parse_args(argv)
    rounds, count = (3, 5) if args.quick else (args.rounds, args.count)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        package = baseline_package(args.baseline, workdir / "baseline")
        for backend in args.databases:
            rows = measure(backend, package, rounds, count, workdir)
            print(f"### Observer cost on {backend} (median CPU µs, {rounds} interleaved rounds of {count})\n")
            print(markdown_table(["work", "variant", "µs", "÷ baseline", "middle half of ratios"], rows))
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
