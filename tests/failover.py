"""What the failover tests (issue 26) share: the HA services, killing a server, and clients under load.

``.ci/services.sh`` starts the services: two PostgreSQL 15 nodes managed by
Patroni on 127.0.0.1:5441 and 5442 (REST API on 8441 and 8442, synchronous
replication), HAProxy on 127.0.0.1:5440 to whichever is primary, and HAProxy
on 127.0.0.1:3310 to the first live node of the Galera cluster
(tests/topology.py). Run again, it starts a killed node, which rejoins its
cluster. Environment variables point the tests elsewhere.

The servers are found by their command lines: Patroni daemonises PostgreSQL,
so a postmaster's parent is init, never its Patroni.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql

from conftest import stop_process
from tests.topology import ROOT, START_SERVICES, free_port, get, service_missing, session_cookie
from wsgi_dbsession import SessionStore

SERVICES_DIR = Path(os.environ.get("WSGI_DBSESSION_SERVICES_DIR", "/var/tmp/wsgi_dbsession-services"))
PATRONI_PORTS = (5441, 5442)
PATRONI_REST_PORTS = (8441, 8442)
HAPROXY_PG_URL = os.environ.get("WSGI_DBSESSION_HAPROXY_PG_URL", "postgresql://postgres@127.0.0.1:5440/test")
# libpq tries each host in turn and keeps the one that takes writes.
MULTIHOST_URL = os.environ.get(
    "WSGI_DBSESSION_MULTIHOST_URL",
    "postgresql://postgres@/test?host=127.0.0.1:5441&host=127.0.0.1:5442&target_session_attrs=read-write",
)
HAPROXY_GALERA_URL = os.environ.get("WSGI_DBSESSION_HAPROXY_GALERA_URL", "mysql://root@127.0.0.1:3310/test")
HAPROXY_GALERA_NODE = 1  # balance first: HAProxy sends every connection to node 1 while it is up


# -- processes ------------------------------------------------------------------


def pids_matching(text: str) -> list[int]:
    """The processes whose command line (arguments joined by spaces) contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if text in b" ".join(args).decode(errors="replace") and proc.name != str(os.getpid()):
            found.append(int(proc.name))
    return found


