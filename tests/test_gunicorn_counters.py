"""Threads and processes at once: real gunicorn, 2 gthread workers x 4 threads, on every live database.

Many clients, each with its own session, increment their counter N times in
sequence through tests/servers/counter_app.py. Every answer must be the next
number, every stored counter must end at exactly N, and nothing may fail:
not the workers' race to create the table, not a request.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import SECRET, drop_table
from wsgi_dbsession import SessionStore, unsign

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
WORKERS, THREADS = 2, 4
CLIENTS = 16
INCREMENTS = 50  # N: sequential requests per client


class Client:
    """One browser: a cookie jar of one cookie, the counts it was answered, the workers that answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie: str | None = None
        self.counts: list[int] = []
        self.pids: set[int] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            for _ in range(INCREMENTS):
                self.increment()
        except Exception as exc:
            self.errors.append(repr(exc))

    def increment(self) -> None:
        # A new connection each time, so the two workers share the requests.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/", headers={"Cookie": self.cookie} if self.cookie else {})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                self.errors.append(f"{response.status}: {body[:200]!r}")
                return
            set_cookie = response.getheader("Set-Cookie")
        finally:
            conn.close()
        if set_cookie:
            self.cookie = set_cookie.split(";", 1)[0]
        answer = json.loads(body)
        self.counts.append(answer["count"])
        self.pids.add(answer["pid"])


def start_gunicorn(url: str, table: str, error_log: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "COUNTER_APP_URL": url, "COUNTER_APP_TABLE": table}
    command = [
        sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
        "--workers", str(WORKERS), "--threads", str(THREADS),
        "--bind", "127.0.0.1:0", "--error-logfile", str(error_log), "--graceful-timeout", "10",
        "tests.servers.counter_app:app",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"gunicorn exited: {error_log.read_text()}")
        text = error_log.read_text() if error_log.exists() else ""
        listening = re.search(r"Listening at: \S+:(\d+)", text)
        if listening and text.count("Booting worker") >= WORKERS:
            port = int(listening[1])
            while len(serving_pids(port)) < WORKERS:  # a worker still importing the app
                if time.monotonic() > deadline:
                    break
            else:
                return server, port
        time.sleep(0.1)
    server.kill()
    raise AssertionError("gunicorn did not start in 60 s")


def serving_pids(port: int, probes: int = 20) -> set[int]:
    """The workers that answered ``probes`` requests that do not touch the session."""
    pids = set()
    for _ in range(probes):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/pid")
            pids.add(json.loads(conn.getresponse().read())["pid"])
        finally:
            conn.close()
    return pids


def test_every_counter_ends_at_exactly_n(db_url: str, table_name: str, tmp_path: Path) -> None:
    store = SessionStore(url=db_url, table_name=table_name, create_table=False)
    error_log = tmp_path / "gunicorn.log"
    server, port = start_gunicorn(db_url, table_name, error_log)
    try:
        started = time.monotonic()
        clients = [Client(port) for _ in range(CLIENTS)]
        threads = [threading.Thread(target=client.run) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=30)
    try:
        server_log = error_log.read_text()
        assert exit_code == 0, server_log
        assert [client.errors for client in clients] == [[]] * CLIENTS
        for client in clients:
            assert client.counts == list(range(1, INCREMENTS + 1)), client.counts
            assert client.cookie is not None
            sid = unsign(unquote(client.cookie.split("=", 1)[1]), [SECRET.encode()])
            assert sid is not None
            assert store.get(sid)["count"] == INCREMENTS  # type: ignore[index]
        assert store.count() == CLIENTS, "one session per client, no stray ones"
        assert len(set().union(*(client.pids for client in clients))) == WORKERS, "both workers served"
        assert "Traceback" not in server_log and "[ERROR]" not in server_log, server_log
        print(f"{CLIENTS * INCREMENTS} requests in {elapsed:.2f} s")
    finally:
        drop_table(store.engine, store.table)
        store.dispose()
