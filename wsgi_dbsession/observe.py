"""What the store and its sessions did, for metrics: events, observers, and the metrics they make.

An observer is any callable taking an :class:`Event`; register it with
:meth:`SessionStore.observe <wsgi_dbsession.store.SessionStore.observe>`
(or ``manager.store.observe``). An event says what happened, how it ended
and how long it took; it never carries a session id, a session's data or a
statement's parameters, so what an observer records is safe to ship to a
metrics system. The bridges :mod:`wsgi_dbsession.prometheus` and
:mod:`wsgi_dbsession.opentelemetry` turn events into the :data:`METRICS`
below; docs/metrics.md lists them and what to alert on.

With no observer registered, the store only tests one list for emptiness
where an event could start (``python -m benchmarks.observer_cost``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

log = logging.getLogger(__name__)

Kind = Literal["statement", "load", "save", "merge", "locked_save", "conflict_retry", "outage", "prune"]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the store or a session did.

    ``kind`` says what; ``operation`` which one (a statement's store
    operation, a save's kind); ``outcome`` how it ended; ``seconds`` how long
    it took (``statement``, ``prune``); ``rows`` how many
    rows a prune deleted. :data:`METRICS` lists the values each kind uses.
    """

    kind: Kind
    operation: str = ""
    outcome: str = "ok"
    seconds: float = 0.0
    rows: int = 0


Observer = Callable[[Event], None]


class Observers:
    """The observers of one store; ``callbacks`` is empty while nobody watches (the cheap test)."""

    __slots__ = ("callbacks",)

    def __init__(self) -> None:
        self.callbacks: list[Observer] = []

    def add(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(event)`` for every event from now on; returns its remover."""
        # A new list, never changed in place: an emit running in another thread keeps its own.
        self.callbacks = [*self.callbacks, observer]

        def remove() -> None:
            self.callbacks = [callback for callback in self.callbacks if callback is not observer]

        return remove

    def emit(self, event: Event) -> None:
        """Give ``event`` to every observer; an observer's error is logged, never the request's."""
        for callback in self.callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("session metrics observer %r failed on %s", callback, event)

    def count(self, kind: Kind, operation: str = "", outcome: str = "ok") -> None:
        """Emit an event without a duration, when anybody watches."""
        if self.callbacks:
            self.emit(Event(kind, operation, outcome))


@dataclass(frozen=True)
class Metric:
    """One metric the bridges make from one kind of event.

    ``value``: ``count`` adds 1 per event, ``rows`` adds the event's rows,
    ``seconds`` records its duration in a histogram. ``labels`` are the
    event fields that label it (few values each: never an id).
    """

    name: str  # without the ``wsgi_dbsession`` prefix
    kind: Kind
    value: Literal["count", "rows", "seconds"]
    labels: tuple[str, ...]
    description: str


METRICS: tuple[Metric, ...] = (
    Metric(
        "statement_seconds",
        "statement",
        "seconds",
        ("operation", "outcome"),
        "Duration of each statement sent to the session table (each attempt), by store operation and outcome",
    ),
    Metric(
        "loads", "load", "count", ("outcome",), "Session rows read: found or missing (new, expired, unknown)"
    ),
    Metric(
        "saves",
        "save",
        "count",
        ("operation",),
        "Session saves by kind: new, changed, renamed, touched, deleted",
    ),
    Metric(
        "merges", "merge", "count", ("outcome",), "Saves that lost a compare-and-set and merged key by key"
    ),
    Metric("locked_saves", "locked_save", "count", ("outcome",), "Contended saves that took a row lock"),
    Metric(
        "conflict_retries", "conflict_retry", "count", ("operation",), "Statements retried after a lost race"
    ),
    Metric(
        "outages", "outage", "count", ("operation",), "Statements that found the session database unavailable"
    ),
    Metric("prune_runs", "prune", "count", ("outcome",), "Prunes of expired sessions, by outcome"),
    Metric("pruned_rows", "prune", "rows", (), "Expired session rows deleted by prunes"),
    Metric("prune_seconds", "prune", "seconds", ("outcome",), "Duration of a prune"),
)

# Seconds: a primary-key statement on a nearby server takes 0.1-1 ms; a prune seconds.
BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


InstrumentT = TypeVar("InstrumentT")


class MetricsBridge(Generic[InstrumentT]):
    """An observer that feeds :data:`METRICS` to a metrics library; subclasses make the instruments."""

    def __init__(self) -> None:
        self._by_kind: dict[str, list[tuple[Metric, InstrumentT]]] = {}
        for metric in METRICS:
            self._by_kind.setdefault(metric.kind, []).append((metric, self.instrument(metric)))

    def instrument(self, metric: Metric) -> InstrumentT:
        """The library's instrument for ``metric``."""
        raise NotImplementedError

    def record(self, metric: Metric, instrument: InstrumentT, value: float, labels: dict[str, str]) -> None:
        """Add ``value`` to a counter, or observe it in a histogram, under ``labels``."""
        raise NotImplementedError

    def __call__(self, event: Event) -> None:
        for metric, instrument in self._by_kind.get(event.kind, ()):
            value = 1 if metric.value == "count" else event.rows if metric.value == "rows" else event.seconds
            self.record(metric, instrument, value, {label: getattr(event, label) for label in metric.labels})
