"""The one consume path of every broker: decode -> validate -> handler -> ack | retry | dead-letter.

Adapters hand each `Delivery` to `Pipeline.process`; it settles the delivery exactly once,
never raises (except cancellation), and logs one line per failure with the event id,
stream, type, group and attempt bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from functools import partial
from time import time as _now
from typing import Any, NamedTuple

from pydantic import ValidationError

from .batch import BatchCall, call_batch, call_in_batch
from .context import Context, current_context
from .deadletter import dead_letter_info, describe
from .event import Envelope, Event
from .log import get_logger
from .metrics import BAD_INPUT, DEAD_LETTERED, HANDLED, NACKED, REJECTED, RETRIED, SKIPPED
from .middleware import chain
from .protocol import Delivery
from .publisher import BusHandle
from .retry import Reject, Retry, RetryPolicy
from .routing import matches_any
from .types import HandleMiddleware, HandleNext
from .workers import run_sync

_log = get_logger()

#: `on_failure(exc, attempt, outcome)`: a handler attempt failed (telemetry's hook)
FailureHook = Callable[[BaseException, int, str], None]


class _BadInput(NamedTuple):
    """Why a delivery is bad input (it goes to the dead-letter destination)."""

    exc_type: str
    message: str
    stack: str = ""


class Pipeline:
    """Decoding, the handler call and the retry/dead-letter policy of one subscription."""

    def __init__(
        self,
        bus: BusHandle,
        *,
        group: str,
        patterns: tuple[str, ...],
        types: dict[str, type[Event]] | None,
        handler: Callable[..., Any],
        wants_context: bool,
        is_async: bool,
        retry: RetryPolicy,
        middleware: list[HandleMiddleware],
        max_message_bytes: int,
        stopping: asyncio.Event,
        exactly_once: bool = False,
        batch: BatchCall | None = None,
    ) -> None:
        self.bus = bus
        #: exactly-once: `ctx.publish` stages events on the delivery (see `Delivery.stage`)
        self.exactly_once = exactly_once
        self.group = group
        self.patterns = patterns
        self.types = types
        self.retry = retry
        self.max_message_bytes = max_message_bytes
        self.stopping = stopping
        endpoint = (
            _endpoint(handler, wants_context, is_async)
            if batch is None
            else partial(call_in_batch, batch)  # a batch handler: the item's round
        )
        self._call: HandleNext = chain(middleware, endpoint)
        self._batch = batch
        #: `process_batch`, where nothing wraps an item's handler call (else None: a
        #: batch runs each item through `process` on a task of its own)
        self.batch_inline = self.process_batch if batch is not None and not middleware else None
        fast = is_async and wants_context and not middleware and batch is None
        self._direct = handler if fast else None
        #: unix time of the last delivery a handler finished (for `bus.health()`)
        self.last_handled: float | None = None
        #: called for every failed handler attempt when telemetry is on
        self.on_failure: FailureHook | None = None

    async def process(self, d: Delivery) -> str:
        """Settle `d`; return how it ended (`eventbus.metrics.HANDLED`, `RETRIED`, ...)."""
        try:
            ctx = self._decode(d)
            if type(ctx) is not Context:
                if type(ctx) is _BadInput:
                    await self._dead_letter(d, ctx.exc_type, ctx.message, d.attempt, ctx.stack)
                    return BAD_INPUT
                await d.ack()
                return SKIPPED
            token = current_context.set(ctx)
            try:
                if self._direct is not None:  # no middleware, async handler: fast path
                    await self._direct(ctx.event, ctx)
                else:
                    await self._call(ctx)
            except BaseException as exc:
                if _consumer_cancelled(exc):
                    raise
                return await self._failed(ctx, d, exc)
            finally:
                current_context.reset(token)
            await d.ack()
            self.last_handled = _now()
            return HANDLED
        except asyncio.CancelledError:
            return await self._cancelled(d)
        except Exception as exc:  # a bug or a failed settlement: never kill the consumer
            return await self._broken(d, exc)

    async def _failed_alone(self, ctx: Context, d: Delivery, exc: BaseException) -> None:
        """The retry policy for one failed item of an inline batch (its own task: the
        backoffs of a batch's failed items run side by side, not one after the other)."""
        token = current_context.set(ctx)
        try:
            await self._guarded(d, self._failed(ctx, d, exc))
        finally:
            current_context.reset(token)

    async def _dead_letter_alone(self, d: Delivery, bad: _BadInput) -> None:
        """Bad input in an inline batch, dead-lettered (on a task of its own)."""
        await self._guarded(
            d, self._dead_letter(d, bad.exc_type, bad.message, d.attempt, bad.stack)
        )

    async def _guarded(self, d: Delivery, step: Awaitable[object]) -> None:
        """Await a step that settles `d`, with `process`'s guards: a `CancelledError` gives
        `d` back (and goes on if it is the consumer's stop), any other error is logged
        and gives `d` back."""
        try:
            await step
        except asyncio.CancelledError:
            await self._cancelled(d)
        except Exception as exc:
            await self._broken(d, exc)

    async def _cancelled(self, d: Delivery) -> str:
        """`d` was being processed when a `CancelledError` came: give it back (nack), and
        raise again if it is the consumer's stop."""
        await self._settle(d.nack(), d, "nack")
        if _consumer_cancelled(None):
            raise asyncio.CancelledError
        # a CancelledError that is not a stop (from a client library's internals): the
        # delivery went back to the broker; the consumer goes on
        _log.error(
            "pipeline.error",
            event_id=d.attributes.get("id"),
            stream=d.stream,
            group=self.group,
            error="CancelledError outside a stop",
        )
        return NACKED

    async def _broken(self, d: Delivery, exc: Exception) -> str:
        """A bug or a failed settlement while processing `d`: log it, give `d` back."""
        _log.error(
            "pipeline.error",
            event_id=d.attributes.get("id"),
            stream=d.stream,
            group=self.group,
            error=repr(exc),
            exc_info=exc,
        )
        await self._settle(d.nack(), d, "nack")
        return NACKED

    async def process_batch(self, batch: list[Delivery]) -> None:
        """A batch subscription's whole batch, without a task per item: what
        `BatchDispatcher` runs when nothing wraps each item's handler call (no handle
        middleware, no telemetry). Each delivery is settled as `process` settles it: bad
        input dead-lettered, another type acked, the decoded ones handed to one call of
        the batch handler, then each acked or through the retry policy on its own."""
        call = self._batch
        if call is None:
            raise RuntimeError("process_batch is for batch subscriptions")
        settled = [False] * len(batch)
        try:
            joined: list[tuple[int, Context]] = []
            dead: list[tuple[int, _BadInput]] = []
            for i, d in enumerate(batch):
                ctx = self._decode(d)
                if type(ctx) is Context:
                    joined.append((i, ctx))
                elif type(ctx) is _BadInput:
                    dead.append((i, ctx))
                else:  # another type
                    settled[i] = True
                    await self._guarded(d, d.ack())
            if dead:  # side by side, as on the per-item path
                for i, _ in dead:
                    settled[i] = True
                await asyncio.gather(*(self._dead_letter_alone(batch[i], bad) for i, bad in dead))
            if not joined:
                return
            failures = await call_batch(call, [ctx for _, ctx in joined])
            failed: list[tuple[int, Context, BaseException]] = []
            for (i, ctx), failure in zip(joined, failures, strict=True):
                if failure is None:
                    settled[i] = True
                    await self._guarded(batch[i], batch[i].ack())
                else:
                    failed.append((i, ctx, failure))
            if len(failed) < len(joined):
                self.last_handled = _now()
            if failed:  # side by side, as the items of a batch were handled
                for i, _, _ in failed:
                    settled[i] = True
                await asyncio.gather(
                    *(self._failed_alone(ctx, batch[i], exc) for i, ctx, exc in failed)
                )
        except asyncio.CancelledError:  # the consumer's stop: the rest go back to the broker
            for done, d in zip(settled, batch, strict=True):
                if not done:
                    await self._settle(d.nack(), d, "nack")
            raise

    def _decode(self, d: Delivery) -> Context | _BadInput | None:
        """The delivery as a handler context; None for another type (ack it, not this
        handler's business); or why it is bad input. Never raises: whatever goes wrong
        while decoding (bad bytes, recursion or size limits) is bad input."""
        try:
            return self._decode_unguarded(d)
        except Exception as exc:
            name, message, stack = describe(exc)
            return _BadInput(
                "eventbus.DecodeError", f"cannot decode the message: {name}: {message[:500]}", stack
            )

    def _decode_unguarded(self, d: Delivery) -> Context | _BadInput | None:
        attrs = d.attributes
        body = d.body
        defect = getattr(d, "defect", None)  # adapters that skip __init__ may not set it
        if defect is not None:
            return _BadInput("eventbus.DecodeError", defect)
        if len(body) > self.max_message_bytes:
            return _BadInput(
                "eventbus.MessageTooLarge",
                f"body of {len(body)} bytes exceeds max_message_bytes={self.max_message_bytes}",
            )
        etype = attrs.get("type")
        if not etype:
            return _BadInput("eventbus.DecodeError", "message has no event type (ce type header)")
        if not attrs.get("id"):  # adapters give id-less events a stable id; never collapse
            return _BadInput("eventbus.DecodeError", "message has no event id (ce id header)")
        envelope: Envelope | None = None  # a typed handler's context makes it when read
        event: Event | Envelope
        types = self.types
        if types is not None:
            cls = types.get(etype)
            if cls is None:  # another type on the stream: not this handler's business
                return None
            try:
                event = cls.__pydantic_validator__.validate_json(body)
            except ValidationError as exc:
                # pydantic's message names every field that failed; a stack trace would
                # show only this line, and formatting it costs two thirds of a bad event
                invalid_json = any(e["type"] == "json_invalid" for e in exc.errors())
                return _BadInput(
                    "eventbus.DecodeError" if invalid_json else "pydantic.ValidationError",
                    str(exc),
                )
        else:
            if not matches_any(self.patterns, etype):
                return None
            envelope = Envelope.from_attributes(attrs, body, d.stream, d.key, d.attempt)
            ctype = envelope.content_type
            if not ctype or "json" in ctype:
                try:
                    envelope._data = json.loads(body)
                except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                    return _BadInput("eventbus.DecodeError", f"body is not valid JSON: {exc!r}")
            else:
                envelope._data = body
            event = envelope
        if self.exactly_once:
            return Context(self.bus, self.group, envelope, event, d, partial(_stage, self.bus, d))
        return Context(self.bus, self.group, envelope, event, d)

    async def _failed(self, ctx: Context, d: Delivery, exc: BaseException) -> str:
        """The retry policy: in-process retries (order kept), delayed hand-back, or the
        dead-letter destination. Settles `d`. Any exception a handler raises is a failed
        attempt (`SystemExit`, `KeyboardInterrupt` and its own `CancelledError` too)."""
        policy = self.retry
        envelope = ctx.envelope
        hook = self.on_failure
        while True:
            if isinstance(exc, Reject):
                if hook is not None:
                    hook(exc, envelope.attempt, REJECTED)
                await self._dead_letter(
                    d, "eventbus.Reject", exc.reason, envelope.attempt, describe(exc)[2]
                )
                return REJECTED
            attempt = envelope.attempt
            retryable = (
                isinstance(exc, Retry)
                or policy.retries(exc)
                or (not isinstance(exc, Exception) and policy.retries(_FAILURE))
            )
            if not retryable or attempt >= policy.attempts:
                if hook is not None:
                    hook(exc, attempt, DEAD_LETTERED)
                name, message, stack = describe(exc)
                _log.warning(
                    "handler.failed",
                    outcome="dead_letter",
                    reason="not retryable" if not retryable else "attempts exhausted",
                    error=f"{name}: {message[:300]}",
                    **ctx.log_fields(),
                )
                await self._dead_letter(d, name, message, attempt, stack, logged=True)
                return DEAD_LETTERED
            if hook is not None:
                hook(exc, attempt, RETRIED)
            after = exc.after if isinstance(exc, Retry) else None
            delay = after if after is not None else policy.delay(attempt)
            _log.warning(
                "handler.failed",
                outcome="retry",
                delayed=policy.delayed,
                retry_in=round(delay, 3),
                error=f"{type(exc).__name__}: {str(exc)[:300]}",
                **ctx.log_fields(),
            )
            if policy.delayed:
                await self._store(partial(d.retry_later, attempt + 1, delay), d, "delayed retry")
                return RETRIED
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():  # stopping mid-retry: leave it to the broker
                await d.nack()
                return NACKED
            envelope.attempt = attempt + 1
            d.unstage()  # what the failed attempt published is not committed
            try:
                await self._call(ctx)
            except BaseException as again:
                if _consumer_cancelled(again):
                    raise
                exc = again
                continue
            await d.ack()
            self.last_handled = _now()
            return HANDLED

    async def _dead_letter(
        self,
        d: Delivery,
        exc_type: str,
        message: str,
        attempts: int,
        stack: str = "",
        *,
        logged: bool = False,
    ) -> None:
        info = dead_letter_info(
            d, self.group, exc_type=exc_type, message=message, stacktrace=stack, attempts=attempts
        )
        if not logged:
            _log.warning(
                "event.dead_lettered",
                event_id=d.attributes.get("id"),
                stream=d.stream,
                type=d.attributes.get("type", "")[:200],
                group=self.group,
                attempt=attempts,
                error=f"{exc_type}: {message[:300]}",
            )
        await self._store(partial(d.dead_letter, info), d, "dead letter")

    async def _store(self, op: Callable[[], Awaitable[None]], d: Delivery, what: str) -> None:
        """Run a settlement that stores a copy (dead letter, delayed retry) until it works:
        retried with backoff while the bus reports itself unhealthy; given back to the
        broker (nack) if the bus stops meanwhile. The delivery is settled either way."""
        problem = f"{d.stream}/{self.group}: {what}"
        backoff = _STORE_BACKOFF
        failing = False
        while True:
            try:
                await op()
            except Exception as exc:
                failing = True
                _log.error(
                    "settle.failed",
                    what=what,
                    event_id=d.attributes.get("id"),
                    stream=d.stream,
                    group=self.group,
                    error=repr(exc)[:500],
                    retry_in=backoff,
                )
                self.bus.report_problem(problem, f"cannot store a {what}: {exc!r}"[:500])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff)
                if self.stopping.is_set():
                    await self._settle(d.nack(), d, "nack")
                    break
                backoff = min(backoff * 2, _STORE_MAX_BACKOFF)
                continue
            break
        if failing:
            self.bus.report_problem(problem, None)

    async def _settle(self, op: Awaitable[None], d: Delivery, what: str) -> None:
        try:
            await asyncio.shield(op)
        except Exception as exc:
            _log.warning(
                "settle.failed", what=what, event_id=d.attributes.get("id"), error=repr(exc)
            )


