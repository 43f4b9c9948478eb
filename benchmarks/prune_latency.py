"""Request latency while a large prune runs, on PostgreSQL.

gunicorn serves tests/servers/prune_app.py (2 sync workers, no prune job of
its own) over a table of live sessions; client threads send requests at a
fixed rate, half reads (``/``) and half read-and-writes (``/incr``) of random
live sessions. Each round adds ``--rows`` expired rows, lets the traffic run
alone for a few seconds (the latency *without* a prune), then runs
``wsgi-dbsession prune`` in another process while the traffic goes on (the
latency *during* the prune). Two ways to prune are compared: the default
batches of 1,000 rows, each its own transaction, and one statement that
deletes every row in a single transaction (``--batch-size`` = all rows).

    .venv/bin/python -m benchmarks.prune_latency             # 200,000 rows, 5 rounds of each
    .venv/bin/python -m benchmarks.prune_latency --rows 20000 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from conftest import SECRET  # the secret the app signs with
from tests.prune_helpers import seed
from wsgi_dbsession import SessionStore, sign
from wsgi_dbsession.cookies import encode_value
from wsgi_dbsession.store import PRUNE_BATCH_SIZE

from .common import database_url, markdown_table, percentile, unique_table_name
from .load import free_port, http_get

ROOT = Path(__file__).resolve().parent.parent
LIVE = 2000  # live sessions the traffic reads and writes
CLIENTS = 4  # client threads
PERIOD = 0.02  # seconds between two requests of one client: 200 requests/s in all
BASELINE = 4.0  # seconds of traffic before each prune
# Expired rows, made by the server: the client's CPU stays free for the traffic.
_EXPIRED_ROWS = (
    "INSERT INTO {table} (sid, sess, expired) "
    "SELECT md5(random()::text) || g, (:sess_prefix || g || '}}')::json, now() - interval '1 day' "
    "FROM generate_series(1, :rows) AS g"
)
_SESS_PREFIX = (
    '{"cookie":{"originalMaxAge":86400000,"expires":"2020-01-01T00:00:00.000Z",'
    '"httpOnly":true,"path":"/"},"n":'
)


@dataclass
class Sample:
    started: float  # time.monotonic()
    seconds: float
    ok: bool


@dataclass
class Round:
    """One prune under traffic: the samples before it and during it, and how long it took."""

    mode: str
    prune_seconds: float
    deleted: int
    before: list[Sample] = field(default_factory=list)
    during: list[Sample] = field(default_factory=list)


class Traffic:
    """Client threads sending requests at a fixed rate until stopped."""

    def __init__(self, port: int, cookies: list[str]) -> None:
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(port, cookies, random.Random(seed)))
            for seed in range(CLIENTS)
        ]
        for thread in self._threads:
            thread.start()

    def _client(self, port: int, cookies: list[str], rng: random.Random) -> None:
        next_at = time.monotonic() + rng.uniform(0, PERIOD)
        while not self._stop.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            path = rng.choice(("/", "/incr"))
            started = time.monotonic()
            try:
                ok = http_get(port, path, f"connect.sid={rng.choice(cookies)}").startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            self.samples.append(Sample(started, time.monotonic() - started, ok))
            next_at = max(next_at + PERIOD, time.monotonic())

    def stop(self) -> list[Sample]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return self.samples


def serve(url: str, table: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "PRUNE_APP_URL": url,
        "PRUNE_APP_TABLE": table,
        "PRUNE_APP_INTERVAL": "0",
        "PRUNE_APP_LOG": str(workdir / "app.log"),
        "PRUNE_APP_SECRET": SECRET,
    }
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{port}"]
    server = subprocess.Popen(
        [*command, "tests.servers.prune_app:app"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            if http_get(port, "/").startswith(b"HTTP/1.1 200"):
                return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("gunicorn did not start")
        time.sleep(0.1)


def prune_round(store: SessionStore, url: str, port: int, cookies: list[str], rows: int, mode: str) -> Round:
    table = store.engine.dialect.identifier_preparer.format_table(store.table)
    with store.engine.connect() as conn:
        conn.execute(sa.text(_EXPIRED_ROWS.format(table=table)), {"rows": rows, "sess_prefix": _SESS_PREFIX})
        conn.commit()
        conn.execute(sa.text(f"ANALYZE {table}"))
    batch_size = PRUNE_BATCH_SIZE if mode == "batched" else rows
    traffic = Traffic(port, cookies)
    time.sleep(BASELINE)
    launched = time.monotonic()
    command = [sys.executable, "-m", "wsgi_dbsession", "prune", "--url", url, "--table", store.table.name]
    done = subprocess.run(
        [*command, "--batch-size", str(batch_size)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    finished = time.monotonic()
    time.sleep(0.5)
    samples = traffic.stop()
    found = re.search(r"deleted (\d+) expired sessions .* in ([\d.]+) s", done.stdout)
    if found is None:
        raise RuntimeError(f"unexpected prune output: {done.stdout!r} {done.stderr!r}")
    seconds = float(found[2])
    result = Round(mode, seconds, int(found[1]))
    result.before = [s for s in samples if launched - BASELINE + 0.5 <= s.started < launched]
    # The deletes ran in the last `seconds` before the prune process finished.
    result.during = [s for s in samples if finished - seconds <= s.started <= finished]
    return result


def measure(rows: int, rounds: int) -> list[Round]:
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        url = database_url("postgresql", workdir).render_as_string(hide_password=False)
        store = SessionStore(url=url, table_name=unique_table_name("bench_prune"))
        server = None
        try:
            live = seed(store, expired=0, live=LIVE)
            cookies = [encode_value(sign(sid, SECRET)) for sid in live]
            server, port = serve(url, store.table.name, workdir)
            Traffic(port, cookies[:CLIENTS]).stop()
            results = []
            for _ in range(rounds):
                for mode in ("batched", "single"):
                    results.append(prune_round(store, url, port, cookies, rows, mode))
            return results
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=30)
            with store.engine.connect() as conn:
                store.table.drop(conn, checkfirst=True)
                conn.commit()
            store.dispose()


def render(results: list[Round], rows: int) -> str:
    table_rows = []
    for mode, label in (("batched", f"batches of {PRUNE_BATCH_SIZE:,}"), ("single", "one statement")):
        runs = [result for result in results if result.mode == mode]
        before = [s.seconds * 1000 for result in runs for s in result.before if s.ok]
        during = [s.seconds * 1000 for result in runs for s in result.during if s.ok]
        errors = sum(not s.ok for result in runs for s in result.before + result.during)
        seconds = sorted(result.prune_seconds for result in runs)[len(runs) // 2]
        table_rows.append(
            [
                label,
                f"{rows:,}",
                f"{seconds:.2f}",
                f"{rows / seconds:,.0f}",
                f"{percentile(before, 0.5):.1f}",
                f"{percentile(before, 0.99):.1f}",
                f"{percentile(during, 0.5):.1f}",
                f"{percentile(during, 0.99):.1f}",
                f"{max(during):.1f}",
                str(len(during)),
                str(errors),
            ]
        )
    return markdown_table(
        [
            "prune",
            "expired rows",
            "prune s (median)",
            "rows/s",
            "p50 ms without",
            "p99 ms without",
            "p50 ms during",
            "p99 ms during",
            "max ms during",
            "requests during",
            "errors",
        ],
        table_rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prune_latency", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="expired rows per prune (default 200,000)")
    parser.add_argument("--rounds", type=int, default=5, help="prunes of each kind (default 5)")
    args = parser.parse_args(argv)
    print(f"load average at start: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")
    results = measure(args.rows, args.rounds)
    print(render(results, args.rows))
    print(f"load average at end: {', '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
