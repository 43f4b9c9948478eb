"""The observer bridge to ``prometheus_client`` (the ``prometheus`` extra).

::

    from wsgi_dbsession.prometheus import PrometheusMetrics

    manager.store.observe(PrometheusMetrics())  # into prometheus_client.REGISTRY

Counters and histograms named ``wsgi_dbsession_*`` (docs/metrics.md lists
them). Under gunicorn or uWSGI with several workers, prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) adds up every worker's.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from .observe import BUCKETS, Metric, MetricsBridge

PREFIX = "wsgi_dbsession"


class PrometheusMetrics(MetricsBridge[Counter | Histogram]):
    """An observer counting into ``registry`` (the default registry unless given).

    One per registry: a second one on the same registry is refused by
    prometheus_client as a duplicate; share the first among stores.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY, *, prefix: str = PREFIX) -> None:
        self.registry = registry
        self.prefix = prefix
        self._children: dict[tuple[str, ...], Any] = {}
        super().__init__()

    def instrument(self, metric: Metric) -> Counter | Histogram:
        name, labels = f"{self.prefix}_{metric.name}", metric.labels
        if metric.value == "seconds":
            return Histogram(
                name, metric.description, labels, registry=self.registry, buckets=(*BUCKETS, float("inf"))
            )
        return Counter(name, metric.description, labels, registry=self.registry)

    def record(
        self, metric: Metric, instrument: Counter | Histogram, value: float, labels: dict[str, str]
    ) -> None:
        target: Any = instrument
        if labels:
            # A dict lookup instead of labels(), which validates and locks on every call.
            key = (metric.name, *labels.values())
            target = self._children.get(key)
            if target is None:
                target = self._children[key] = instrument.labels(**labels)
        if metric.value == "seconds":
            target.observe(value)
        else:
            target.inc(value)
