"""Pruning on every live database: batched deletes, the prune lock, the background job, forks."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webtest

from conftest import SECRET, StatementLog, checked_out
from tests.apps import session_app
from tests.process_helpers import in_child, wait_for
from tests.prune_helpers import connection_id, lease_of_another_process, live_rows, seed
from wsgi_dbsession import Options, SessionMiddleware, SessionStore
from wsgi_dbsession.prune import PruneLease, PruneScheduler, prune_once
from wsgi_dbsession.store import SessionStats, utcnow

MakeStore = Callable[..., SessionStore]
MakeApp = Callable[..., tuple[webtest.TestApp, SessionMiddleware]]
ROOT = Path(__file__).resolve().parent.parent


def scheduler_threads() -> int:
    return sum(thread.name == "APScheduler" and thread.is_alive() for thread in threading.enumerate())


@contextlib.contextmanager
def scheduler(store: SessionStore) -> Iterator[PruneScheduler]:
    """A scheduler whose job is driven by hand (run_once), released afterwards."""
    job = PruneScheduler(store, interval=60)
    try:
        yield job
    finally:
        job.shutdown()


# -- the batched delete -------------------------------------------------------


def test_prune_deletes_expired_rows_in_batches_each_committed(make_store: MakeStore) -> None:
    store = make_store()
    live = seed(store, expired=2500, live=20)
    log = StatementLog(store)
    batches = store.prune_batches(batch_size=1000)
    assert next(batches) == 1000
    # Another connection already sees the first batch gone: it was committed alone.
    assert make_store().count(expired=True) == 1500
    assert list(batches) == [1000, 500]
    assert len(log) == 3 and all(s.lstrip().upper().startswith("DELETE") for s in log.statements)
    assert store.stats() == SessionStats(live=20, expired=0)
    assert live_rows(store) == live
    assert store.prune() == 0


def test_a_row_expiring_at_the_prune_time_is_still_live(make_store: MakeStore) -> None:
    store = make_store()
    store.create_table()
    moment = utcnow().replace(microsecond=0)
    store.set("edge", {"x": 1}, moment)
    assert store.prune(moment) == 0
    assert store.prune(moment + dt.timedelta(seconds=1)) == 1


def test_prune_refuses_a_batch_size_below_one(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="at least 1"):
        store.prune(batch_size=0)
    # The middleware's options are checked once, where they are declared.
    with pytest.raises(ValueError, match="cleanup_batch_size must be a positive number of rows"):
        Options(secret=SECRET, cleanup_batch_size=0)
    with pytest.raises(ValueError, match="cleanup_interval must be 0"):
        Options(secret=SECRET, cleanup_interval=-1)


# -- the prune lease -------------------------------------------------------------


def test_one_holder_of_the_prune_lease_at_a_time(make_store: MakeStore) -> None:
    # Two stores, two engines: two pools, as two processes would have.
    first, second = make_store(), make_store()
    seed(first, expired=5, live=0)
    mine, theirs = PruneLease(first), lease_of_another_process(second)
    assert mine.try_acquire()
    assert mine.try_acquire(), "the holder renews its own lease"
    assert not theirs.try_acquire()
    assert prune_once(second) is None
    assert second.count(expired=True) == 5
    assert PruneLease(make_store(table_name=f"{first.table.name}_other")).try_acquire()
    mine.release()
    assert prune_once(second) == 5
    assert theirs.try_acquire()
    theirs.release()
    assert checked_out(first) == checked_out(second) == 0


def test_a_lapsed_lease_is_taken_over_and_its_old_holder_stops_pruning(make_store: MakeStore) -> None:
    leader_store, follower_store = make_store(), make_store()
    seed(leader_store, expired=10, live=0)
    with scheduler(leader_store) as leader, scheduler(follower_store) as follower:
        follower.lease = PruneLease(follower_store, duration=follower.lease.duration, holder="another one")
        assert leader.run_once() == 10
        assert follower.run_once() is None  # the leader keeps the lease between its runs
        # The leader stops renewing (it died, or stalled): its lease lapses.
        lease = leader.lease.table
        leader_store.run(
            lambda conn: conn.execute(sa.update(lease).values(expires=utcnow() - dt.timedelta(seconds=1)))
        )
        seed(follower_store, expired=5, live=0)
        assert follower.run_once() == 5
        assert leader.run_once() is None  # the follower holds it now
        assert not leader.lease.held
    assert checked_out(leader_store) == 0


def lease_is_free(store: SessionStore) -> bool:
    lease = PruneLease(store, holder="a prober")
    taken = lease.try_acquire()
    lease.release()
    return taken


def test_a_failing_prune_is_logged_and_retried_at_the_next_run(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(create_table=False)  # its table does not exist yet
    with scheduler(store) as job:
        with caplog.at_level(logging.ERROR, logger="wsgi_dbsession.prune"):
            assert job.run_once() is None
        assert "retrying at the next interval" in caplog.text
        seed(store, expired=3, live=1)
        assert job.run_once() == 3
    assert checked_out(store) == 0


def test_a_second_run_in_the_same_process_while_one_is_running_does_nothing(make_store: MakeStore) -> None:
    store = make_store()
    seed(store, expired=30, live=0)
    job = PruneScheduler(store, interval=60, batch_size=10)
    deleting, go_on = threading.Event(), threading.Event()

    def hold_first_delete(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and not deleting.is_set():
            deleting.set()
            go_on.wait(10)

    sa.event.listen(store.engine, "before_cursor_execute", hold_first_delete)
    results: list[int | None] = []
    running = threading.Thread(target=lambda: results.append(job.run_once()))
    try:
        running.start()
        assert deleting.wait(10)
        assert job.run_once() is None
    finally:
        go_on.set()
        running.join()
        job.shutdown()
    assert results == [30]


def test_shutdown_during_a_long_prune_returns_and_stops_it_after_the_current_batch(
    make_store: MakeStore,
) -> None:
    batch, batches = 10, 40
    store = make_store()
    live, table = seed(store, expired=batch * batches, live=3), store.table.name
    job = PruneScheduler(store, interval=60, batch_size=batch)
    deletes: list[str] = []
    in_first_batch, finish_batch = threading.Event(), threading.Event()

    def hold_the_first_batch(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # A batch of the prune: a DELETE from the sessions table (not from a table of the lock's).
        if statement.lstrip().upper().startswith("DELETE") and re.search(rf"\b{table}\b", statement):
            deletes.append(statement)
            if len(deletes) == 1:
                in_first_batch.set()
                finish_batch.wait(60)

    sa.event.listen(store.engine, "before_cursor_execute", hold_the_first_batch)
    results: list[int | None] = []
    pruning = threading.Thread(target=lambda: results.append(job.run_once()))
    pruning.start()
    try:
        assert in_first_batch.wait(60)
        # The batch cannot end while shutdown waits: shutdown gives up at its timeout.
        started = time.monotonic()
        job.shutdown(timeout=0.2)
        assert time.monotonic() - started < 30
    finally:
        finish_batch.set()
        pruning.join(60)
    assert not pruning.is_alive()
    assert results == [batch], "the prune stopped after the batch it was in"
    assert len(deletes) == 1
    assert store.count(expired=True) == batch * (batches - 1)
    assert live_rows(store) == live
    job.shutdown(timeout=30)  # nothing runs now: it returns, and gives the prune lock back
    with scheduler(make_store(table_name=store.table.name)) as other:
        assert other.run_once() == batch * (batches - 1)


# -- the background job ---------------------------------------------------------


def test_the_first_request_starts_one_job_that_prunes_until_close(
    make_app: MakeApp, make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    app, middleware = make_app(session_app, cleanup_interval=0.2, cleanup_batch_size=7)
    store, job = middleware.store, middleware.manager.pruner
    assert job is not None and not job.started
    live = seed(store, expired=30, live=3)
    threads = scheduler_threads()
    with caplog.at_level(logging.INFO, logger="wsgi_dbsession.prune"):
        for _ in range(5):
            app.get("/unused")
        assert scheduler_threads() == threads + 1
        wait_for(lambda: store.count(expired=True) == 0)
        # The run logs its total after its last DELETE: the table can be seen empty first.
        wait_for(lambda: any(record.getMessage().startswith("pruned ") for record in caplog.records))
    assert live_rows(store) == live
    assert any(record.getMessage().startswith("pruned 30 expired sessions") for record in caplog.records), (
        caplog.text
    )
    middleware.close()
    wait_for(lambda: scheduler_threads() == threads)
    assert checked_out(store) == 0
    assert lease_is_free(make_store(table_name=store.table.name))  # close() gave the lease back


def test_the_process_exits_promptly_and_quietly_with_the_job_running(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import logging, os, threading, time
        from wsgi_dbsession import SessionMiddleware
        from tests.prune_helpers import seed

        logging.basicConfig(level=logging.INFO)
        def app(environ, start_response):
            start_response("200 OK", [])
            return [b""]
        middleware = SessionMiddleware(
            app, secret={SECRET!r}, url="sqlite:///{tmp_path}/s.sqlite", cleanup_interval=0.1
        )
        pruned = threading.Event()

        class Pruned(logging.Handler):
            def emit(self, record):
                if record.getMessage().startswith("pruned 5 expired sessions"):
                    pruned.set()

        logging.getLogger("wsgi_dbsession").addHandler(Pruned())
        seed(middleware.store, expired=5, live=0)
        middleware({{"REQUEST_METHOD": "GET", "PATH_INFO": "/"}}, lambda *a: None)
        assert pruned.wait(60), "the job never pruned"
        os.write(2, f"\\nexiting {{time.time()}}\\n".encode())  # one write: no log line splits it
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    exited = time.time()
    assert done.returncode == 0, done.stderr
    assert "pruned 5 expired sessions" in done.stderr
    (leaving,) = re.findall(r"^exiting ([\d.]+)$", done.stderr, re.MULTILINE)
    # Exit waits at most a second for the job (atexit); the rest is margin for a loaded machine.
    assert exited - float(leaving) < 10
    assert "Traceback" not in done.stderr and "Logging error" not in done.stderr


# -- forks ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_forked_child_gets_its_own_connections(make_store: MakeStore) -> None:
    store = make_store()
    store.create_table()
    parent = connection_id(store)
    read, write = os.pipe()

    def report() -> bool:
        os.write(write, str(connection_id(store)).encode())
        return True

    assert in_child(report) == 0
    os.close(write)
    with os.fdopen(read) as pipe:
        child = int(pipe.read())
    assert child != parent
    assert connection_id(store) == parent  # the child left the parent's connection working


def test_a_forked_child_neither_holds_nor_frees_its_parent_s_prune_lock(make_store: MakeStore) -> None:
    store = make_store()
    seed(store, expired=5, live=0)
    with scheduler(store) as job:
        assert job.run_once() == 5  # this process holds the lock now
        job.ensure_started()

        def child() -> bool:
            return not job.started and not job.lease.held and job.run_once() is None

        assert in_child(child) == 0
        assert not lease_is_free(make_store())
        seed(store, expired=4, live=0)
        assert job.run_once() == 4  # the parent's hold, and its connection, survived the child
