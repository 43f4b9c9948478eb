"""On a real 3-node MariaDB Galera cluster (issue 12, acceptance 3), app processes on different nodes.

The cluster comes from ``.ci/services.sh`` (tests/topology.py says where).
Galera certifies each write cluster-wide at commit: the loser of a conflict
gets error 1213 even for an autocommit statement; ``GET_LOCK`` is node-local;
DDL replicates in total order. Each server below is a real gunicorn connected
to its own node, as behind a load balancer.

- One session, 15 writers (5 per node) x 30 increments of their own key,
  beside a CPU-heavy process: no 5xx, no lost increment.
- Each of these with the package's engine and with one the user built with
  plain ``sqlalchemy.create_engine()``.
- Distinct sessions, 15 clients (5 per node) x 30 increments: no error, every
  count exact.
- Pruning: 2 sync workers per node, ``cleanup_interval=1``, a backlog of
  expired rows and more arriving: prunes never overlap across the cluster,
  come about once per interval, never fail; expired rows go, live rows stay.
- First use of a fresh table by 3 processes (one per node) at once, 8 times:
  no error reaches a caller, and every node has the table and its index.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from conftest import SECRET, drop_table, unique_table_name
from tests.prune_helpers import DAY, live_rows, seed, session_text
from tests.topology import (
    ENGINE_KINDS,
    GALERA_URLS,
    Client,
    Server,
    assert_one_prune_at_a_time,
    cpu_load,
    error_summary,
    exceptions_logged,
    get,
    matching,
    read_log,
    require_galera,
    run_clients,
    server_errors,
    session_cookie,
    sid_of,
    start_gunicorn,
)
from tests.topology_workers import first_use
from wsgi_dbsession import SessionStore, generate_sid, sign
from wsgi_dbsession.cookies import encode_value
from wsgi_dbsession.store import utcnow

pytestmark = pytest.mark.slow

WRITERS, INCREMENTS = 15, 30


@pytest.fixture(scope="module", autouse=True)
def galera() -> None:
    require_galera()


def node_query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on one node, over a connection of its own."""
    parts = sa.make_url(url)
    conn = pymysql.connect(
        host=parts.host, port=parts.port or 3306, user=parts.username, password=parts.password or "",
        database=parts.database, connect_timeout=5,
    )  # fmt: skip
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())
    finally:
        conn.close()


def wait_on_every_node(sql: str, *args: Any, timeout: float = 10) -> None:
    """Until ``sql`` returns a row on every node (replication has reached them)."""
    deadline = time.monotonic() + timeout
    for url in GALERA_URLS:
        while not node_query(url, sql, *args):
            assert time.monotonic() < deadline, f"not on {url} after {timeout} s: {sql} {args}"
            time.sleep(0.05)


# -- requests on each node ---------------------------------------------------------


class Counters:
    """One gunicorn per node serving tests/servers/topology_app.py on one table."""

    def __init__(self, workdir: Path, engine: str) -> None:
        self.store = SessionStore(url=GALERA_URLS[0], table_name=unique_table_name("galera"))
        self.store.create_table()
        self.app_log = workdir / "app.log"
        self.servers: list[Server] = []
        for n, url in enumerate(GALERA_URLS):
            env = {
                "TOPOLOGY_APP_URL": url,
                "TOPOLOGY_APP_TABLE": self.store.table.name,
                "TOPOLOGY_APP_LOG": str(self.app_log),
                "TOPOLOGY_APP_ENGINE": engine,
            }
            self.servers.append(
                start_gunicorn(
                    "tests.servers.topology_app:app", env, workdir / f"gunicorn-{n}.log", workers=1, threads=5
                )
            )
        self.ports = [server.port for server in self.servers]

    def failure(self, clients: list[Client]) -> str:
        errors = [error for client in clients for error in client.errors]
        failed = sum(1 for client in clients if client.errors)
        return (
            f"{len(errors)} of {sum(c.requests for c in clients)} requests failed, {failed} of {len(clients)}"
            f" clients got an error: {error_summary(errors)};"
            f" logged: {exceptions_logged(self.app_log.read_text() + self.server_logs())}"
        )

    def server_logs(self) -> str:
        return "".join(server.log_text() for server in self.servers)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        drop_table(self.store.engine, self.store.table)
        self.store.dispose()


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def counters(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Counters]:
    built = Counters(tmp_path_factory.mktemp("galera-counters"), request.param)
    try:
        yield built
    finally:
        built.close()


