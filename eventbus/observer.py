"""`Observer`: where the bus's traces and metrics are taken, around publish and around each
subscription's pipeline. The bus holds one only when tracing or metrics are on; otherwise
publish and consume run exactly as without this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .context import current_context
from .errors import ConfigurationError
from .metrics import BAD_INPUT, DEAD_LETTERED, NACKED, REJECTED, RETRIED, Metrics, TypeLabels
from .protocol import Delivery, Message

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .tracing import Tracing

Process = Callable[[Delivery], Awaitable[str]]


def make_tracing(wanted: bool | None, provider: Any, system: str) -> Tracing | None:
    """Tracing for a bus or a sync publisher: with `provider`, or the global tracer
    provider once the application configured one (`wanted` None), always (`wanted` True:
    an error without opentelemetry-api), or never (`wanted` False). OpenTelemetry is not
    even imported when it is not installed or tracing is off."""
    if wanted is False:
        return None
    try:
        from .tracing import Tracing, configured_tracer_provider
    except ImportError:
        if wanted or provider is not None:
            raise ConfigurationError(
                "tracing needs opentelemetry-api: pip install 'eventbus[otel]'"
            ) from None
        return None
    if provider is None:
        provider = configured_tracer_provider()
    if provider is None and wanted:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
    return Tracing(provider, system) if provider is not None else None


class Observer:
    def __init__(self, tracing: Tracing | None, metrics: Metrics | None) -> None:
        self.tracing = tracing
        self.metrics = metrics

    # --- publish -------------------------------------------------------------------------

    async def publish(self, message: Message, send: Callable[[Message], Awaitable[None]]) -> None:
        tracing, metrics = self.tracing, self.metrics
        span = tracing.start_publish(message) if tracing is not None else None
        started = perf_counter()
        try:
            await send(message)
        except BaseException as exc:
            if metrics is not None:
                metrics.record_publish_error(message.stream, message.type)
            if span is not None:
                tracing.end(span, exc)  # type: ignore[union-attr]
            raise
        if metrics is not None:
            metrics.record_publish(message.stream, {message.type: 1}, perf_counter() - started)
        if span is not None:
            tracing.end(span)  # type: ignore[union-attr]

    async def publish_many(
        self,
        messages: list[Message],
        send: Callable[[list[Message]], Awaitable[None]],
    ) -> None:
        """`send(messages)`, traced and measured; what it needs of the messages is read
        before the send, which may empty the list (`Broker.publish_many`)."""
        if not messages:
            await send(messages)
            return
        tracing, metrics = self.tracing, self.metrics
        streams = {m.stream for m in messages}
        stream = next(iter(streams)) if len(streams) == 1 else "(several)"
        span = tracing.start_publish_batch(stream, messages) if tracing is not None else None
        by_stream: dict[str, dict[str, int]] = {}
        if metrics is not None:
            for m in messages:
                types = by_stream.setdefault(m.stream, {})
                types[m.type] = types.get(m.type, 0) + 1
        started = perf_counter()
        try:
            await send(messages)
        except BaseException as exc:
            if metrics is not None:
                for s, types in by_stream.items():
                    for t, n in types.items():
                        metrics.record_publish_error(s, t, n)
            if span is not None:
                tracing.end(span, exc)  # type: ignore[union-attr]
            raise
        if metrics is not None:
            elapsed = perf_counter() - started
            for s, types in by_stream.items():
                metrics.record_publish(s, types, elapsed)
        if span is not None:
            tracing.end(span)  # type: ignore[union-attr]

    # --- consume -------------------------------------------------------------------------

    def process(self, pipeline: Pipeline, stream: str) -> Process:
        """`pipeline.process`, traced and measured."""
        tracing, metrics = self.tracing, self.metrics
        run, group = pipeline.process, pipeline.group
        labels = TypeLabels(frozenset(pipeline.types) if pipeline.types is not None else None)
        if tracing is not None:
            pipeline.on_failure = _failure_hook(tracing, metrics, stream, group, labels)
        elif metrics is not None:
            pipeline.on_failure = _failure_hook(None, metrics, stream, group, labels)

        async def process(d: Delivery) -> str:
            span = token = None
            if tracing is not None:
                span, token = tracing.start_process(d, group)
            started = perf_counter()
            outcome = NACKED
            try:
                outcome = await run(d)
            finally:
                if metrics is not None:
                    metrics.record_delivery(
                        stream,
                        labels(d.attributes.get("type")),
                        group,
                        outcome,
                        perf_counter() - started,
                    )
                if span is not None:
                    tracing.end_process(  # type: ignore[union-attr]
                        span, token, outcome, _error_of(outcome)
                    )
            return outcome

        return process


def _failure_hook(
    tracing: Tracing | None,
    metrics: Metrics | None,
    stream: str,
    group: str,
    labels: TypeLabels,
) -> Callable[[BaseException, int, str], None]:
    """Per failed attempt: an exception event on the process span; `retried` attempts
    counted (a final dead letter or reject is counted once, with the delivery)."""

    def hook(exc: BaseException, attempt: int, outcome: str) -> None:
        if tracing is not None:
            tracing.failed_attempt(exc, attempt, outcome)
        if metrics is not None and outcome == RETRIED:
            ctx = current_context.get()
            etype = ctx.envelope.type if ctx is not None else None
            metrics.record_failure(stream, labels(etype), group, outcome)

    return hook


def _error_of(outcome: str) -> str | None:
    """The process span's error status: an event that was not handled in the end."""
    if outcome in (DEAD_LETTERED, REJECTED, BAD_INPUT):
        return f"eventbus.{outcome}"
    if outcome == NACKED:
        return "eventbus.nacked"
    return None
