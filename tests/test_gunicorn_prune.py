"""Pruning under real gunicorn: 4 sync workers, with and without --preload, on every live database.

Each case serves tests/servers/prune_app.py with ``cleanup_interval`` of 1 s
over a table of 1,000 expired and 1,000 live sessions, with traffic that
reads live sessions for at least 8 s and until the log shows a few prunes
and another worker's try (a loaded machine gets the time it needs; the
counts are checked, not the clock). The six cases run at the same time (one
thread drives each server), so the module takes one case's time.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import BACKENDS, SECRET, backend_url, drop_table, unique_table_name
from tests.prune_helpers import live_rows, seed
from wsgi_dbsession import SessionStore, sign
from wsgi_dbsession.cookies import encode_value

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4
INTERVAL = 1.0  # seconds: the cleanup_interval under test
TRAFFIC = 8.0  # seconds of requests per case, at least
MAX_TRAFFIC = 120.0  # seconds: the most a case waits for MIN_PRUNES prunes and another worker's try
MIN_PRUNES = 3
STARTUP = 180.0  # seconds for gunicorn and its workers to start (six servers at once, on a loaded machine)
CLIENTS = 2  # concurrent client threads per case
EXPIRED = LIVE = 1000
CASES = [(backend, preload) for backend in BACKENDS for preload in (False, True)]
LOG_LINE = re.compile(r"^(?P<time>[\d.]+) (?P<pid>\d+) (?P<level>\w+) (?P<message>.*)$")


@dataclass
class Run:
    """What one gunicorn case did: its log lines, what the clients saw, the table afterwards."""

    log: list[tuple[float, int, str]] = field(default_factory=list)
    worker_connections: dict[int, set[int | None]] = field(default_factory=lambda: defaultdict(set))
    wrong_reads: list[str] = field(default_factory=list)
    requests: int = 0
    exit_code: int | None = None
    stopped_at: float = 0.0  # wall clock, as the log lines' times
    live_before: dict[str, str] = field(default_factory=dict)
    live_after: dict[str, str] = field(default_factory=dict)
    expired_after: int = -1
    server_log: str = ""

    def lines(self, pattern: str) -> list[tuple[float, int, re.Match[str]]]:
        found = []
        for at, pid, message in self.log:
            match = re.match(pattern, message)
            if match:
                found.append((at, pid, match))
        return found


def _get(port: int, path: str, cookie: str | None) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return dict(json.loads(response.read()))
    finally:
        conn.close()


def _drive(port: int, run: Run, live: dict[str, str], done: threading.Event) -> None:
    """Read random live sessions (and ask for the worker's connection) until ``done``."""
    sids = list(live)
    while not done.is_set():
        if random.random() < 0.2:
            answer = _get(port, "/db", None)
            run.worker_connections[answer["pid"]].add(answer["connection"])
        else:
            sid = random.choice(sids)
            answer = _get(port, "/", f"connect.sid={encode_value(sign(sid, SECRET))}")
            expected = json.loads(live[sid])["n"]
            if answer["data"] is None or answer["data"].get("n") != expected:
                run.wrong_reads.append(sid)
        run.requests += 1
        time.sleep(0.05)


def _serve(backend: str, preload: bool, url: str, table: str, workdir: Path, run: Run) -> None:
    log_path, server_log = workdir / "prune.log", workdir / "gunicorn.log"
    env = {
        **os.environ,
        "PRUNE_APP_URL": url,
        "PRUNE_APP_TABLE": table,
        "PRUNE_APP_LOG": str(log_path),
        "PRUNE_APP_INTERVAL": str(INTERVAL),
        "PRUNE_APP_SECRET": SECRET,
    }
    command = [
        sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync",
        "--bind", "127.0.0.1:0", "--error-logfile", str(server_log), "--graceful-timeout", "10",
        *(["--preload"] if preload else []),
        "tests.servers.prune_app:app",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        port = _wait_for_port(server, server_log)
        # Traffic starts once every worker has the app (without --preload each imports it itself).
        ready = 1 if preload else WORKERS
        _wait_for(lambda: log_path.exists() and log_path.read_text().count("app imported") == ready, server)
        started, done = time.monotonic(), threading.Event()
        clients = [
            threading.Thread(target=_drive, args=(port, run, run.live_before, done)) for _ in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        try:
            while not (time.monotonic() - started >= TRAFFIC and _pruned_enough(log_path)):
                assert time.monotonic() - started < MAX_TRAFFIC, "too few prunes: see the test's log"
                assert server.poll() is None, "gunicorn exited"
                done.wait(0.2)
        finally:
            done.set()
            for client in clients:
                client.join()
    finally:
        run.stopped_at = time.time()
        server.send_signal(signal.SIGTERM)
        run.exit_code = server.wait(timeout=30)
        run.server_log = server_log.read_text() if server_log.exists() else ""
    for line in log_path.read_text().splitlines():
        match = LOG_LINE.match(line)
        assert match, line
        run.log.append((float(match["time"]), int(match["pid"]), match["message"]))


def _pruned_enough(log_path: Path) -> bool:
    """Whether the log has MIN_PRUNES prunes and a worker that found the prune taken."""
    text = log_path.read_text()
    return len(re.findall(r" pruned \d+ expired sessions", text)) >= MIN_PRUNES and (
        " another process prunes" in text
    )


def _wait_for(condition: Callable[[], Any], server: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + STARTUP
    while not (result := condition()):
        assert server.poll() is None, "gunicorn exited"
        assert time.monotonic() < deadline, f"gunicorn did not start in {STARTUP:.0f} s"
        time.sleep(0.1)
    return result


def _wait_for_port(server: subprocess.Popen[bytes], server_log: Path) -> int:
    def port() -> int | None:
        text = server_log.read_text() if server_log.exists() else ""
        found = re.search(r"Listening at: \S+:(\d+)", text)
        return int(found[1]) if found else None

    return int(_wait_for(port, server))


def _case(backend: str, preload: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    url = backend_url(backend, tmp_path_factory)
    store = SessionStore(url=url, table_name=unique_table_name("prune"))
    run = Run(live_before=seed(store, expired=EXPIRED, live=LIVE))
    try:
        workdir = tmp_path_factory.mktemp(f"gunicorn-{backend}")
        yield run
        _serve(backend, preload, url, store.table.name, workdir, run)
        run.live_after = live_rows(store)
        run.expired_after = store.count(expired=True)
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[Any, Run | BaseException]:
    """Every case the session selected, run at the same time."""
    wanted = {
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    cases = [case for case in CASES if case in wanted]
    generators = {case: _case(*case, tmp_path_factory) for case in cases}
    results: dict[Any, Run | BaseException] = {case: next(gen) for case, gen in generators.items()}

    def finish(case: Any) -> None:
        try:
            next(generators[case], None)
        except BaseException as exc:
            results[case] = exc

    threads = [threading.Thread(target=finish, args=(case,)) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _run(runs: dict[Any, Run | BaseException], case: Any) -> Run:
    run = runs[case]
    if isinstance(run, BaseException):
        raise run
    assert run.exit_code == 0, run.server_log
    return run


@pytest.mark.parametrize("case", CASES, ids=[f"{b}-{'preload' if p else 'lazy'}" for b, p in CASES])
def test_expired_rows_go_and_live_rows_stay(runs: dict[Any, Run | BaseException], case: Any) -> None:
    run = _run(runs, case)
    assert run.expired_after == 0
    assert run.live_after == run.live_before
    assert run.wrong_reads == []
    pruned = run.lines(r"pruned (\d+) expired sessions")
    assert sum(int(match[1]) for _, _, match in pruned) == EXPIRED
    assert not run.lines(r"pruning expired sessions .* failed"), run.log


@pytest.mark.parametrize("case", CASES, ids=[f"{b}-{'preload' if p else 'lazy'}" for b, p in CASES])
def test_one_prune_at_a_time_about_once_per_interval(runs: dict[Any, Run | BaseException], case: Any) -> None:
    run = _run(runs, case)
    spans = []  # (start, end, pid) of each prune begun before the server was stopped
    for pid in {pid for _, pid, _ in run.log}:
        starts = [
            at for at, who, _ in run.lines(r"prune of .* started") if who == pid and at <= run.stopped_at
        ]
        ends = [at for at, who, _ in run.lines(r"pruned \d+ expired sessions") if who == pid]
        spans += [(start, end, pid) for start, end in zip(starts, ends[: len(starts)], strict=True)]
    spans.sort()
    for (_, previous_end, _), (start, _, _) in itertools.pairwise(spans):
        assert start >= previous_end, "two prunes overlapped"
    # Every worker that served a request runs the job, but only the lock holder prunes.
    scheduling = run.lines(r"prune job of .* started")
    assert len({pid for _, pid, _ in scheduling}) >= 2, run.log
    intervals = (run.stopped_at - min(at for at, _, _ in scheduling)) / INTERVAL
    # The job ran again and again (the traffic lasted until it had); and never more often
    # than once per interval or so in total, not once per worker. A loaded machine only
    # delays runs, so the upper bound holds under load, where a lower one from the
    # clock would not.
    assert MIN_PRUNES <= len(spans) <= intervals * 1.5 + 1, (len(spans), intervals)
    assert len({pid for _, _, pid in spans}) == 1
    assert run.lines(r"another process prunes"), "the other workers never tried"


@pytest.mark.parametrize("case", CASES, ids=[f"{b}-{'preload' if p else 'lazy'}" for b, p in CASES])
def test_workers_never_use_a_connection_from_before_the_fork(
    runs: dict[Any, Run | BaseException], case: Any
) -> None:
    run = _run(runs, case)
    backend, preload = case
    imported = run.lines(r"app imported, database connection (\S+)")
    assert len(imported) == (1 if preload else WORKERS)
    if backend == "sqlite":
        return
    assert len(run.worker_connections) >= 2
    seen: dict[int | None, int] = {}
    for pid, connections in run.worker_connections.items():
        for connection in connections:
            assert connection not in seen, f"workers {seen.get(connection)} and {pid} share a connection"
            seen[connection] = pid
    if preload:
        (_, master, match) = imported[0]
        assert int(match[1]) not in seen, "a worker used the master's connection"
        assert master not in run.worker_connections
