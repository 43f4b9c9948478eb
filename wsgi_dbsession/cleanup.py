"""Pruning expired sessions in the background (APScheduler).

The scheduler starts lazily in each process, on its first request, so a
gunicorn master that builds the middleware with ``--preload`` never runs it
and every forked worker starts its own.
"""

from __future__ import annotations

import logging
import os
import random
import threading

from apscheduler.schedulers.background import BackgroundScheduler

from .store import SessionStore

log = logging.getLogger(__name__)


class PruneScheduler:
    """Runs ``store.prune()`` every ``interval`` seconds (randomized) in this process."""

    def __init__(self, store: SessionStore, *, interval: float) -> None:
        self.store = store
        self.interval = interval
        self._pid: int | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the job in this process unless it already runs here."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._scheduler = BackgroundScheduler(daemon=True)
            self._scheduler.add_job(
                self.run_once,
                "interval",
                seconds=self.interval,
                jitter=self.interval * random.uniform(0.1, 0.5),
                max_instances=1,
                coalesce=True,
            )
            self._scheduler.start()
            self._pid = os.getpid()

    def run_once(self) -> int:
        """One prune; errors are logged, never raised into the scheduler."""
        try:
            deleted = self.store.prune()
        except Exception:
            log.exception("pruning expired sessions failed; retrying at the next interval")
            return 0
        log.info("pruned %d expired sessions", deleted)
        return deleted

    def shutdown(self) -> None:
        """Stop the job in this process."""
        with self._lock:
            if self._scheduler is not None and self._pid == os.getpid():
                self._scheduler.shutdown(wait=False)
            self._scheduler = None
            self._pid = None
