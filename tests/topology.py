"""What the deployment tests (issue 12) share: where PgBouncer and the Galera cluster are, real servers.

``.ci/services.sh`` starts the services: PgBouncer on 127.0.0.1:6432 in front
of the PostgreSQL on 5432 (database ``test`` pooled per transaction with a pool
of 4 server connections, ``test_session`` pooled per session), and a 3-node
MariaDB Galera cluster on 127.0.0.1:3307-3309. Environment variables point the
tests elsewhere. A test that cannot reach a service fails under CI (``CI=true``)
and is skipped elsewhere, with the command that starts it.

The servers are real processes: gunicorn and uWSGI serving the apps in
``tests/servers/``, on ports they pick themselves (gunicorn) or that are free
(uWSGI). Their apps log the package's lines to a file, one line per write, so
the prune runs of every process can be laid out on one time line.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from conftest import LIVE_URLS, SECRET, stop_process
from wsgi_dbsession import unsign

ROOT = Path(__file__).resolve().parent.parent
START_SERVICES = ".ci/services.sh"

PGBOUNCER_URL = os.environ.get(
    "WSGI_DBSESSION_PGBOUNCER_URL", "postgresql://postgres@127.0.0.1:6432/test?prepare_threshold=none"
)
PGBOUNCER_SESSION_URL = os.environ.get(
    "WSGI_DBSESSION_PGBOUNCER_SESSION_URL", "postgresql://postgres@127.0.0.1:6432/test_session"
)
GALERA_URLS = os.environ.get(
    "WSGI_DBSESSION_GALERA_URLS",
    "mysql://root@127.0.0.1:3307/test,mysql://root@127.0.0.1:3308/test,mysql://root@127.0.0.1:3309/test",
).split(",")
# PostgreSQL itself, where the pooler's server connections are seen.
POSTGRES_URL = LIVE_URLS["postgresql"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(message: str) -> None:
    """Fail under CI (the services must be there), skip elsewhere; says how to start them."""
    text = f"{message}; run `{START_SERVICES}` (as root) to start the deployment tests' services"
    if in_ci():
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


# -- the services ---------------------------------------------------------------


def _pgbouncer_admin(url: str) -> sa.URL:
    return sa.make_url(url).set(database="pgbouncer")


def pgbouncer_rows(url: str, command: str) -> list[dict[str, Any]]:
    """The rows of a PgBouncer admin command (``SHOW DATABASES``...), through the admin console."""
    admin = _pgbouncer_admin(url)
    with psycopg.connect(
        host=admin.host, port=admin.port, user=admin.username, dbname="pgbouncer", autocommit=True,
        connect_timeout=3, prepare_threshold=None,
    ) as conn:  # fmt: skip
        cursor = conn.execute(command)
        names = [column.name for column in cursor.description or []]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def require_pgbouncer(url: str, pool_mode: str) -> None:
    """PgBouncer answers ``url`` and pools its database in ``pool_mode``."""
    parts = sa.make_url(url)
    try:
        pools = {row["name"]: row for row in pgbouncer_rows(url, "SHOW DATABASES")}
        with psycopg.connect(
            host=parts.host, port=parts.port, user=parts.username, dbname=parts.database, connect_timeout=3
        ) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        service_missing(f"PgBouncer does not answer {url}: {exc}")
    row = pools.get(parts.database)
    mode = row and (row["pool_mode"] or _default_pool_mode(url))
    if mode != pool_mode:
        pytest.fail(
            f"PgBouncer pools {parts.database!r} in {mode!r} mode, the test needs {pool_mode!r}",
            pytrace=False,
        )


def _default_pool_mode(url: str) -> str:
    return str(next(row["value"] for row in pgbouncer_rows(url, "SHOW CONFIG") if row["key"] == "pool_mode"))


def pgbouncer_pool_size(url: str) -> int:
    database = sa.make_url(url).database
    return int(
        next(row["pool_size"] for row in pgbouncer_rows(url, "SHOW DATABASES") if row["name"] == database)
    )


def pgbouncer_server_pids(url: str) -> set[int]:
    """The PostgreSQL backend pids of PgBouncer's server connections for ``url``'s database."""
    database = sa.make_url(url).database
    return {
        int(row["remote_pid"]) for row in pgbouncer_rows(url, "SHOW SERVERS") if row["database"] == database
    }


def galera_status(url: str) -> dict[str, str]:
    """A node's ``wsrep_%`` status variables and its cluster name."""
    parts = sa.make_url(url)
    conn = pymysql.connect(
        host=parts.host, port=parts.port or 3306, user=parts.username, password=parts.password or "",
        database=parts.database, connect_timeout=3,
    )  # fmt: skip
    try:
        with conn.cursor() as cursor:
            cursor.execute("SHOW GLOBAL STATUS LIKE 'wsrep%%'")
            status = {str(name).lower(): str(value) for name, value in cursor.fetchall()}
            cursor.execute("SELECT @@wsrep_on, @@wsrep_cluster_name")
            status["wsrep_on"], status["wsrep_cluster_name"] = (str(value) for value in cursor.fetchone())
        return status
    finally:
        conn.close()


