"""OpenTelemetry tracing: a span per publish and per processed delivery, following the
OpenTelemetry semantic conventions for messaging.

The trace context travels in the event itself, as the CloudEvents Distributed Tracing
extension defines it: the `traceparent` and `tracestate` attributes (W3C Trace Context),
so `ce_traceparent` on Kafka and `ce-traceparent` on RabbitMQ. A handler's `process`
span continues the publisher's trace, `ctx.publish` inside the handler continues it again
(the process span is the current span while the handler runs), retried and dead-lettered
copies keep the attributes and so the trace id, and an event from a producer that sent no
`traceparent` starts a new trace.

Needs `opentelemetry-api` (`pip install eventbus[otel]`); imported only when tracing is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .protocol import Delivery, Message

#: the CloudEvents extension attributes that carry the trace context
TRACE_ATTRIBUTES = ("traceparent", "tracestate")

_PROPAGATOR = TraceContextTextMapPropagator()
_VERSION = "0.1.0"


def configured_tracer_provider() -> TracerProvider | None:
    """The global tracer provider if the application configured one (not the API's
    default proxy, which records nothing)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return provider


class Tracing:
    """Starts and ends the spans of one bus. Every method is cheap to skip: the bus holds
    no `Tracing` at all when tracing is off."""

    __slots__ = ("_common", "_tracer", "system")

    def __init__(self, provider: TracerProvider, system: str) -> None:
        self._tracer = provider.get_tracer("eventbus", _VERSION)
        self.system = system
        self._common = {"messaging.system": system}

    # --- publish -------------------------------------------------------------------------

    def start_publish(self, message: Message) -> Span:
        """A `publish <stream>` span (child of the current span: a handler's process span,
        an HTTP request's span, ...) whose context goes into the event's attributes. An
        event that already carries a `traceparent` (an outbox relay re-publishing a stored
        event) continues that trace when no span is current."""
        attributes = message.attributes
        parent = None
        if "traceparent" in attributes and not trace.get_current_span().is_recording():
            parent = _PROPAGATOR.extract(attributes)
        span = self._tracer.start_span(
            f"publish {message.stream}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                **self._common,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": message.stream,
                "messaging.message.id": attributes.get("id", ""),
                "messaging.message.body.size": len(message.body),
                "cloudevents.event_type": message.type,
                **_key_attribute(self.system, message.key),
            },
        )
        self._inject(span, attributes)
        return span

    def start_publish_batch(self, stream: str, messages: Sequence[Message]) -> Span:
        """One `publish <stream>` span for a pipelined batch (`publish_many`), whose context
        every event of the batch carries."""
        span = self._tracer.start_span(
            f"publish {stream}",
            kind=SpanKind.PRODUCER,
            attributes={
                **self._common,
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": stream,
                "messaging.batch.message_count": len(messages),
            },
        )
        for message in messages:
            self._inject(span, message.attributes)
        return span

    @staticmethod
    def end(span: Span, error: BaseException | None = None) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
        span.end()

    # --- process -------------------------------------------------------------------------

    def start_process(self, d: Delivery, group: str) -> tuple[Span, object]:
        """A `process <stream>` span, child of the publisher's span when the event carries
        a valid `traceparent` (a new trace otherwise), made the current span for the
        handler. Returns the span and the token `end_process` needs."""
        attributes = d.attributes
        parent = None
        if "traceparent" in attributes:
            parent = _PROPAGATOR.extract(attributes)
        values: dict[str, Any] = {
            **self._common,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": d.stream,
            "messaging.consumer.group.name": group,
            "messaging.message.id": attributes.get("id", ""),
            "messaging.message.body.size": len(d.body),
            "cloudevents.event_type": attributes.get("type", "")[:200],
            "eventbus.attempt": d.attempt,
        }
        if d.partition is not None:
            values["messaging.destination.partition.id"] = str(d.partition)
        if d.offset is not None:
            values["messaging.kafka.offset"] = d.offset
        if d.routing_key is not None:
            values["messaging.rabbitmq.destination.routing_key"] = d.routing_key
        values.update(_key_attribute(self.system, d.key))
        span = self._tracer.start_span(
            f"process {d.stream}", context=parent, kind=SpanKind.CONSUMER, attributes=values
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def failed_attempt(exc: BaseException, attempt: int, outcome: str) -> None:
        """Record a failed handler attempt on the current process span (an exception event:
        in-process retries are events of the same span)."""
        span = trace.get_current_span()
        span.record_exception(
            exc, attributes={"eventbus.attempt": attempt, "eventbus.outcome": outcome}
        )

    @staticmethod
    def end_process(span: Span, token: object, outcome: str, reason: str | None) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        span.set_attribute("eventbus.outcome", outcome)
        if reason is not None:
            span.set_status(Status(StatusCode.ERROR, reason[:300]))
            span.set_attribute("error.type", reason.partition(":")[0][:100])
        span.end()

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _inject(span: Span, attributes: dict[str, str]) -> None:
        for name in TRACE_ATTRIBUTES:
            attributes.pop(name, None)  # a re-published event gets this publish's context
        _PROPAGATOR.inject(attributes, context=trace.set_span_in_context(span))


def _key_attribute(system: str, key: str | None) -> dict[str, str]:
    if key is None:
        return {}
    if system == "kafka":
        return {"messaging.kafka.message.key": key[:200]}
    return {"eventbus.partition_key": key[:200]}
