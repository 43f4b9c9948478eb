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
import threading
from collections.abc import Callable

import pytest

from conftest import StatementLog
from tests.prune_helpers import live_rows, seed
from wsgi_dbsession import SessionStore
from wsgi_dbsession.prune import PruneLease, PruneScheduler, prune_once

MakeStore = Callable[..., SessionStore]


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
    holder = PruneLease(make_store())
    holder._pid, holder._holder = os.getpid(), "another process"  # one process plays two
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
    make_store: MakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    # What the scheduler is told: a run every 50-150 % of the interval (half of it, plus
    # up to the interval of jitter: workers started together drift apart), runs that
    # fell behind coalesced into one that still runs however late, never two at once,
    # on the package's own executor (its INFO lines are silenced), in UTC whatever the
    # server's local time zone. Timing this for real would take minutes and still be loose.
    store = make_store()
    store.create_table()
    job = PruneScheduler(store, interval=40)
    try:
        with caplog.at_level(logging.DEBUG, logger="wsgi_dbsession.prune"):
            job.ensure_started()
        scheduler = job._scheduler
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
