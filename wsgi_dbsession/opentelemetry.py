"""The observer bridge to OpenTelemetry metrics (the ``opentelemetry`` extra).

::

    from wsgi_dbsession.opentelemetry import OpenTelemetryMetrics

    manager.store.observe(OpenTelemetryMetrics())  # the global MeterProvider

Counters and histograms named ``wsgi_dbsession.*`` (docs/metrics.md lists
them), from the meter ``wsgi_dbsession``; the SDK's MeterProvider, its
readers and exporters are the application's to configure.
"""

from __future__ import annotations

from opentelemetry import metrics

from .observe import BUCKETS, Metric, MetricsBridge

PREFIX = "wsgi_dbsession"


class OpenTelemetryMetrics(MetricsBridge[metrics.Counter | metrics.Histogram]):
    """An observer recording on a meter of ``meter_provider`` (the global one unless given)."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None, *, prefix: str = PREFIX) -> None:
        self.meter = metrics.get_meter("wsgi_dbsession", meter_provider=meter_provider)
        self.prefix = prefix
        super().__init__()

    def instrument(self, metric: Metric) -> metrics.Counter | metrics.Histogram:
        if metric.value == "seconds":  # OpenTelemetry's convention: a .duration histogram in seconds
            name = f"{self.prefix}.{metric.name.removesuffix('_seconds')}.duration"
            return self.meter.create_histogram(
                name, unit="s", description=metric.description, explicit_bucket_boundaries_advisory=BUCKETS
            )
        name = f"{self.prefix}.{metric.name}"
        unit = "{row}" if metric.value == "rows" else "1"
        return self.meter.create_counter(name, unit=unit, description=metric.description)

    def record(
        self,
        metric: Metric,
        instrument: metrics.Counter | metrics.Histogram,
        value: float,
        labels: dict[str, str],
    ) -> None:
        if isinstance(instrument, metrics.Histogram):
            instrument.record(value, labels)
        else:
            instrument.add(value, labels)
