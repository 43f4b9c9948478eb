"""Many requests writing one session at once (issue 12, acceptance 5), on PostgreSQL, MariaDB and SQLite.

A single-page app fires parallel calls on one session: 20 writers, each
changing its own key 50 times in sequence, through real gunicorn (2 gthread
workers x 10 threads, direct database connections), beside a CPU-heavy
process, with the package's engine and with one the user built with plain
``sqlalchemy.create_engine()`` (SQLite's lost updates, issue 22). Every request must
succeed (no 500 ``ConcurrentUpdateError``: a lost race is retried or merged,
never an error page) and no change may be lost: each writer is answered 1 to
50 in turn, and the stored session ends with every key at 50.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import backend_url, drop_table, unique_table_name
from tests.topology import (
    ENGINE_KINDS,
    Client,
    cpu_load,
    error_summary,
    exceptions_logged,
    get,
    run_clients,
    server_errors,
    session_cookie,
    sid_of,
    start_topology_apps,
)
from wsgi_dbsession import SessionStore

pytestmark = pytest.mark.slow

WORKERS, THREADS = 2, 10
WRITERS, REQUESTS = 20, 50


@pytest.mark.parametrize("engine", ENGINE_KINDS)
@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
def test_twenty_writers_on_one_session_lose_nothing(
    backend: str, engine: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = backend_url(backend, tmp_path_factory)
    store = SessionStore(url=url, table_name=unique_table_name("contention"))
    store.create_table()
    app_log = tmp_path / "app.log"
    servers = start_topology_apps(
        url, store.table.name, tmp_path, count=WORKERS, threads=THREADS, engine=engine
    )
    try:
        ports = [server.port for server in servers]
        first = get(ports[0], "/key/seed")
        assert first.status == 200, first.body
        cookie = session_cookie(first)
        assert cookie is not None
        writers = [Client(ports, f"/key/w{n}", REQUESTS, "value", cookie=cookie) for n in range(WRITERS)]
        with cpu_load():
            elapsed = run_clients(writers)
    finally:
        exit_codes = [server.stop() for server in servers]
    try:
        errors = [error for writer in writers for error in writer.errors]
        print(f"{WRITERS * REQUESTS} writes to one session in {elapsed:.1f} s, {len(errors)} errors")
        failed_writers = sum(1 for writer in writers if writer.errors)
        assert not errors, (
            f"{len(errors)} of {WRITERS * REQUESTS} requests failed, {failed_writers} of {WRITERS} writers"
            f" got an error: {error_summary(errors)};"
            f" logged: {exceptions_logged(app_log.read_text() + ''.join(s.log_text() for s in servers))}"
        )
        assert len(set().union(*(writer.pids for writer in writers))) == WORKERS, "both workers served"
        for n, writer in enumerate(writers):
            assert writer.answers == list(range(1, REQUESTS + 1)), f"writer {n}: {writer.answers}"
        stored = store.get(sid_of(cookie))
        assert stored is not None
        assert {f"w{n}": stored.get(f"w{n}") for n in range(WRITERS)} == {
            f"w{n}": REQUESTS for n in range(WRITERS)
        }, "a change was lost"
        assert stored["seed"] == 1
        assert store.count() == 1, "one session, no strays"
        log = "".join(server.log_text() for server in servers)
        assert exit_codes == [0] * WORKERS, log
        assert not server_errors(log), log[-3000:]
    finally:
        drop_table(store.engine, store.table)
        store.dispose()
