"""Under real uWSGI (issue 12, acceptance 4; issue 13, a complete 503 through uWSGI).

uWSGI loads the app in its master and forks the workers with C ``fork()``:
no ``os.register_at_fork`` hook runs in them, so the package must notice by
itself that a connection, scheduler or lock came from another process. The
app (tests/servers/topology_app.py) uses the database at import, before the
fork: it creates its table and reads a session. Two pre-forked workers (no
``lazy-apps``), ``cleanup_interval=1`` over a table with expired rows:

- 8 clients x 25 requests with their own sessions: no error, every answer the
  next number, every stored count exact;
- the prune job runs in one process at a time, about once per interval, and
  never fails; every expired row goes, every live row stays.

On PostgreSQL and MariaDB, direct connections.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from conftest import LIVE_URLS, SECRET, drop_table, unique_table_name
from tests.prune_helpers import live_rows, seed
from tests.topology import (
    Client,
    assert_one_prune_at_a_time,
    error_summary,
    exceptions_logged,
    free_port,
    get,
    matching,
    read_log,
    run_clients,
    server_errors,
    sid_of,
    start_uwsgi,
)
from wsgi_dbsession import SessionStore, generate_sid, sign
from wsgi_dbsession.cookies import encode_value

pytestmark = pytest.mark.slow

PROCESSES = 2
CLIENTS, REQUESTS = 8, 25
INTERVAL = 1.0  # seconds: the cleanup_interval under test
RUNNING = 6.0  # seconds the server runs at least, so the prune job runs several times
EXPIRED, LIVE = 2000, 200


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_two_preforked_workers_app_using_the_database_at_import(backend: str, tmp_path: Path) -> None:
    url = LIVE_URLS[backend]
    store = SessionStore(url=url, table_name=unique_table_name("uwsgi"))
    live_before = seed(store, expired=EXPIRED, live=LIVE)
    app_log = tmp_path / "app.log"
    env = {
        "TOPOLOGY_APP_URL": url,
        "TOPOLOGY_APP_TABLE": store.table.name,
        "TOPOLOGY_APP_LOG": str(app_log),
        "TOPOLOGY_APP_INTERVAL": str(INTERVAL),
        "TOPOLOGY_APP_AT_IMPORT": "1",
    }
    try:
        server = start_uwsgi(
            "tests.servers.topology_app:app", env, tmp_path / "uwsgi.log", processes=PROCESSES
        )
        try:
            started = time.monotonic()
            clients = [Client([server.port], "/count", REQUESTS, "count") for _ in range(CLIENTS)]
            elapsed = run_clients(clients)
            time.sleep(max(0.0, started + RUNNING - time.monotonic()))
        finally:
            stopped_at = time.time()
            exit_code = server.stop()
        log, server_log = read_log(app_log), server.log_text()
        errors = [error for client in clients for error in client.errors]
        print(f"{CLIENTS * REQUESTS} requests in {elapsed:.1f} s, {len(errors)} errors")
        assert len(matching(log, r"app imported, used the database")) == 1, (
            "the app is loaded once, in the master"
        )
        failed_clients = sum(1 for client in clients if client.errors)
        assert not errors, (
            f"{len(errors)} of {CLIENTS * REQUESTS} requests failed, {failed_clients} of {CLIENTS} clients"
            f" got an error: {error_summary(errors)};"
            f" logged: {exceptions_logged(app_log.read_text() + server_log)}"
        )
        for client in clients:
            assert client.answers == list(range(1, REQUESTS + 1)), client.answers
            assert client.cookie is not None
            stored = store.get(sid_of(client.cookie))
            assert stored is not None and stored["count"] == REQUESTS, stored
        assert len(set().union(*(client.pids for client in clients))) == PROCESSES, "both workers served"

        failed = matching(log, r"pruning expired sessions .* failed")
        assert not failed, f"{len(failed)} prunes failed; logged: {exceptions_logged(app_log.read_text())}"
        assert_one_prune_at_a_time(log, stopped_at, INTERVAL)
        assert store.count(expired=True) == 0
        assert {sid: text for sid, text in live_rows(store).items() if sid in live_before} == live_before
        assert exit_code == 0, server_log[-3000:]
        assert not server_errors(app_log.read_text()), app_log.read_text()[-3000:]
    finally:
        drop_table(store.engine, store.table)
        store.dispose()


def test_an_unreachable_store_answers_a_complete_503(tmp_path: Path) -> None:
    # Nothing listens on this port: every session load fails to connect.
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    env = {"TOPOLOGY_APP_URL": url, "TOPOLOGY_APP_TABLE": unique_table_name("uwsgi")}
    server = start_uwsgi("tests.servers.topology_app:app", env, tmp_path / "uwsgi.log", processes=PROCESSES)
    try:
        # Once as a new visitor (the save fails), once with a cookie (the load fails).
        cookie = f"connect.sid={encode_value(sign(generate_sid(), SECRET))}"
        responses = [get(server.port, "/count"), get(server.port, "/read", cookie)]
    except http.client.IncompleteRead as exc:
        pytest.fail(f"the body was cut short: {exc!r}; uWSGI logged: {server.log_text()[-1500:]}")
    finally:
        server.stop()
    for response in responses:
        assert response.status == 503, (response.status, response.body)
        length = response.headers.get("Content-Length")
        assert response.body, f"an empty body (Content-Length: {length}): {server.log_text()[-2000:]}"
        assert length is None or int(length) == len(response.body), (length, response.body)
        assert b"unavailable" in response.body, response.body
    assert "SystemError" not in server.log_text(), server.log_text()[-3000:]