def test_one_session_15_writers_on_3_nodes_lose_nothing(counters: Counters) -> None:
    first = get(counters.ports[0], "/key/seed")
    assert first.status == 200, first.body
    cookie = session_cookie(first)
    assert cookie is not None
    # The writers start once the new session has reached every node.
    sid = sid_of(cookie)
    wait_on_every_node(f"SELECT 1 FROM `{counters.store.table.name}` WHERE sid = %s", sid)
    writers = [
        Client([counters.ports[n % 3]], f"/key/w{n}", INCREMENTS, "value", cookie=cookie)
        for n in range(WRITERS)
    ]
    with cpu_load():  # a busy machine stretches the writers' turns (a 500 once, issue 22)
        elapsed = run_clients(writers)
    print(f"{WRITERS * INCREMENTS} writes to one session on 3 nodes in {elapsed:.1f} s")
    assert not any(writer.errors for writer in writers), counters.failure(writers)
    for n, writer in enumerate(writers):
        assert writer.answers == list(range(1, INCREMENTS + 1)), f"writer {n}: {writer.answers}"
    wait_on_every_node(f"SELECT 1 FROM `{counters.store.table.name}` WHERE sid = %s", sid)
    stored = counters.store.get(sid)
    assert stored is not None
    values = {f"w{n}": stored.get(f"w{n}") for n in range(WRITERS)}
    assert values == {f"w{n}": INCREMENTS for n in range(WRITERS)}, "an increment was lost"
    assert [writer.cookie for writer in writers] == [cookie] * WRITERS, "every writer kept the one session"


def test_distinct_sessions_on_3_nodes(counters: Counters) -> None:
    clients = [Client([counters.ports[n % 3]], "/count", INCREMENTS, "count") for n in range(WRITERS)]
    elapsed = run_clients(clients)
    print(f"{WRITERS * INCREMENTS} requests on 3 nodes in {elapsed:.1f} s")
    assert not any(client.errors for client in clients), counters.failure(clients)
    for client in clients:
        assert client.answers == list(range(1, INCREMENTS + 1)), client.answers
        assert client.cookie is not None
        stored = counters.store.get(sid_of(client.cookie))
        assert stored is not None and stored["count"] == INCREMENTS, stored


def test_the_servers_logged_no_error(counters: Counters) -> None:
    for server in counters.servers:
        assert not server_errors(server.log_text()), server.log_text()[-3000:]


# -- pruning across the cluster ---------------------------------------------------

WORKERS = 2  # per node
INTERVAL = 1.0
TRAFFIC = 10.0
TRICKLE = 6.0
TRICKLE_ROWS = 300  # expired rows added every 0.25 s, through each node in turn
BACKLOG, LIVE = 10_000, 500