#: stands for a non-`Exception` failure (`SystemExit`, ...) when asking a retry policy
_FAILURE = Exception("failure")
_STORE_BACKOFF = 0.1
_STORE_MAX_BACKOFF = 30.0


async def _stage(
    bus: BusHandle,
    d: Delivery,
    event: Event,
    key: str | None,
    headers: dict[str, str] | None,
    correlation_id: str,
    causation_id: str,
) -> Envelope:
    """`ctx.publish` on an exactly-once subscription: the messages go to the delivery,
    committed with its settlement."""
    envelope, messages = await bus.prepare(
        event, key=key, headers=headers, correlation_id=correlation_id, causation_id=causation_id
    )
    for message in messages:
        await d.stage(message)
    return envelope


def _consumer_cancelled(exc: BaseException | None) -> bool:
    """Is the consumer task itself being cancelled (a stop), rather than a handler having
    raised `CancelledError` of its own accord?"""
    if exc is not None and not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _endpoint(handler: Callable[..., Any], wants_context: bool, is_async: bool) -> HandleNext:
    if is_async:
        if wants_context:

            async def call(ctx: Context) -> None:
                await handler(ctx.event, ctx)

        else:

            async def call(ctx: Context) -> None:
                await handler(ctx.event)

    elif wants_context:

        async def call(ctx: Context) -> None:
            await run_sync(handler, ctx.event, ctx)

    else:

        async def call(ctx: Context) -> None:
            await run_sync(handler, ctx.event)

    return call
