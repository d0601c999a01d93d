"""The bus's metrics in the Prometheus text format, through `prometheus-client`.

`collector(bus)` is a `prometheus_client` collector that reads the bus's aggregates and
`bus.health()` when scraped (nothing per event); register it in any registry, or let
`eventbus run --http` serve it at `/metrics`. `exposition(bus, accept)` renders a scrape
(OpenMetrics when the scraper asks for it).

Needs `prometheus-client` (`pip install eventbus[http]`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .metrics import (
    ATTACHED,
    BACKLOG,
    CONNECTED,
    FAILED_TOTAL,
    HANDLED_TOTAL,
    HANDLER_DURATION,
    IN_FLIGHT,
    PUBLISH_DURATION,
    PUBLISH_ERRORS,
    PUBLISHED,
    RECONNECTS,
    REPLIES_DROPPED,
    REQUEST_DURATION,
    REQUESTS,
    WAITING,
    Counts,
    Family,
    Histograms,
)

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .bus import EventBus


class BusCollector(Collector):
    """Collects one bus's metrics at scrape time."""

    def __init__(self, bus: EventBus) -> None:
        if bus.metrics is None:
            raise RuntimeError("the bus has no metrics: EventBus(..., metrics=True)")
        self.bus = bus
        self.metrics = bus.metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(PUBLISHED, m.published)
        yield _counter(PUBLISH_ERRORS, m.publish_errors)
        yield _histogram(PUBLISH_DURATION, m.publish_duration)
        yield _counter(HANDLED_TOTAL, m.handled)
        yield _counter(FAILED_TOTAL, m.failed)
        yield _histogram(HANDLER_DURATION, m.handler_duration)
        yield _counter(REQUESTS, m.requests)
        yield _histogram(REQUEST_DURATION, m.request_duration)
        yield _counter(REPLIES_DROPPED, m.replies_dropped)
        health = self.bus.health()
        connected = GaugeMetricFamily(CONNECTED.name, CONNECTED.help)
        connected.add_metric([], int(health.connected and health.running))
        yield connected
        reconnects = CounterMetricFamily(RECONNECTS.name, RECONNECTS.help)
        reconnects.add_metric([], health.reconnects)
        yield reconnects
        in_flight = GaugeMetricFamily(IN_FLIGHT.name, IN_FLIGHT.help, labels=IN_FLIGHT.labels)
        waiting = GaugeMetricFamily(WAITING.name, WAITING.help, labels=WAITING.labels)
        attached = GaugeMetricFamily(ATTACHED.name, ATTACHED.help, labels=ATTACHED.labels)
        backlog = GaugeMetricFamily(BACKLOG.name, BACKLOG.help, labels=BACKLOG.labels)
        for sub in health.subscriptions:
            labels = [sub.stream, sub.group]
            in_flight.add_metric(labels, sub.in_flight)
            waiting.add_metric(labels, sub.waiting)
            attached.add_metric(labels, int(sub.attached))
            for source, n in (sub.backlog or {}).items():
                backlog.add_metric([*labels, source], n)
        yield in_flight
        yield waiting
        yield attached
        yield backlog


def _counter(family: Family, table: Counts) -> CounterMetricFamily:
    # prometheus_client appends `_total` to a counter's samples
    metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
    for labels, n in list(table.items()):
        metric.add_metric(list(labels), n)
    return metric


def _histogram(family: Family, table: Histograms) -> HistogramMetricFamily:
    metric = HistogramMetricFamily(family.name, family.help, labels=family.labels, unit="")
    for labels, histogram in list(table.items()):
        buckets = [(_bound(b), float(n)) for b, n in histogram.cumulative()]
        metric.add_metric(list(labels), buckets, histogram.sum)
    return metric


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def collector(bus: EventBus) -> BusCollector:
    """A collector of the bus's metrics, to register in a `prometheus_client` registry."""
    return BusCollector(bus)


def registry_of(bus: EventBus) -> CollectorRegistry:
    """A registry holding only the bus's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BusCollector(bus))
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The body and content type of a scrape of `registry`, in the format `accept` asks
    for (Prometheus text by default, OpenMetrics on request)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
