"""Throughput of a session-writing endpoint under gunicorn: wsgi_dbsession against min and raw.

gunicorn runs 2 sync workers on loopback; a Python load generator in this
process keeps ``concurrency`` requests in flight (one thread each, a new TCP
connection per request, as gunicorn's sync workers close it), every thread
with its own session so no two requests race on one row. Every request is
``/write``: a read and a write of the session. raw, min and wsgi_dbsession
(see systems.py) get the same load in alternating runs of fixed length.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import systems
from .common import (
    database_url,
    drop_tables,
    fmt_ratio,
    markdown_table,
    median,
    percentile,
    unique_table_name,
)

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("raw", "min", "wsgi_dbsession")
TARGET = 0.9  # wsgi_dbsession's requests/s at least this fraction of min's (issue 16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, path: str, cookie: str | None = None) -> bytes:
    """One HTTP/1.1 request on a new connection; the whole raw response."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if cookie is not None:
        lines.append(f"Cookie: {cookie}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def set_cookie_of(response: bytes) -> str:
    for line in response.split(b"\r\n"):
        if line.lower().startswith(b"set-cookie:"):
            return line.split(b":", 1)[1].strip().split(b";", 1)[0].decode()
    raise RuntimeError("the response set no cookie")


class Server:
    """gunicorn with 2 sync workers serving one system on a fresh port."""

    def __init__(self, system: str, backend: str, url: str, table: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "BENCH_SYSTEM": system,
            "BENCH_BACKEND": backend,
            "BENCH_URL": url,
            "BENCH_TABLE": table,
        }
        command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"127.0.0.1:{self.port}"]
        self.process = subprocess.Popen(
            [*command, "benchmarks.load_app:app"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(self.port, "/unused").startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn serving {system} did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


@dataclass
class Run:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def drive(port: int, cookies: list[str], seconds: float) -> Run:
    """Keep one request in flight per cookie for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in cookies]
    errors = [0] * len(cookies)
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        request_cookie = cookies[index]
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                ok = http_get(port, "/write", request_cookie).startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            if ok:
                latencies[index].append(time.perf_counter() - start)
            else:
                errors[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(cookies))]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    flat = [value for per_client in latencies for value in per_client]
    return Run(len(flat), sum(errors), elapsed, flat)


@dataclass
class LoadResult:
    backend: str
    concurrency: int
    seconds: float
    runs: dict[str, list[Run]]

    def throughput(self, system: str) -> float:
        return median([run.throughput for run in self.runs[system]])

    def latency(self, system: str, fraction: float) -> float:
        return percentile([value for run in self.runs[system] for value in run.latencies], fraction)


def measure(backend: str, workdir: Path, *, concurrency: int, seconds: float, rounds: int) -> LoadResult:
    url = database_url(backend, workdir)
    tables = {system: unique_table_name(f"bench_load_{system}") for system in SYSTEMS}
    servers: dict[str, Server] = {}
    try:
        for system, table in tables.items():
            systems.create_session_table(url, table)
            servers[system] = Server(system, backend, url.render_as_string(False), table)
        cookies = {
            system: [set_cookie_of(http_get(server.port, "/new")) for _ in range(concurrency)]
            for system, server in servers.items()
        }
        for system, server in servers.items():  # warm both workers' connections
            drive(server.port, cookies[system], min(1.0, seconds))
        runs: dict[str, list[Run]] = {system: [] for system in SYSTEMS}
        for _ in range(rounds):
            for system in SYSTEMS:
                runs[system].append(drive(servers[system].port, cookies[system], seconds))
    finally:
        for server in servers.values():
            server.stop()
        drop_tables(url, list(tables.values()))
    return LoadResult(backend, concurrency, seconds, runs)


def render(results: list[LoadResult]) -> str:
    rows = []
    for result in results:
        for system in SYSTEMS:
            errors = sum(run.errors for run in result.runs[system])
            rows.append(
                [
                    result.backend,
                    system,
                    f"{result.throughput(system):.0f}",
                    f"{result.latency(system, 0.5) * 1000:.2f}",
                    f"{result.latency(system, 0.99) * 1000:.2f}",
                    str(errors),
                    fmt_ratio(result.throughput(system) / result.throughput("min")),
                    fmt_ratio(result.throughput(system) / result.throughput("raw")),
                ]
            )
    return markdown_table(
        ["database", "app", "requests/s", "p50 ms", "p99 ms", "errors", "vs min", "vs raw"], rows
    )


def render_targets(results: list[LoadResult]) -> str:
    """wsgi_dbsession's requests/s against min's, and failed requests, per database."""
    rows = []
    for result in results:
        ratio = result.throughput("wsgi_dbsession") / result.throughput("min")
        errors = sum(run.errors for runs in result.runs.values() for run in runs)
        met = ratio >= TARGET and errors == 0
        rows.append(
            [
                result.backend,
                f"wsgi_dbsession ≥ {TARGET}x min's requests/s, no request failing",
                f"{fmt_ratio(ratio)}, {errors} failed",
                "yes" if met else "**no**",
            ]
        )
    return markdown_table(["database", "target", "measured", "met"], rows)