def kill_9(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it died already
            os.kill(pid, signal.SIGKILL)


def restart_services(*names: str) -> str:
    """Run ``.ci/services.sh`` for ``names``: a killed node starts again and rejoins. Its output."""
    done = subprocess.run(
        ["bash", START_SERVICES, *names], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{START_SERVICES} {' '.join(names)} failed: {done.stdout}{done.stderr}"
    return done.stdout.strip()


# -- Patroni --------------------------------------------------------------------


def patroni_answers(node: int, path: str) -> bool:
    """Whether node ``node`` (1 or 2)'s REST API answers 200 on ``path`` (``/primary``, ``/replica``)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{PATRONI_REST_PORTS[node - 1]}{path}", timeout=3):
            return True
    except OSError:  # HTTPError (503: not in that role) is an OSError too
        return False


def patroni_primary() -> int | None:
    return next((node for node in (1, 2) if patroni_answers(node, "/primary")), None)


def require_patroni() -> int:
    """One node is primary and the other its synchronous standby; returns the primary's number."""
    primary = patroni_primary()
    if primary is None:
        service_missing("no Patroni node answers 200 on /primary (127.0.0.1:8441, 8442)")
    assert primary is not None
    if not patroni_answers(3 - primary, "/sync"):
        service_missing(f"Patroni node {3 - primary} is not the synchronous standby")
    return primary


def kill_patroni_node(node: int) -> None:
    """``kill -9`` of a node's Patroni daemon (so that it cannot restart PostgreSQL) and postmaster."""
    daemon = pids_matching(f"{SERVICES_DIR}/patroni/pg{node}.yml")
    postmaster = [
        pid
        for pid in pids_matching(f"-D {SERVICES_DIR}/patroni/pg{node}/data")
        if Path(f"/proc/{pid}/exe").resolve().name == "postgres"
    ]
    assert daemon and postmaster, f"Patroni node {node}: daemon {daemon}, postmaster {postmaster}"
    kill_9(daemon + postmaster)


def takes_writes(node: int) -> bool:
    """Whether node ``node`` commits a write now (waiting for its synchronous standby, if it has one)."""
    try:
        with psycopg.connect(
            host="127.0.0.1", port=PATRONI_PORTS[node - 1], user="postgres", dbname="test",
            connect_timeout=2, autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute("SET statement_timeout = '2s'")
            conn.execute("SELECT txid_current()")
            return True
    except psycopg.Error:
        return False


# -- Galera ---------------------------------------------------------------------


def kill_galera_node(node: int) -> None:
    pids = pids_matching(f"--defaults-file={SERVICES_DIR}/galera/node{node}.cnf")
    assert pids, f"Galera node {node} is not running"
    kill_9(pids)


# -- a read-only MariaDB of the test's own ---------------------------------------------


@contextlib.contextmanager
def read_only_mariadb(table: str) -> Iterator[str]:
    """A MariaDB server of its own with ``read_only=1`` and the sessions table ``table``; yields its URL.

    Its user ``app`` has every right on ``test`` but not the one that bypasses
    ``read_only``: its writes get error 1290, as on a replica. (``SET GLOBAL``
    on the shared servers would reach every other test.)
    """
    # Not under pytest's tmp_path: its parents are closed to the mysql user.
    workdir = Path(tempfile.mkdtemp(prefix="wsgi_dbsession-read-only-"))
    data, port = workdir / "data", free_port()
    data.mkdir()
    shutil.chown(workdir, "mysql", "mysql")
    shutil.chown(data, "mysql", "mysql")
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql", "--skip-test-db",
         "--auth-root-authentication-method=normal"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = subprocess.Popen(
        ["mariadbd", "--no-defaults", f"--datadir={data}", "--user=mysql", f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={workdir}/mysqld.sock", f"--pid-file={workdir}/mysqld.pid",
         "--skip-name-resolve", f"--log-error={workdir}/error.log", "--innodb-buffer-pool-size=16M",
         "--performance-schema=OFF"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"mysql://app@127.0.0.1:{port}/test"
        deadline = time.monotonic() + 60
        while True:
            try:
                root = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=2)
                break
            except pymysql.err.OperationalError:
                error_log = workdir / "error.log"  # the server may not have written it yet
                log = error_log.read_text(errors="replace") if error_log.exists() else ""
                assert server.poll() is None and time.monotonic() < deadline, log
                time.sleep(0.2)
        with root.cursor() as cursor:
            cursor.execute("CREATE DATABASE test")
            cursor.execute("CREATE USER app@'127.0.0.1'")
            cursor.execute("GRANT ALL ON test.* TO app@'127.0.0.1'")
        SessionStore(url=url, table_name=table).create_table()
        with root.cursor() as cursor:
            cursor.execute("SET GLOBAL read_only = 1")
        root.close()
        yield url
    finally:
        stop_process(server, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


# -- clients under load -------------------------------------------------------------


@dataclass
class Outcome:
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer (the error is in ``error``)
    value: int | None = None
    error: str = ""


@dataclass
class Writer:
    """One browser adding 1 to ``/key/<key>`` of its session, request after request, until stopped."""

    port: int
    key: str
    cookie: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def run(self, stop: threading.Event, pause: float) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = get(self.port, f"/key/{self.key}", self.cookie)
            except Exception as exc:
                self.outcomes.append(Outcome(started, time.monotonic(), None, error=repr(exc)))
            else:
                outcome = Outcome(started, time.monotonic(), response.status, error=repr(response.body[:200]))
                if response.status == 200:
                    answer = json.loads(response.body)
                    outcome.value = answer["value"]
                    self.cookie = session_cookie(response) or self.cookie
                self.outcomes.append(outcome)
            time.sleep(pause)

    def acknowledged(self) -> list[int]:
        return [outcome.value for outcome in self.outcomes if outcome.value is not None]


def writers_of(port: int, own: int, shared: int, shared_cookie: str) -> list[Writer]:
    """``own`` browsers with a session each and ``shared`` sharing one, each writing a key of its own."""
    return [Writer(port, "n") for _ in range(own)] + [
        Writer(port, f"w{number}", shared_cookie) for number in range(shared)
    ]


class Load:
    """Writers running in threads until :meth:`stop`."""

    def __init__(self, writers: list[Writer], pause: float) -> None:
        self.writers = writers
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=w.run, args=(self.stop_event, pause)) for w in writers]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=120)


@dataclass
class Switch:
    """What the clients of one server saw around a failover (times in seconds from the kill)."""

    requests: int
    in_flight: int  # requests that had started and not ended when the server died
    unavailable: int  # answered 503
    other_errors: list[str]  # any other status, or no answer
    window: tuple[float, float] | None  # when the first and last 503 started, from the kill
    failed_after_recovery: list[str]  # not 200 though started 5 s after the new server took writes
    regressions: list[str]  # an acknowledged value followed by a lower or equal one: a lost write
    slowest: float  # seconds: the longest request that was going on at the kill or started after it

    def line(self, name: str, writable: float) -> str:
        window = f"{self.window[0]:.1f}-{self.window[1]:.1f} s" if self.window else "none"
        return (
            f"{name}: {self.requests} requests, {self.in_flight} in flight at the kill,"
            f" {self.unavailable} 503s (from the kill: {window}),"
            f" slowest request {self.slowest:.1f} s, {len(self.other_errors)} other errors,"
            f" new server took writes {writable:.1f} s after the kill,"
            f" {len(self.regressions)} acknowledged writes lost"
        )


def switch_of(writers: list[Writer], killed: float, writable: float, recovery: float = 5.0) -> Switch:
    outcomes = [outcome for writer in writers for outcome in writer.outcomes]
    unavailable = sorted(o.started - killed for o in outcomes if o.status == 503)
    regressions = []
    for writer in writers:
        values = writer.acknowledged()
        regressions += [
            f"{writer.key}: {before} then {after}"
            for before, after in itertools.pairwise(values)
            if after <= before
        ]
    return Switch(
        requests=len(outcomes),
        in_flight=sum(1 for o in outcomes if o.started <= killed < o.ended),
        unavailable=len(unavailable),
        other_errors=[f"{o.status}: {o.error}" for o in outcomes if o.status not in (200, 503)],
        window=(unavailable[0], unavailable[-1]) if unavailable else None,
        failed_after_recovery=[
            f"{o.started - killed:.1f} s: {o.status} {o.error}"
            for o in outcomes
            if o.started > writable + recovery and o.status != 200
        ],
        regressions=regressions,
        slowest=max((o.ended - o.started for o in outcomes if o.ended > killed), default=0.0),
    )


def new_shared_session(port: int) -> str:
    """The cookie of a new session that several writers then share."""
    response = get(port, "/key/seed")
    cookie = session_cookie(response)
    assert response.status == 200 and cookie is not None, response
    return cookie