def require_galera() -> None:
    """Every node of the cluster answers, is Synced, and sees all of them."""
    for url in GALERA_URLS:
        try:
            status = galera_status(url)
        except Exception as exc:
            service_missing(f"the Galera node {url} does not answer: {exc}")
        state = (
            status["wsrep_on"],
            status.get("wsrep_cluster_size"),
            status.get("wsrep_local_state_comment"),
        )
        if state != ("1", str(len(GALERA_URLS)), "Synced"):
            service_missing(
                f"the Galera node {url} is not a Synced member of a {len(GALERA_URLS)}-node cluster {state}"
            )


# -- servers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], process: subprocess.Popen[bytes], what: str, timeout: float = 60
) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert process.poll() is None, f"{what}: the server exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return result


@dataclass
class Server:
    """A server this test started: its process, port and error log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    exit_code: int | None = None

    def stop(self) -> int:
        """SIGTERM, then wait for a graceful exit (workers finish, atexit hooks run)."""
        if self.exit_code is None:
            stop_process(self.process, timeout=30)
            self.exit_code = self.process.returncode
        return self.exit_code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# How the app gets its engine: the package's own (url=), or one the user built
# with plain sqlalchemy.create_engine() and its defaults (engine=).
ENGINE_KINDS = ["package", "user"]


def start_topology_apps(
    url: str, table: str, workdir: Path, *, count: int, threads: int, engine: str = "package"
) -> list[Server]:
    """``count`` gunicorn servers of one worker each serving tests/servers/topology_app.py on ``table``.

    Clients send to them in turn (a load balancer's round robin), so every
    process serves for certain: workers sharing one socket leave it to the
    kernel which one accepts, and under load one can take every connection.
    Every app process appends its log to ``workdir / "app.log"``. ``engine``
    is one of :data:`ENGINE_KINDS`.
    """
    env = {
        "TOPOLOGY_APP_URL": url,
        "TOPOLOGY_APP_TABLE": table,
        "TOPOLOGY_APP_LOG": str(workdir / "app.log"),
        "TOPOLOGY_APP_ENGINE": engine,
    }
    return [
        start_gunicorn(
            "tests.servers.topology_app:app",
            env,
            workdir / f"gunicorn-{number}.log",
            workers=1,
            threads=threads,
        )
        for number in range(count)
    ]


def start_gunicorn(
    app: str,
    env: Mapping[str, str],
    log: Path,
    *,
    workers: int,
    threads: int = 1,
    preload: bool = False,
) -> Server:
    """gunicorn serving ``app`` (sync workers, or gthread with ``threads`` > 1), once every worker booted."""
    worker_class = "gthread" if threads > 1 else "sync"
    command = [
        sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", worker_class,
        "--threads", str(threads), "--bind", "127.0.0.1:0", "--error-logfile", str(log),
        "--graceful-timeout", "20", "--timeout", "120", *(["--preload"] if preload else []), app,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def listening() -> int | None:
            text = log.read_text() if log.exists() else ""
            found = re.search(r"Listening at: \S+:(\d+)", text)
            return int(found[1]) if found and text.count("Booting worker") >= workers else None

        port = int(wait_for(listening, process, "gunicorn start"))
    except BaseException:
        stop_process(process)
        raise
    return Server(process, port, log)


def start_uwsgi(app: str, env: Mapping[str, str], log: Path, *, processes: int, threads: int = 1) -> Server:
    """uWSGI serving ``app`` over HTTP: the app loads in the master, then ``processes`` workers are forked.

    No ``lazy-apps`` and no ``py-call-osafterfork``: the workers inherit what
    the app opened at import, and no ``os.register_at_fork`` hook runs in them.
    """
    uwsgi = shutil.which("uwsgi", path=str(Path(sys.executable).parent)) or shutil.which("uwsgi")
    assert uwsgi, "uwsgi is not installed (it is in the test extra: pip install -e '.[test]')"
    port = free_port()
    command = [
        uwsgi, "--master", "--processes", str(processes), "--threads", str(threads), "--enable-threads",
        "--http-socket", f"127.0.0.1:{port}", "--chdir", str(ROOT), "--pythonpath", str(ROOT),
        "--module", app, "--need-app", "--die-on-term", "--disable-logging", "--logto", str(log),
        "--socket-timeout", "30", "--reload-mercy", "10", "--worker-reload-mercy", "10",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def ready() -> bool:
            text = log.read_text(errors="replace") if log.exists() else ""
            return text.count("spawned uWSGI worker") >= processes and _answers(port)

        wait_for(ready, process, "uWSGI start")
    except BaseException:
        stop_process(process)
        raise
    return Server(process, port, log)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- clients --------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(port: int, path: str, cookie: str | None = None, timeout: float = 60) -> Response:
    """One GET on a new connection (so the workers of a server share the requests)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        conn.close()


def session_cookie(response: Response) -> str | None:
    """The ``name=value`` of the session cookie a response sets, if it sets one."""
    header = response.headers.get("Set-Cookie")
    return header.split(";", 1)[0] if header else None


def sid_of(cookie: str) -> str:
    sid = unsign(unquote(cookie.split("=", 1)[1]), [SECRET.encode()])
    assert sid is not None, cookie
    return sid


@dataclass
class Client:
    """One browser doing ``requests`` requests in sequence: its cookie, answers and errors.

    ``ports`` are the servers it sends to, in turn (one port: always the same
    server; several: a load balancer's round robin). ``value`` picks the number
    the app answered out of its JSON.
    """

    ports: list[int]
    path: str
    requests: int
    value: str
    cookie: str | None = None
    answers: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def run(self, start: threading.Barrier | None = None) -> None:
        if start is not None:
            start.wait(timeout=60)
        ports = itertools.cycle(self.ports)
        for _ in range(self.requests):
            try:
                response = get(next(ports), self.path, self.cookie)
            except Exception as exc:
                self.errors.append(repr(exc))
                continue
            if response.status != 200:
                self.errors.append(f"{response.status}: {response.body[:300]!r}")
                continue
            self.cookie = session_cookie(response) or self.cookie
            answer = response.json()
            self.answers.append(answer[self.value])
            self.pids.add(answer["pid"])


@contextmanager
def cpu_load(limit: float = 300) -> Iterator[None]:
    """A CPU-heavy process beside the test (a busy loop that ends by itself after ``limit`` s)."""
    burner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end: pass",
        ]
    )
    try:
        yield
    finally:
        stop_process(burner)


