"""The bus's metrics through the OpenTelemetry metrics API.

Counters and gauges are asynchronous instruments: the meter reads the bus's aggregates
(`eventbus.metrics.Metrics`) and `bus.health()` when it collects, so they cost nothing per
event. The API has no asynchronous histogram, so the two duration histograms record each
observation synchronously: that is the cost of this bridge per event (a few microseconds
with the SDK), paid only when a meter provider is configured.

Names are the Prometheus endpoint's with dots (`eventbus.handled`); attributes follow the
messaging semantic conventions: `messaging.system`, `messaging.destination.name` (the
stream), `messaging.consumer.group.name`, `cloudevents.event_type`, plus
`eventbus.outcome` and `eventbus.source` (a Kafka partition or RabbitMQ queue).

Needs `opentelemetry-api` (`pip install eventbus[otel]`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    MeterProvider,
    NoOpMeterProvider,
    Observation,
    get_meter_provider,
)

from .metrics import (
    ATTACHED,
    BACKLOG,
    BUCKETS,
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
)

if TYPE_CHECKING:
    from .bus import EventBus

#: label -> OpenTelemetry attribute
ATTRIBUTE = {
    "stream": "messaging.destination.name",
    "group": "messaging.consumer.group.name",
    "type": "cloudevents.event_type",
    "outcome": "eventbus.outcome",
    "source": "eventbus.source",
    "reason": "eventbus.reason",
}


def otel_name(family: Family) -> str:
    return family.name.replace("_seconds", "").replace("_", ".").replace("in.flight", "in_flight")


def configured_meter_provider() -> MeterProvider | None:
    """The global meter provider if the application configured one (not the API's
    default proxy, which records nothing)."""
    provider = get_meter_provider()
    if isinstance(provider, NoOpMeterProvider) or type(provider).__name__.startswith("_Proxy"):
        return None
    return provider


def bridge(bus: EventBus, provider: MeterProvider, system: str) -> None:
    """Register the bus's instruments on `provider` (once per bus); `system` is the
    broker's `messaging.system`."""
    metrics = bus.metrics
    if metrics is None:
        raise RuntimeError("the bus has no metrics: EventBus(..., metrics=True)")
    meter = provider.get_meter("eventbus", "0.1.0")

    def attributes(family: Family, labels: tuple[str, ...]) -> dict[str, Any]:
        values: dict[str, Any] = {"messaging.system": system}
        for name, value in zip(family.labels, labels, strict=True):
            values[ATTRIBUTE[name]] = value
        return values

    def counts(family: Family, table: Counts) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def read(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, attributes(family, k)) for k, n in list(table.items())]

        return read

    for family, table in (
        (PUBLISHED, metrics.published),
        (PUBLISH_ERRORS, metrics.publish_errors),
        (HANDLED_TOTAL, metrics.handled),
        (FAILED_TOTAL, metrics.failed),
    ):
        meter.create_observable_counter(
            otel_name(family), [counts(family, table)], unit="{event}", description=family.help
        )
    for family, table in ((REQUESTS, metrics.requests), (REPLIES_DROPPED, metrics.replies_dropped)):
        meter.create_observable_counter(
            otel_name(family), [counts(family, table)], unit="{message}", description=family.help
        )

    def gauges(family: Family) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def read(options: CallbackOptions) -> Iterable[Observation]:
            health = bus.health()
            if family is CONNECTED:
                return [Observation(int(health.connected), attributes(family, ()))]
            if family is RECONNECTS:
                return [Observation(health.reconnects, attributes(family, ()))]
            out = []
            for sub in health.subscriptions:
                labels = (sub.stream, sub.group)
                if family is IN_FLIGHT:
                    out.append(Observation(sub.in_flight, attributes(family, labels)))
                elif family is WAITING:
                    out.append(Observation(sub.waiting, attributes(family, labels)))
                elif family is ATTACHED:
                    out.append(Observation(int(sub.attached), attributes(family, labels)))
                elif sub.backlog is not None:
                    for source, n in sub.backlog.items():
                        out.append(Observation(n, attributes(family, (*labels, source))))
            return out

        return read

    meter.create_observable_counter(
        otel_name(RECONNECTS), [gauges(RECONNECTS)], description=RECONNECTS.help
    )
    for family in (CONNECTED, ATTACHED, BACKLOG):
        meter.create_observable_gauge(otel_name(family), [gauges(family)], description=family.help)
    for family in (IN_FLIGHT, WAITING):
        meter.create_observable_up_down_counter(
            otel_name(family), [gauges(family)], description=family.help
        )

    histograms: dict[str, Histogram] = {
        family.name: meter.create_histogram(
            otel_name(family),
            unit="s",
            description=family.help,
            explicit_bucket_boundaries_advisory=list(BUCKETS),
        )
        for family in (PUBLISH_DURATION, HANDLER_DURATION, REQUEST_DURATION)
    }

    def record(family: Family, labels: tuple[str, ...], seconds: float) -> None:
        histograms[family.name].record(seconds, attributes(family, labels))

    metrics.add_histogram_hook(record)
