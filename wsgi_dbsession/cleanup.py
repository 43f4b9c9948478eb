"""Pruning expired sessions: in the background, one process at a time across a deployment.

The table's prune lock lives in the database, held by one connection:
a PostgreSQL advisory lock, MySQL/MariaDB ``GET_LOCK``, MSSQL
``sp_getapplock``; for SQLite an ``flock`` on a file beside the database
file. The process whose scheduler takes it keeps it and prunes every
interval; every other process tries once per interval and finds it taken.
So a deployment prunes about once per interval in total, never twice at
once. When that process exits its connection closes, the database frees
the lock, and another process takes over at its next try.

The scheduler starts lazily in each process, on its first request: a
gunicorn master that builds the middleware (``--preload``) never runs it,
and a forked child forgets the parent's scheduler and lock.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any

from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Connection

from .dialects import LockStatements, prune_lock
from .exceptions import ConfigurationError, StoreUnavailable
from .store import PRUNE_BATCH_SIZE, SessionStore

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)


class PruneLock:
    """The table's prune lock as this process sees it.

    This base class is for databases with no lock this package knows: it
    always succeeds, so every process prunes (harmless, the deletes are
    idempotent, but not once per deployment).
    """

    def __init__(self) -> None:
        self.held = False
        # Where the deletes must run while the lock is held: the connection
        # that holds it, for locks that live in a database session.
        self.connection: Connection | None = None

    def try_acquire(self) -> bool:
        """Take the lock unless another process holds it; never waits."""
        self.held = True
        return True

    def release(self) -> None:
        """Give the lock back; never raises."""
        self.held = False

    def forget(self) -> None:
        """In a forked child: drop this process's claim, leaving the parent's hold alone."""
        self.held = False


class _DatabaseLock(PruneLock):
    """A lock owned by a database session: it lasts as long as one pooled connection."""

    def __init__(self, store: SessionStore, statements: LockStatements) -> None:
        super().__init__()
        self.store = store
        self.statements = statements

    def try_acquire(self) -> bool:
        if self.held:
            return True
        conn = self.store.engine.connect()
        try:
            taken = bool(conn.execute(self.statements.acquire, self.statements.params).scalar())
            conn.commit()  # with a transactional engine, no transaction may idle on the held lock
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        self.connection, self.held = conn, True
        return True

    def release(self) -> None:
        conn, self.connection, self.held = self.connection, None, False
        if conn is None:
            return
        try:
            if not conn.invalidated:  # else its database session, and the lock, ended already
                conn.execute(self.statements.release, self.statements.params)
                conn.commit()
        except Exception:
            # Ending the database session frees the lock when unlocking failed.
            log.warning("could not release the prune lock; dropping its connection", exc_info=True)
            conn.invalidate()
        finally:
            conn.close()

    def forget(self) -> None:
        if self.connection is not None:
            # The child shares the parent's socket: closing it here would end
            # the parent's database session and its lock. Never touch it.
            _INHERITED_CONNECTIONS.append(self.connection)
        self.connection, self.held = None, False


class _FileLock(PruneLock):
    """``flock`` on a file beside the SQLite database file: one holder per host, freed when it exits."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.held = fd, True
        return True

    def release(self) -> None:
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            os.close(fd)  # the last descriptor of the lock's open file closes: the lock goes

    # A child's copy of the descriptor shares the parent's lock; closing the
    # copy leaves the parent holding it.
    forget = release


# Connections a forked child inherited while its parent held the prune lock on them.
_INHERITED_CONNECTIONS: list[Connection] = []


def open_prune_lock(store: SessionStore) -> PruneLock:
    """The prune lock of ``store``'s table (not taken yet): one name per database and table."""
    url = store.engine.url
    statements = prune_lock(
        store.engine.dialect, f"wsgi_dbsession prune {url.database}.{store.table.fullname}"
    )
    if statements is not None:
        return _DatabaseLock(store, statements)
    database = url.database or ""
    if (
        sys.platform != "win32"
        and store.engine.dialect.name == "sqlite"
        and database not in ("", ":memory:")
        and not database.startswith("file:")
    ):
        # One file per table: tables sharing a database file are pruned independently.
        tag = hashlib.blake2b(store.table.fullname.encode(), digest_size=4).hexdigest()
        return _FileLock(f"{os.path.abspath(database)}.prune-{tag}.lock")
    return PruneLock()