def run_clients(clients: Iterable[Client]) -> float:
    """Run the clients at once, each in its own thread; returns the seconds they took."""
    clients = list(clients)
    start = threading.Barrier(len(clients))
    threads = [threading.Thread(target=client.run, args=(start,)) for client in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def error_summary(errors: Iterable[str], limit: int = 5) -> str:
    """How many errors of each kind (first 80 characters), the commonest first."""
    counts: dict[str, int] = {}
    for error in errors:
        counts[error[:80]] = counts.get(error[:80], 0) + 1
    common = sorted(counts.items(), key=lambda item: -item[1])[:limit]
    return "; ".join(f"{count} x {text}" for text, count in common)


def exceptions_logged(log_text: str, limit: int = 5) -> str:
    """The exceptions in a log's tracebacks, counted: what caused the error answers."""
    found = re.findall(
        r"^((?:[\w.]+\.)?\w*(?:Error|Exception|Unavailable|Warning)\b.*)$", log_text, re.MULTILINE
    )
    return error_summary(found, limit) or "none logged"


def server_errors(log_text: str) -> list[str]:
    """The lines of a server or app log that report a failure (the first line of each)."""
    return [line for line in log_text.splitlines() if re.search(r"Traceback|\[ERROR\]| ERROR ", line)]


def prune_command(url: str, table: str) -> str:
    """What ``wsgi-dbsession prune`` (a cron job: another process) prints for ``table``; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "wsgi_dbsession", "prune", "--url", url, "--table", table],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- the package's log lines, from every process ---------------------------------

LOG_FORMAT = "%(created).6f %(process)d %(levelname)s %(message)s"
LOG_LINE = re.compile(r"^(?P<time>[\d.]+) (?P<pid>\d+) (?P<level>\w+) (?P<message>.*)$")
PRUNE_START = r"prune of .* started"
PRUNE_END = r"pruned \d+ expired sessions"
PRUNE_FAILED = r"pruning expired sessions .* failed"
PRUNE_JOB_STARTED = r"prune job of .* started"


def read_log(path: Path) -> list[tuple[float, int, str]]:
    """(time, pid, message) of each line written in :data:`LOG_FORMAT` (tracebacks skipped)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        match = LOG_LINE.match(line)
        if match:
            lines.append((float(match["time"]), int(match["pid"]), match["message"]))
    return lines


def matching(log: Iterable[tuple[float, int, str]], pattern: str) -> list[tuple[float, int, str]]:
    return [line for line in log if re.search(pattern, line[2])]


@dataclass(frozen=True)
class Prune:
    start: float
    end: float
    pid: int
    ok: bool  # False: it failed, or had not ended when the servers were stopped


def prune_runs(log: Iterable[tuple[float, int, str]], stopped_at: float) -> list[Prune]:
    """Each prune run of each process, from its start line to its end or failure line, by start time.

    Runs that start after ``stopped_at`` (the servers' shutdown) are left out;
    a run with no end by then lasts until ``stopped_at``.
    """
    runs, open_runs = [], {}
    for at, pid, message in sorted(log):
        if re.search(PRUNE_START, message):
            if at <= stopped_at:
                open_runs[pid] = at
        elif pid in open_runs and (re.search(PRUNE_END, message) or re.search(PRUNE_FAILED, message)):
            runs.append(Prune(open_runs.pop(pid), at, pid, ok=bool(re.search(PRUNE_END, message))))
    runs += [Prune(start, stopped_at, pid, ok=False) for pid, start in open_runs.items()]
    return sorted(runs, key=lambda run: run.start)


def overlapping(runs: list[Prune]) -> list[tuple[Prune, Prune]]:
    """The pairs of prune runs that were going on at the same time."""
    pairs, latest = [], None
    for run in runs:
        if latest is not None and run.start < latest.end:
            pairs.append((latest, run))
        if latest is None or run.end > latest.end:
            latest = run
    return pairs


def describe_runs(runs: list[Prune], since: float) -> str:
    return ", ".join(f"pid {run.pid} {run.start - since:.3f}-{run.end - since:.3f}" for run in runs)


def assert_one_prune_at_a_time(log: list[tuple[float, int, str]], stopped_at: float, interval: float) -> None:
    """The prune runs of every process never overlap and come about once per ``interval`` in total.

    About once: between half and one and a half times per interval (the job's
    jitter), counted from the first process that started the job.
    """
    runs = prune_runs(log, stopped_at)
    first = min((at for at, _, _ in matching(log, PRUNE_JOB_STARTED)), default=None)
    assert first is not None, "no process started the prune job"
    print(f"{len(runs)} prunes by {len({run.pid for run in runs})} processes: {describe_runs(runs, first)}")
    pairs = overlapping(runs)
    culprits = sorted({run.pid for pair in pairs for run in pair})
    assert not pairs, (
        f"{len(pairs)} pairs of prunes overlapped, by processes {culprits}"
        f" of {len({run.pid for run in runs})} that pruned: {describe_runs(runs, first)}"
    )
    intervals = (stopped_at - first) / interval
    assert intervals / 2 - 1 <= len(runs) <= intervals * 1.5 + 1, (
        f"{len(runs)} prunes in {intervals:.1f} intervals, by {len({run.pid for run in runs})} processes"
    )
