"""What telemetry costs: the end-to-end scenario of every broker with eventbus as it is
(nothing configured), with metrics on, and with an OpenTelemetry SDK tracer provider
(batch processor, an exporter that drops the spans; always sampling, and a 1% ratio
sampler as a high-volume service would run) plus metrics.

The OpenTelemetry SDK is a dev/bench dependency (`opentelemetry-sdk`), not eventbus's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from . import kafka, memory, rabbitmq
from .core import Runner, Scenario, Stopwatch, metrics_of

PLAIN = "eventbus"
METRICS = "eventbus + metrics"
TRACED = "eventbus + tracing + metrics"
SAMPLED = "eventbus + tracing 1% sampled + metrics"


def _tracer_provider(ratio: float = 1.0) -> Any:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    sampler = sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler if ratio < 1 else sampling.ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


def _variants(run: Any) -> dict[str, Runner]:
    return {
        PLAIN: partial(run, tracing=False, metrics=False),
        METRICS: partial(run, tracing=False, metrics=True),
        TRACED: partial(run, tracer_provider=_tracer_provider(), metrics=True),
        SAMPLED: partial(run, tracer_provider=_tracer_provider(0.01), metrics=True),
    }


async def span_floor(count: int) -> dict[str, float]:
    """The SDK's own cost per event, without eventbus: a producer span and a consumer
    span (its child), no attributes, on the same provider as the traced variant."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    tracer = _tracer_provider().get_tracer("floor")
    with Stopwatch() as watch:
        for _ in range(count):
            publish = tracer.start_span("publish", kind=SpanKind.PRODUCER)
            publish.end()
            parent = trace.set_span_in_context(publish)
            tracer.start_span("process", context=parent, kind=SpanKind.CONSUMER).end()
    return metrics_of(count, watch.wall, watch=watch)


def scenarios(quick: bool) -> list[Scenario]:
    n = {"memory": 5_000, "rabbitmq": 2_000, "kafka": 5_000}
    if not quick:
        n = {"memory": 50_000, "rabbitmq": 20_000, "kafka": 50_000}
    description = "end-to-end as in the broker's suite, telemetry off / metrics / traces"
    return [
        Scenario(
            "otel",
            "span floor",
            "two spans per event (publish + process), nothing else: the SDK's own cost",
            {"OpenTelemetry SDK alone": partial(span_floor, n["memory"])},
        ),
        Scenario(
            "memory",
            "e2e+telemetry",
            description,
            _variants(partial(memory.eventbus_e2e, n["memory"])),
        ),
        Scenario(
            "rabbitmq",
            "e2e+telemetry",
            description,
            _variants(partial(rabbitmq.eventbus_run, n["rabbitmq"], None, True)),
        ),
        Scenario(
            "kafka",
            "e2e+telemetry",
            description,
            _variants(partial(kafka.eventbus_run, n["kafka"], None, True)),
        ),
    ]
