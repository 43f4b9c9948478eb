"""The prune job's edges, on every live database: a one-off prune's batches and lease,
and the log lines an operator reads.

Written for the survivors of the mutation run of prune.py (docs/reliability.md);
each was checked to fail with its mutant planted.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler

from conftest import LIVE_URLS, StatementLog, drop_table
from tests.process_helpers import in_child, wait_for
from tests.prune_helpers import hold_the_first_delete, lease_of_another_process, live_rows, seed
from tests.schema_helpers import scratch_schema
from wsgi_dbsession import SessionStore
from wsgi_dbsession.prune import PruneLease, PruneScheduler, prune_held, prune_once
from wsgi_dbsession.store import utcnow

MakeStore = Callable[..., SessionStore]
ROOT = Path(__file__).resolve().parent.parent


def deletes_from(store: SessionStore, log: StatementLog) -> list[str]:
    """The statements of ``log`` that delete from ``store``'s sessions table (not its lease table)."""
    table = store.table.name
    return [
        sql
        for sql in log.statements
        if sql.lstrip().upper().startswith("DELETE") and re.search(rf"\b{table}\b", sql)
    ]


def test_a_one_off_prune_deletes_in_batches_of_its_size_renewing_its_lease(make_store: MakeStore) -> None:
    store = make_store()
    live = seed(store, expired=5, live=2)
    log = StatementLog(store)
    assert prune_once(store, batch_size=2) == 5
    assert len(deletes_from(store, log)) == 3, log.statements  # 2 + 2 + 1
    assert live_rows(store) == live
    assert store.count(expired=True) == 0


