"""Pruning expired sessions: in the background, one process at a time across a deployment.

The prune lock is a lease: a row in a small table beside the sessions
table (``<table>_lease``) that names its holder and when the hold lapses.
Taking, renewing and giving it back are single autocommit statements on
plain rows, so it means the same thing on a direct connection, behind
PgBouncer in transaction mode and across a Galera cluster (where a
session lock such as ``pg_try_advisory_lock`` or ``GET_LOCK`` would be
held by a pooled server connection, or by one node only). The process that
takes it keeps it by renewing it at every run and after every batch, and
prunes every interval; every other process tries once per interval and
finds it held. A holder that dies stops renewing, and the lease lapses.

The scheduler starts lazily in each process, on its first request: a
gunicorn or uWSGI master that builds the middleware before forking never
runs it, and a forked child (even one whose fork ran no
``os.register_at_fork`` hook) sees that its process id changed and starts
afresh instead of using what it inherited.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .dialects import ExpiryTimestamp
from .observe import Event
from .store import PRUNE_BATCH_SIZE, SessionStore, utcnow

log = logging.getLogger(__name__)

LEASE_TABLE_SUFFIX = "_lease"
_ROWCOUNT = {"preserve_rowcount": True}
MIN_LEASE = 30.0  # seconds: the shortest hold, longer than any one batch
_EXECUTOR = "wsgi_dbsession"
# APScheduler logs two INFO lines per run of a job, and three when its
# scheduler starts; this package's own lines say more. Set these loggers'
# levels lower to see them.
logging.getLogger(f"apscheduler.executors.{_EXECUTOR}").setLevel(logging.WARNING)
_SCHEDULER_LOG = log.getChild("scheduler")
_SCHEDULER_LOG.setLevel(logging.WARNING)


class PruneLease:
    """The prune lock of one sessions table, held as a row with an expiry.

    ``duration`` is how long a hold lasts without renewal (seconds).
    ``holder`` is the name this lease writes in the lease row; by default
    ``host:pid:random``, a new one in each (forked) process. Every lease
    given the same ``holder`` is one holder and shares its hold: name one
    only where a single process uses it (a cron job naming itself, a test
    posing as another process beside this one's own lease).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        duration: float = MIN_LEASE,
        name: str = "prune",
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.duration = duration
        self.name = name
        self.table = sa.Table(
            f"{store.table.name}{LEASE_TABLE_SUFFIX}",
            sa.MetaData(),
            sa.Column("name", sa.Unicode(255), primary_key=True),
            sa.Column("holder", sa.Unicode(255), nullable=False),
            sa.Column("expires", ExpiryTimestamp(), nullable=False),
            schema=store.table.schema,
        )
        c = self.table.c
        # Bind names differ from column names: SQLAlchemy reserves those for SET and VALUES.
        until = sa.bindparam("until", type_=ExpiryTimestamp())
        lease, me = sa.bindparam("lease", type_=sa.Unicode(255)), sa.bindparam("me", type_=sa.Unicode(255))
        self._take = (
            sa.update(self.table)
            .where(c.name == lease)
            .where((c.holder == me) | (c.expires < sa.bindparam("now", type_=ExpiryTimestamp())))
            .values(holder=me, expires=until)
        )
        values: dict[str, sa.BindParameter[Any]] = {"name": lease, "holder": me, "expires": until}
        # Taken by a statement that fails on no server when another process
        # holds it (a duplicate-key ERROR line per try would fill the log).
        self._insert_if_absent = store.dialect.insert_if_absent(self.table, values)
        self._insert = sa.insert(self.table).values(values)
        self._release = sa.delete(self.table).where(c.name == lease, c.holder == me)
        self._ready = False
        self._pid = 0
        self._named = holder
        self._holder = ""
        self._held = False

    @property
    def held(self) -> bool:
        """Whether this process holds the lease (as far as its last try or renewal knows)."""
        return self._held and self._pid == os.getpid()

    @property
    def holder(self) -> str:
        """Who this process is, in the lease row: the ``holder`` given, else host, pid and a random tag."""
        pid = os.getpid()
        if pid != self._pid:  # a forked child is a holder of its own and holds nothing yet
            self._pid, self._held = pid, False
            self._holder = self._named or f"{socket.gethostname()[:200]}:{pid}:{secrets.token_hex(4)}"
        return self._holder

    def try_acquire(self) -> bool:
        """Take the lease, or renew it when held; never waits. False when another process holds it."""
        if not self._ready:
            self.store.create(self.table)
            self._ready = True
        now = utcnow()
        params = {
            "lease": self.name,
            "me": self.holder,
            "now": now,
            "until": now + dt.timedelta(seconds=self.duration),
        }

        def take(conn: Connection) -> bool:
            if conn.execute(self._take, params).rowcount == 1:
                return True
            if self._insert_if_absent is not None:
                # Core keeps an INSERT's row count only when asked to.
                inserted = conn.execute(self._insert_if_absent, params, execution_options=_ROWCOUNT)
                return inserted.rowcount == 1
            try:
                conn.execute(self._insert, params)
            except IntegrityError:  # another process inserted it first: it holds the lease
                return False
            return True

        self._held = self.store.run(take, operation="prune_lease")
        return self._held

    def release(self) -> None:
        """Give the lease back so another process may take it at once; never raises."""
        if not self.held:
            return
        self._held = False
        try:
            self.store.run(
                lambda conn: conn.execute(self._release, {"lease": self.name, "me": self._holder}),
                operation="prune_lease",
            )
        except Exception:
            log.warning("could not give the prune lease back; it lapses by itself", exc_info=True)


def prune_held(
    store: SessionStore,
    lease: PruneLease,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,  # rows per statement
    stop: threading.Event | None = None,  # set: stop after the current batch
    progress: Callable[[int], None] | None = None,  # called with the rows deleted so far, after each batch
) -> int:
    """Delete the expired rows while ``lease`` is held (renewed after every batch); returns how many went.

    Logs at INFO when rows went, else at DEBUG. Errors propagate.
    """
    table, pid = store.table.fullname, os.getpid()
    log.debug("prune of %r started (pid %d)", table, pid)
    started = time.perf_counter()
    deleted = 0
    outcome = "error"
    try:
        for count in store.prune_batches(batch_size=batch_size):
            deleted += count
            if progress is not None:
                progress(deleted)
            if stop is not None and stop.is_set():
                outcome = "stopped"
                break
            if count == batch_size and not lease.try_acquire():
                log.warning("the prune lease of %r lapsed during a prune; stopping (pid %d)", table, pid)
                outcome = "lapsed"
                break
        else:
            outcome = "done"
    finally:
        elapsed = time.perf_counter() - started
        if store.observers.callbacks:
            store.observers.emit(Event("prune", outcome=outcome, seconds=elapsed, rows=deleted))
    log.log(
        logging.INFO if deleted else logging.DEBUG,
        "pruned %d expired sessions from %r in %.3f s (pid %d)",
        deleted,
        table,
        elapsed,
        pid,
    )
    return deleted


def prune_once(
    store: SessionStore,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,  # called with the rows deleted so far, after each batch
) -> int | None:
    """One prune under the table's prune lease, given back afterwards (cron, the command line).

    Returns how many rows went, or None when another process holds the
    lease: a running app's scheduler keeps it, and that process prunes.
    """
    lease = PruneLease(store)
    if not lease.try_acquire():
        log.info("another process holds the prune lease of %r; nothing done", store.table.fullname)
        return None
    try:
        return prune_held(store, lease, batch_size=batch_size, progress=progress)
    finally:
        lease.release()


class PruneScheduler:
    """Prunes ``store`` about every ``interval`` seconds, from the one process holding the prune lease.

    The job runs in the scheduler's own daemon thread, so two runs never
    overlap in a process. A failed run is logged and tried again at the
    next interval; nothing is raised into the scheduler or a request.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        interval: float,  # seconds between prunes, on average
        batch_size: int = PRUNE_BATCH_SIZE,  # rows per delete statement
    ) -> None:
        self.store = store
        self.interval = interval
        self.batch_size = batch_size
        # Held across runs by renewing it each run: longer than the longest gap between two runs.
        self.lease = PruneLease(store, duration=max(MIN_LEASE, 3 * interval))
        self._pid = 0  # the process the job runs in; 0: not started
        self._scheduler: Any = None
        self._run_lock = threading.Lock()
        self._stop = threading.Event()
        _SCHEDULERS.add(self)

    @property
    def started(self) -> bool:
        """Whether the job runs in this process."""
        return self._pid == os.getpid()

    @property
    def running(self) -> bool:
        """Whether the job's scheduler runs in this process: started here and not shut down since."""
        return self.started and self._scheduler is not None and bool(self._scheduler.running)

    def ensure_started(self) -> None:
        """Start the job in this process unless it runs here already; per request, one comparison."""
        if self._pid == os.getpid():
            return
        with _START_LOCK:
            pid = os.getpid()
            if self._pid == pid:
                return
            # A thread lock held by one of the parent's threads at the fork
            # would stay held forever here: this process gets its own.
            self._run_lock = threading.Lock()
            self._stop = threading.Event()
            scheduler = BackgroundScheduler(
                daemon=True,
                executors={_EXECUTOR: DebugExecutor()},
                timezone=dt.timezone.utc,
                logger=_SCHEDULER_LOG,
            )
            # 50-150 % of the interval between runs, the interval on average
            # (connect-pg-simple's spread): workers started together drift apart.
            trigger = IntervalTrigger(
                seconds=self.interval / 2, jitter=self.interval, timezone=dt.timezone.utc
            )
            scheduler.add_job(
                self.run_once,
                trigger,
                executor=_EXECUTOR,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=None,
            )
            scheduler.start()
            self._scheduler = scheduler
            self._pid = pid
        log.debug("prune job of %r started (pid %d)", self.store.table.fullname, pid)

    def run_once(self) -> int | None:
        """One tick: prune if this process holds the lease or takes it now.

        Returns how many rows went, or None when another process holds the
        lease, a run is already going on here, or the run failed (logged).
        """
        # This run's own lock and signal: a restart after a shutdown that gave up
        # waiting for this run gives the job new ones.
        run_lock, stop = self._run_lock, self._stop
        if not run_lock.acquire(blocking=False):
            return None
        try:
            if stop.is_set():
                return None
            if not self.lease.try_acquire():
                log.debug("another process prunes %r (pid %d)", self.store.table.fullname, os.getpid())
                return None
            return prune_held(self.store, self.lease, batch_size=self.batch_size, stop=stop)
        except Exception:
            log.exception(
                "pruning expired sessions of %r failed; retrying at the next interval",
                self.store.table.fullname,
            )
            return None
        finally:
            if stop.is_set():  # shut down during the run: the lease goes back now, not when it lapses
                self.lease.release()
            run_lock.release()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the job in this process and give the prune lease back.

        Waits up to ``timeout`` seconds for a running prune to finish its
        current batch.
        """
        self._stop.set()  # a running prune stops after its batch, and no other starts
        scheduler, self._scheduler = self._scheduler, None
        running = scheduler is not None and self.started and scheduler.running
        idle = self._run_lock.acquire(timeout=timeout)
        if idle:
            try:
                self.lease.release()
            finally:
                self._run_lock.release()
        if running:
            _stop_scheduler(scheduler, idle=idle)
        self._pid = 0


def _stop_scheduler(scheduler: Any, *, idle: bool) -> None:
    # APScheduler 3 joins the scheduler's thread whatever ``wait`` says, and the
    # prune runs in that thread. Idle, the thread ends at once; in a batch, it is
    # stopped from a thread of its own, so that shutdown keeps to its timeout.
    if idle:
        scheduler.shutdown(wait=False)
        return
    # At interpreter exit no thread starts (RuntimeError): the daemon thread ends with the process.
    with contextlib.suppress(RuntimeError):
        threading.Thread(target=scheduler.shutdown, kwargs={"wait": False}, daemon=True).start()


_START_LOCK = threading.Lock()
_SCHEDULERS: weakref.WeakSet[PruneScheduler] = weakref.WeakSet()


def _shutdown_all() -> None:
    # Before logging shuts down (atexit runs in reverse order of
    # registration): the last log lines of a prune still get written.
    for scheduler in list(_SCHEDULERS):
        if scheduler.started:
            scheduler.shutdown(timeout=1.0)


atexit.register(_shutdown_all)