def test_prunes_never_overlap_across_the_cluster_and_never_fail(tmp_path: Path) -> None:
    table = unique_table_name("galera_prune")
    store = SessionStore(url=GALERA_URLS[0], table_name=table)
    live = seed(store, expired=BACKLOG, live=LIVE)
    log_path = tmp_path / "prune.log"
    servers: list[Server] = []
    errors: list[str] = []
    wrong_reads: list[str] = []
    try:
        for n, url in enumerate(GALERA_URLS):
            env = {
                "PRUNE_APP_URL": url,
                "PRUNE_APP_TABLE": table,
                "PRUNE_APP_LOG": str(log_path),
                "PRUNE_APP_INTERVAL": str(INTERVAL),
                "PRUNE_APP_SECRET": SECRET,
            }
            servers.append(
                start_gunicorn(
                    "tests.servers.prune_app:app", env, tmp_path / f"gunicorn-{n}.log", workers=WORKERS
                )
            )
        deadline = time.monotonic() + 60
        while len(matching(read_log(log_path), r"app imported")) < WORKERS * len(servers):
            assert time.monotonic() < deadline, "the workers did not import the app in 60 s"
            time.sleep(0.1)
        started = time.monotonic()

        def read_live(port: int) -> None:
            sids = list(live)
            while time.monotonic() < started + TRAFFIC:
                sid = random.choice(sids)
                try:
                    response = get(port, "/", f"connect.sid={encode_value(sign(sid, SECRET))}")
                except Exception as exc:
                    errors.append(repr(exc))
                    continue
                if response.status != 200:
                    errors.append(f"{response.status}: {response.body[:200]!r}")
                elif (response.json()["data"] or {}).get("n") != json.loads(live[sid])["n"]:
                    wrong_reads.append(sid)
                time.sleep(0.05)

        def trickle() -> None:
            stores = [SessionStore(url=url, table_name=table, create_table=False) for url in GALERA_URLS]
            try:
                turn = 0
                while time.monotonic() < started + TRICKLE:
                    target = stores[turn % len(stores)]
                    expired = utcnow() - DAY
                    rows = [
                        {"sid": generate_sid(), "sess": session_text(expired, n), "expired": expired}
                        for n in range(TRICKLE_ROWS)
                    ]
                    with target.engine.connect() as conn:
                        conn.execute(target.table.insert(), rows)
                        conn.commit()
                    turn += 1
                    time.sleep(0.25)
            finally:
                for each in stores:
                    each.dispose()

        threads = [threading.Thread(target=read_live, args=(server.port,)) for server in servers]
        threads.append(threading.Thread(target=trickle))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stopped_at = time.time()
        exit_codes = [server.stop() for server in servers]
    try:
        log, log_text = read_log(log_path), log_path.read_text()
        assert exit_codes == [0] * len(servers), [server.log_text()[-2000:] for server in servers]
        failed = matching(log, r"pruning expired sessions .* failed")
        assert not failed, f"{len(failed)} prunes failed; logged: {exceptions_logged(log_text)}"
        assert_one_prune_at_a_time(log, stopped_at, INTERVAL)
        assert errors == [], error_summary(errors)
        assert wrong_reads == []
        for url in GALERA_URLS:
            on_node = SessionStore(url=url, table_name=table, create_table=False)
            try:
                assert on_node.count(expired=True) == 0, f"expired rows left on {url}"
                assert live_rows(on_node) == live, f"live rows lost on {url}"
            finally:
                on_node.dispose()
        for server in servers:
            assert not server_errors(server.log_text()), server.log_text()[-3000:]
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


# -- first use of a fresh table ------------------------------------------------------

ROUNDS = 8


def test_three_processes_on_three_nodes_make_first_use_of_a_fresh_table_at_once() -> None:
    tables = [unique_table_name("galera_first") for _ in range(ROUNDS)]
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(len(GALERA_URLS) + 1)
    results = spawn.Queue()
    processes = [
        spawn.Process(target=first_use, args=(url, SECRET, tables, barrier, results)) for url in GALERA_URLS
    ]
    for process in processes:
        process.start()
    missing: list[str] = []
    try:
        for table in tables:
            barrier.wait(timeout=60)  # they start
            barrier.wait(timeout=120)  # they are done
            deadline = time.monotonic() + 10  # for the DDL to reach every node
            for url in GALERA_URLS:
                indexes = _indexes_on(url, table, deadline)
                if f"{table}_expired_index" not in indexes:
                    missing.append(f"{table} on {url}: indexes {sorted(indexes) if indexes else 'no table'}")
            barrier.wait(timeout=60)
        errors = [error for _ in processes for error in results.get(timeout=60)]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        engine = SessionStore(url=GALERA_URLS[0], table_name=tables[0], create_table=False).engine
        with engine.connect() as conn:
            for table in tables:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS `{table}`"))
        engine.dispose()
    assert errors == [], (
        f"{len(errors)} of {len(tables) * len(GALERA_URLS)} first requests failed:\n" + "\n".join(errors)
    )
    assert missing == []


def _indexes_on(url: str, table: str, deadline: float) -> set[str]:
    """The index names of ``table`` on one node once its DDL got there (what is there at ``deadline``)."""
    while True:
        rows = node_query(
            url,
            "SELECT index_name FROM information_schema.statistics WHERE table_schema = DATABASE()"
            " AND table_name = %s",
            table,
        )
        names = {str(row[0]) for row in rows}
        if len(names) >= 2 or time.monotonic() > deadline:
            return names
        time.sleep(0.1)