def test_a_one_off_prune_while_another_process_holds_the_lease_says_so_naming_the_table(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    seed(store, expired=3, live=0)
    holder = lease_of_another_process(make_store())
    assert holder.try_acquire()
    with caplog.at_level(logging.INFO, logger="wsgi_dbsession.prune"):
        assert prune_once(store) is None
    assert [record.getMessage() for record in caplog.records if record.name == "wsgi_dbsession.prune"] == [
        f"another process holds the prune lease of {store.table.fullname!r}; nothing done"
    ]
    assert store.count(expired=True) == 3
    holder.release()


def test_the_job_runs_in_a_daemon_thread_and_adds_no_info_lines_of_apscheduler_s(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    # A daemon thread: the process exits without joining it (atexit then stops the job).
    # APScheduler's own INFO lines (scheduler started, job added, job run) are kept out
    # of an app logging at INFO; the package's lines say what happened.
    store = make_store()
    store.create_table()
    before = set(threading.enumerate())
    job = PruneScheduler(store, interval=60)
    try:
        with caplog.at_level(logging.INFO):
            job.ensure_started()
            job.run_once()
        (thread,) = [t for t in threading.enumerate() if t not in before and t.name == "APScheduler"]
        assert thread.daemon
    finally:
        job.shutdown()
    noisy = [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelno < logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_the_job_is_scheduled_every_interval_on_average_one_run_at_a_time_in_utc(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the scheduler is told: a run every 50-150 % of the interval (half of it, plus
    # up to the interval of jitter: workers started together drift apart), runs that
    # fell behind coalesced into one that still runs however late, never two at once,
    # on the package's own executor (its INFO lines are silenced), in UTC whatever the
    # server's local time zone. Timing this for real would take minutes and still be loose.
    # The scheduler is seen where the package hands it to APScheduler (its start), not
    # read from the job's private state.
    started: list[BackgroundScheduler] = []
    start = BackgroundScheduler.start

    def recording_start(self: BackgroundScheduler, *args: Any, **kwargs: Any) -> None:
        started.append(self)
        start(self, *args, **kwargs)

    monkeypatch.setattr(BackgroundScheduler, "start", recording_start)
    store = make_store()
    store.create_table()
    job = PruneScheduler(store, interval=40)
    try:
        with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession.prune"):
            job.ensure_started()
        (scheduler,) = started
        assert scheduler.timezone == dt.timezone.utc  # not the local zone, even one named UTC
        (scheduled,) = scheduler.get_jobs()
        trigger = scheduled.trigger
        assert trigger.interval == dt.timedelta(seconds=20)
        assert trigger.jitter == 40
        assert trigger.timezone == dt.timezone.utc
        assert (scheduled.coalesce, scheduled.max_instances, scheduled.misfire_grace_time) == (True, 1, None)
        assert scheduled.executor == "wsgi_dbsession"
        assert scheduled.func == job.run_once
    finally:
        job.shutdown()
    assert f"prune job of {store.table.fullname!r} started (pid {os.getpid()})" in [
        record.getMessage() for record in caplog.records
    ]


# -- the prune lease ---------------------------------------------------------------


def lease_rows(store: SessionStore) -> list[tuple[str, str, dt.datetime]]:
    lease = PruneLease(store).table
    return [tuple(row) for row in store.run(lambda conn: conn.execute(sa.select(lease)).all())]  # type: ignore[misc]


def test_the_lease_is_one_row_named_prune_in_a_table_beside_the_sessions_table(make_store: MakeStore) -> None:
    # Every process of a deployment, whatever its version (a rolling deploy), and the
    # command line look for this row: its table, name and columns are a contract.
    store = make_store()
    store.create_table()
    lease = PruneLease(store, duration=90)
    before = utcnow()
    assert lease.try_acquire()
    assert lease.table.name == f"{store.table.name}_lease"
    columns = {column["name"]: column for column in sa.inspect(store.engine).get_columns(lease.table.name)}
    assert list(columns) == ["name", "holder", "expires"]
    for name in ("name", "holder"):
        assert isinstance(columns[name]["type"], sa.String) and columns[name]["type"].length == 255, columns[
            name
        ]
    assert not any(column["nullable"] for column in columns.values())
    ((name, holder, expires),) = lease_rows(store)
    host, pid, tag = holder.rsplit(":", 2)
    assert (name, host, int(pid)) == ("prune", socket.gethostname()[:200], os.getpid())
    assert re.fullmatch(r"[0-9a-f]{8}", tag)
    assert before + dt.timedelta(seconds=89) <= expires <= utcnow() + dt.timedelta(seconds=91)
    lease.release()
    assert lease_rows(store) == []


# slow: waits for a lease to lapse on the database's clock, the same on every Python
@pytest.mark.slow
def test_a_lease_lapses_after_its_duration_and_not_before(make_store: MakeStore) -> None:
    store = make_store()
    store.create_table()
    mine, theirs = PruneLease(store, duration=1.5), lease_of_another_process(make_store())
    assert mine.try_acquire()
    assert not theirs.try_acquire(), "held: its expiry is ahead"
    expires = lease_rows(store)[0][2]
    lapse = expires + dt.timedelta(seconds=1)  # MariaDB keeps whole seconds here

    def take_over() -> bool:
        tried = utcnow()
        taken = theirs.try_acquire()
        assert taken or tried <= lapse, "lapsed: taken over"
        return taken

    wait_for(take_over)
    assert utcnow() > expires, "held until its expiry"
    mine.release()  # it still believes it holds the lease: giving it back must not free theirs
    assert lease_rows(store)[0][1] == "another process"
    assert not mine.try_acquire()
    theirs.release()


def test_the_job_holds_its_lease_for_three_intervals_and_at_least_thirty_seconds(
    make_store: MakeStore,
) -> None:
    # The holder renews at every run, 50-150 % of an interval apart: three intervals
    # outlast the longest gap, and the shortest hold outlasts any one batch.
    store = make_store()
    seed(store, expired=1, live=0)
    for interval, hold in ((60, 180), (5, 30)):
        job = PruneScheduler(store, interval=interval)
        try:
            before = utcnow()
            job.run_once()
            ((_, _, expires),) = lease_rows(store)
            # Stored to the second on MariaDB, to the millisecond on SQLite.
            assert before + dt.timedelta(seconds=hold - 1) <= expires <= utcnow() + dt.timedelta(seconds=hold)
        finally:
            job.shutdown()


def test_a_process_whose_id_is_1_starts_its_job_too(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a container the app may be process 1: "not started" must not look like it.
    store = make_store()
    store.create_table()
    job = PruneScheduler(store, interval=60)
    monkeypatch.setattr(os, "getpid", lambda: 1)
    try:
        assert not job.started
        job.ensure_started()
        assert job.started and job.running
        # Its lease names it as every other process: a holder of its own, not the empty one
        # every other process 1 (on other hosts) would share.
        assert re.fullmatch(rf"{re.escape(socket.gethostname()[:200])}:1:[0-9a-f]{{8}}", job.lease.holder)
        job.shutdown()
        assert not job.started, "stopped: a later ensure_started starts it again"
    finally:
        job.shutdown()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_the_lease_table_is_in_the_schema_of_the_sessions_table(backend: str, engine_for: Any) -> None:
    engine = engine_for(LIVE_URLS[backend])
    # A name of its own: another suite running at the same time has a "sessions" table too.
    table = f"sessions_{secrets.token_hex(4)}"
    with scratch_schema(engine) as schema:
        store = SessionStore(engine=engine, table_name=table, schema=schema)
        store.create_table()
        lease = PruneLease(store)
        assert lease.try_acquire()
        inspector = sa.inspect(engine)
        assert inspector.has_table(f"{table}_lease", schema=schema)
        assert not inspector.has_table(f"{table}_lease")
        lease.release()


# -- what the job logs ---------------------------------------------------------------


def test_a_run_while_another_process_prunes_says_so_at_debug(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    store.create_table()
    holder = lease_of_another_process(make_store())
    assert holder.try_acquire()
    job = PruneScheduler(store, interval=60)
    try:
        with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession.prune"):
            assert job.run_once() is None
    finally:
        job.shutdown()
        holder.release()
    assert f"another process prunes {store.table.fullname!r} (pid {os.getpid()})" in [
        record.getMessage() for record in caplog.records
    ]


def test_a_failed_run_is_logged_with_its_traceback_naming_the_table(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(create_table=False)  # its table does not exist: the delete fails
    job = PruneScheduler(store, interval=60)
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_dbsession.prune"):
            assert job.run_once() is None
    finally:
        job.shutdown()
    (record,) = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert record.getMessage() == (
        f"pruning expired sessions of {store.table.fullname!r} failed; retrying at the next interval"
    )
    assert record.exc_info and isinstance(record.exc_info[1], Exception), "with the cause's traceback"


def test_at_exit_a_running_prune_is_waited_for_one_second_at_most(db_url: str, make_store: MakeStore) -> None:
    # At its exit a process stops every job it started; a prune in the middle of a batch
    # delays the exit by a second at most, then is left behind. The prune runs on a
    # thread of its own here; the scheduler's own thread runs it in
    # test_shutdown_during_a_batch_run_by_the_scheduler_itself_waits_its_timeout_then_returns.
    store = make_store()
    seed(store, expired=20, live=0)
    script = textwrap.dedent(
        f"""
        import atexit, os, threading, time

        # Registered before the package's own exit handler: atexit runs it after that one.
        atexit.register(lambda: os.write(2, f"\\nexited {{time.monotonic()}} {{job.started}}\\n".encode()))

        from tests.prune_helpers import hold_the_first_delete
        from wsgi_dbsession import SessionStore
        from wsgi_dbsession.prune import PruneScheduler

        store = SessionStore(url={db_url!r}, table_name={store.table.name!r})
        job = PruneScheduler(store, interval=60, batch_size=10)
        job.ensure_started()
        in_batch, _ = hold_the_first_delete(store, 30)
        threading.Thread(target=job.run_once, daemon=True).start()
        assert in_batch.wait(30), "no batch started"
        os.write(2, f"\\nexiting {{time.monotonic()}}\\n".encode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    (exiting,) = re.findall(r"^exiting ([\d.]+)$", done.stderr, re.MULTILINE)
    ((exited, started),) = re.findall(r"^exited ([\d.]+) (\w+)$", done.stderr, re.MULTILINE)
    elapsed = float(exited) - float(exiting)
    assert 0.9 <= elapsed < 1.9, elapsed
    assert started == "False", "the job was stopped"


# -- a prune in progress -----------------------------------------------------------------


def test_a_prune_whose_lease_is_taken_during_it_stops_after_the_batch_and_says_so(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    # The lease is renewed after every full batch: a holder that finds it taken (it
    # stalled, its lease lapsed, another process took over) stops rather than prune
    # alongside the new holder.
    store = make_store()
    seed(store, expired=30, live=0)
    lease = PruneLease(store)
    assert lease.try_acquire()
    table, taken = store.table.name, []

    def taken_over_after_the_first_batch(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if (
            statement.lstrip().upper().startswith("DELETE")
            and re.search(rf"\b{table}\b", statement)
            and not taken
        ):
            taken.append(statement)
            store.run(lambda conn: conn.execute(sa.update(lease.table).values(holder="another process")))

    sa.event.listen(store.engine, "before_cursor_execute", taken_over_after_the_first_batch)
    with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession.prune"):
        assert prune_held(store, lease, batch_size=10) == 10
    assert store.count(expired=True) == 20
    pid = os.getpid()
    assert [record.getMessage() for record in caplog.records] == [
        f"prune of {store.table.fullname!r} started (pid {pid})",
        f"the prune lease of {store.table.fullname!r} lapsed during a prune; stopping (pid {pid})",
        AnyPruned(10, store.table.fullname, pid),
    ]


class AnyPruned(str):
    """The closing log line of a prune, whatever its duration (which must be a plausible one)."""

    def __new__(cls, deleted: int, table: str, pid: int) -> AnyPruned:
        pattern = (
            rf"pruned {deleted} expired sessions from {re.escape(repr(table))} in ([\d.]+) s \(pid {pid}\)"
        )
        return super().__new__(cls, pattern)

    def __eq__(self, other: object) -> bool:
        found = isinstance(other, str) and re.fullmatch(str(self), other)
        return bool(found) and 0 <= float(found.group(1)) < 600  # type: ignore[union-attr]

    __hash__ = str.__hash__


def test_a_prune_that_deletes_nothing_logs_at_debug_and_one_that_deletes_at_info(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    store.create_table()
    lease = PruneLease(store)
    assert lease.try_acquire()
    with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession.prune"):
        assert prune_held(store, lease) == 0
        seed(store, expired=2, live=0)
        assert prune_held(store, lease) == 2
    closing = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("pruned")]
    pid, table = os.getpid(), store.table.fullname
    assert closing == [(logging.DEBUG, AnyPruned(0, table, pid)), (logging.INFO, AnyPruned(2, table, pid))]
    lease.release()
    assert not lease.held


def test_a_lease_that_cannot_be_given_back_is_left_to_lapse_with_a_warning(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store()
    store.create_table()
    lease = PruneLease(store)
    assert lease.try_acquire()
    drop_table(store.engine, lease.table)  # the database refuses the delete
    with caplog.at_level(logging.WARNING, logger="wsgi_dbsession.prune"):
        lease.release()  # never raises
    (record,) = caplog.records
    assert record.getMessage() == "could not give the prune lease back; it lapses by itself"
    assert record.exc_info and isinstance(record.exc_info[1], Exception), "with the cause's traceback"
    assert not lease.held


def test_a_forked_child_can_shut_down_the_job_it_inherited(make_store: MakeStore) -> None:
    # The child has the parent's scheduler object but not its thread: shutting down
    # there (its atexit, a close()) must neither touch that scheduler nor hang.
    store = make_store()
    store.create_table()
    job = PruneScheduler(store, interval=60)
    job.ensure_started()
    try:

        def child() -> bool:
            job.shutdown(timeout=1)
            return not job.started

        assert in_child(child) == 0
        assert job.running, "the parent's job runs on"
    finally:
        job.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"])  # the scheduler's behaviour, the same on every database
# The default's 5 s wait is slow: it runs once per CI run, timeout-0.5 in every session.
@pytest.mark.parametrize(
    "timeout",
    [pytest.param(0.5, id="timeout-0.5"), pytest.param(None, id="default-timeout-5", marks=pytest.mark.slow)],
)
def test_shutdown_during_a_batch_run_by_the_scheduler_itself_waits_its_timeout_then_returns(
    make_store: MakeStore, timeout: float | None
) -> None:
    # The tests above run the prune on a thread of their own; here the scheduler runs it,
    # as in production (APScheduler 3 joins that thread when it shuts down).
    store = make_store()
    seed(store, expired=20, live=0)
    job = PruneScheduler(store, interval=0.2, batch_size=10)
    waits = 5.0 if timeout is None else timeout
    in_batch, finish_batch = hold_the_first_delete(store, waits + 20)
    try:
        job.ensure_started()
        assert in_batch.wait(30)
        started = time.monotonic()
        job.shutdown() if timeout is None else job.shutdown(timeout=timeout)
        assert waits - 0.1 <= time.monotonic() - started < waits + 0.9
        assert len(lease_rows(store)) == 1  # the batch still runs, under the lease
        finish_batch.set()
        # The run stops after its batch and gives the lease back itself, before it lapses.
        wait_for(lambda: not lease_rows(store))
        assert lease_rows(store) == []
        assert store.count(expired=True) == 10  # one batch of 10 of the 20 expired rows, then the stop
    finally:
        finish_batch.set()
        job.shutdown()


@pytest.mark.parametrize("backend", ["sqlite"])  # the scheduler's behaviour, the same on every database
def test_a_job_restarted_while_its_old_run_finishes_a_batch_keeps_both_runs_apart(
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    # shutdown gave up waiting for a batch, and the job is started again: the old run
    # ends on its own lock and stop signal (releasing the new lock would raise in it).
    store = make_store()
    seed(store, expired=20, live=0)
    job = PruneScheduler(store, interval=0.2, batch_size=10)
    in_batch, finish_batch = hold_the_first_delete(store, 30)
    try:
        with caplog.at_level(logging.INFO):
            job.ensure_started()
            assert in_batch.wait(30)
            job.shutdown(timeout=0.2)
            job.ensure_started()
            finish_batch.set()
            wait_for(lambda: store.count(expired=True) == 0)
            assert store.count(expired=True) == 0  # the new job pruned the rest
            job.shutdown()
        assert not [record for record in caplog.records if record.levelno >= logging.ERROR], caplog.text
    finally:
        finish_batch.set()
        job.shutdown()


def test_renewing_the_lease_is_one_statement(make_store: MakeStore) -> None:
    # The lease table is made once per process, at the first try; a renewal (after
    # every batch) is then a single UPDATE.
    store = make_store()
    store.create_table()
    lease = PruneLease(store)
    assert lease.try_acquire()
    sent: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda _c, _cu, statement, *_a: sent.append(statement)
    )
    assert lease.try_acquire()
    assert len(sent) == 1 and sent[0].lstrip().upper().startswith("UPDATE"), sent
    lease.release()