def prune_locked(
    store: SessionStore,
    lock: PruneLock,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,  # rows per statement
    stop: threading.Event | None = None,  # set: stop after the current batch
) -> int:
    """Delete the expired rows while ``lock`` is held; logs how many and how long.

    Returns how many rows went. Errors propagate.
    """
    table, pid = store.table.fullname, os.getpid()
    log.debug("prune of %r started (pid %d)", table, pid)
    started = time.perf_counter()
    deleted = 0
    for count in store.prune_batches(batch_size=batch_size, connection=lock.connection):
        deleted += count
        if stop is not None and stop.is_set():
            break
    elapsed = time.perf_counter() - started
    log.info("pruned %d expired sessions from %r in %.3f s (pid %d)", deleted, table, elapsed, pid)
    return deleted


def prune_once(store: SessionStore, *, batch_size: int = PRUNE_BATCH_SIZE) -> int | None:
    """One prune under the table's prune lock, released afterwards (cron, the command line).

    Returns how many rows went, or None when another process holds the
    lock: a running app's scheduler keeps it, and that process prunes.
    """
    lock = open_prune_lock(store)
    if not lock.try_acquire():
        log.info("another process holds the prune lock of %r; nothing done", store.table.fullname)
        return None
    try:
        return prune_locked(store, lock, batch_size=batch_size)
    finally:
        lock.release()


class PruneScheduler:
    """Prunes ``store`` about every ``interval`` seconds, from the one process holding the prune lock.

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
        if interval <= 0:
            raise ConfigurationError("the prune interval must be a positive number of seconds")
        if batch_size < 1:
            raise ConfigurationError("the prune batch size must be at least 1 row")
        self.store = store
        self.interval = interval
        self.batch_size = batch_size
        self._lock = open_prune_lock(store)
        self._new_process_state()
        _SCHEDULERS.add(self)

    def _new_process_state(self) -> None:
        # Fresh in a forked child too: a thread lock held by one of the
        # parent's threads at the fork would stay held forever in the child.
        self.started = False
        self._scheduler: Any = None
        self._start_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._stop = threading.Event()

    def ensure_started(self) -> None:
        """Start the job in this process unless it was started here; per request it reads one attribute."""
        if self.started:
            return
        with self._start_lock:
            if self.started:
                return
            scheduler = BackgroundScheduler(
                daemon=True, executors={"default": DebugExecutor()}, timezone=dt.timezone.utc
            )
            # 50-150 % of the interval between runs, the interval on average
            # (connect-pg-simple's spread): workers started together drift apart.
            trigger = IntervalTrigger(
                seconds=self.interval / 2, jitter=self.interval, timezone=dt.timezone.utc
            )
            scheduler.add_job(self.run_once, trigger, coalesce=True, max_instances=1, misfire_grace_time=None)
            scheduler.start()
            self._scheduler = scheduler
            self.started = True
        log.debug("prune job of %r started (pid %d)", self.store.table.fullname, os.getpid())

    def run_once(self) -> int | None:
        """One tick: prune if this process holds the lock or takes it now.

        Returns how many rows went, or None when another process holds the
        lock, a run is already going on here, or the run failed (logged).
        """
        if not self._run_lock.acquire(blocking=False):
            return None
        try:
            if self._stop.is_set():
                return None
            held_before = self._lock.held
            try:
                return self._prune_if_lock_taken()
            except StoreUnavailable:
                if not held_before:
                    raise
                # The connection holding the lock since an earlier run died
                # in between (an idle timeout, a database restart), and the
                # lock with it: take the lock afresh, once.
                self._lock.release()
                return self._prune_if_lock_taken()
        except Exception:
            log.exception(
                "pruning expired sessions of %r failed; retrying at the next interval",
                self.store.table.fullname,
            )
            self._lock.release()  # a broken connection must not keep the lock
            return None
        finally:
            self._run_lock.release()

    def _prune_if_lock_taken(self) -> int | None:
        if not self._lock.try_acquire():
            log.debug("another process prunes %r (pid %d)", self.store.table.fullname, os.getpid())
            return None
        return prune_locked(self.store, self._lock, batch_size=self.batch_size, stop=self._stop)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the job in this process and give the prune lock back.

        Waits up to ``timeout`` seconds for a running prune to finish its
        current batch.
        """
        self._stop.set()
        with self._start_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
        if self._run_lock.acquire(timeout=timeout):
            try:
                self._lock.release()
            finally:
                self._run_lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock.forget()
        self._new_process_state()


_SCHEDULERS: weakref.WeakSet[PruneScheduler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for scheduler in list(_SCHEDULERS):
        scheduler._after_fork_in_child()


def _shutdown_all() -> None:
    # Before logging shuts down (atexit runs in reverse order of
    # registration): the last log lines of a prune still get written.
    for scheduler in list(_SCHEDULERS):
        scheduler.shutdown(timeout=1.0)


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_shutdown_all)
