"""Request/reply: `await bus.request(query, timeout=2)` and `@bus.responder(group=...)`.

A request is an ordinary event (CloudEvents, on its stream, through the same publish path
and middleware) that carries one more extension attribute, `replyto`: where the reply
goes, an address of the requesting bus's reply channel. Every group subscribed to its type
receives it like any other event (an audit log sees requests too); only a responder's
group answers it.

A reply is a message sent to that address, never stored on a stream. Its attributes:

    id, source, specversion, time, datacontenttype   as for any event
    type         `eventbus.reply` (a value) or `eventbus.reply.error` (an error)
    inreplyto    the id of the request it answers: what the requester matches on
    causationid  the request's id; correlationid: the request's conversation

and its JSON body is the value the responder returned, or the error as
`{"type", "message", "code", "dead_lettered"}`.

The kernel does the matching (by `inreplyto`), the timeouts and the counting once for
every broker (`Requester`); an adapter supplies the transport (`RequestReply` in
`protocol`): a reply channel per bus, and sending a reply to an address.

Replies are at most once: a reply whose requester is gone (timed out, stopped, restarted)
is dropped and counted (`eventbus_replies_dropped_total` by reason, and a `reply.dropped`
log line), never an error of the requester or of the responder.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import lru_cache, update_wrapper
from time import perf_counter
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from .context import Context
from .cqrs import DomainError
from .deadletter import describe
from .errors import BusClosed, DecodeError, EventBusError
from .log import get_logger
from .metrics import REPLIED, REQUEST_FAILED, TIMED_OUT, Metrics
from .middleware import chain
from .protocol import IN_REPLY_TO, REPLY_TO, Message, Reply, ReplyChannel, RequestReply
from .retry import Reject, Retry, RetryPolicy
from .types import PublishMiddleware
from .wire import new_id, now_rfc3339
from .workers import run_sync

if TYPE_CHECKING:
    from .observer import Observer

_log = get_logger()

#: the `type` of a reply carrying a value, and of one carrying an error
REPLY_TYPE = "eventbus.reply"
ERROR_TYPE = "eventbus.reply.error"
#: seconds a responder waits for its reply to be sent before it counts it undeliverable
REPLY_SEND_TIMEOUT = 10.0
#: `bus.request`'s timeout unless given (seconds)
DEFAULT_TIMEOUT = 10.0
#: finished requests remembered, to tell a late or duplicate reply from a stray one
_REMEMBERED = 10_000
#: how much of a remote error's message a reply carries
_MAX_ERROR_MESSAGE = 2048

#: why a reply was dropped (the `reason` label of `eventbus_replies_dropped_total`)
LATE = "late"
DUPLICATE = "duplicate"
UNMATCHED = "unmatched"
UNDELIVERABLE = "undeliverable"


class RequestFailed(EventBusError):
    """The responder answered the request with an error: a domain error it raised (an
    `eventbus.DomainError` such as `NotFound`, or one of its `errors=`), or, with
    `dead_lettered` true, a failure that exhausted its retry policy (the request is in
    the responder group's dead letters).

    `error_type` is the remote exception's qualified name, `code` its `code` (a
    `DomainError`'s stable machine-readable name), if it had one."""

    def __init__(
        self,
        *,
        request_type: str,
        request_id: str,
        error_type: str,
        error_message: str,
        code: str | None = None,
        dead_lettered: bool = False,
    ) -> None:
        self.request_type = request_type
        self.request_id = request_id
        self.error_type = error_type
        self.error_message = error_message
        self.code = code
        self.dead_lettered = dead_lettered
        how = "failed in the responder (dead-lettered)" if dead_lettered else "was refused"
        super().__init__(
            f"request {request_type} (id {request_id}) {how}: {error_type}: {error_message}"
        )


class RequestTimeout(EventBusError, TimeoutError):
    """No reply came within the request's timeout (a `TimeoutError`). A reply that comes
    later is dropped and counted as `late`."""

    def __init__(self, request_type: str, request_id: str, stream: str, timeout: float) -> None:
        self.request_type = request_type
        self.request_id = request_id
        self.stream = stream
        self.timeout = timeout
        super().__init__(
            f"request {request_type} (id {request_id}) on stream {stream!r} got no reply "
            f"within {timeout}s: is a responder for {request_type!r} running and keeping up?"
        )


# --- the requester ------------------------------------------------------------------------


class _Pending:
    __slots__ = ("future", "started", "stream", "type")

    def __init__(self, future: asyncio.Future[Reply], message: Message) -> None:
        self.future = future
        self.stream = message.stream
        self.type = message.type
        self.started = perf_counter()


class Requester:
    """The requesting side of one bus run: its reply channel (opened on the first
    request), the requests waiting for a reply, and what happens to every reply."""

    def __init__(
        self,
        broker: RequestReply,
        *,
        metrics: Metrics | None,
        observer: Observer | None,
        middleware: list[PublishMiddleware],
    ) -> None:
        self._broker = broker
        self._metrics = metrics
        self._observer = observer
        self._middleware = middleware
        self._channel: ReplyChannel | None = None
        self._publish: Callable[[Message], Awaitable[None]] | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._pending: dict[str, _Pending] = {}
        #: request id -> its type, for requests that finished: answered (True) or not
        self._finished: OrderedDict[str, tuple[str, bool]] = OrderedDict()

    @property
    def pending(self) -> int:
        """Requests waiting for their reply now."""
        return len(self._pending)

    async def _channel_publish(self) -> Callable[[Message], Awaitable[None]]:
        """The reply channel's publish, behind the publish middleware and telemetry
        (the channel is opened on first use)."""
        if self._publish is None:
            async with self._opening:
                if self._closed:
                    raise BusClosed("the bus is stopping: no more requests")
                if self._publish is None:
                    channel = self._channel = await self._broker.reply_channel(self.receive)
                    observer = self._observer
                    if observer is None:
                        send = channel.publish
                    else:

                        async def send(message: Message) -> None:
                            await observer.publish(message, channel.publish)

                    self._publish = chain(self._middleware, send)
        return self._publish

    async def request(self, message: Message, timeout: float) -> Reply:
        """Publish the request `message` (its `replyto` set here) and wait for its reply;
        raise `RequestTimeout` after `timeout` seconds (publishing included, opening the
        reply channel on the first request not)."""
        loop = asyncio.get_running_loop()
        request_id = message.id
        future: asyncio.Future[Reply] = loop.create_future()
        pending = _Pending(future, message)
        if self._closed:
            raise BusClosed("the bus is stopping: no more requests")
        # the first request opens the channel (Kafka creates a topic): not in its timeout
        publish = await self._channel_publish()
        assert self._channel is not None
        message.attributes[REPLY_TO] = self._channel.address
        answered = False
        try:
            async with asyncio.timeout(timeout):
                self._pending[request_id] = pending  # before publishing: replies are fast
                await publish(message)
                reply = await future
            answered = True
        except TimeoutError:
            self._record(pending, TIMED_OUT)
            raise RequestTimeout(message.type, request_id, message.stream, timeout) from None
        finally:
            self._pending.pop(request_id, None)
            self._remember(request_id, message.type, answered)
        failed = reply.attributes.get("type") == ERROR_TYPE
        self._record(pending, REQUEST_FAILED if failed else REPLIED, perf_counter())
        return reply

    def _record(self, pending: _Pending, outcome: str, now: float | None = None) -> None:
        if self._metrics is not None:
            seconds = now - pending.started if now is not None else None
            self._metrics.record_request(pending.stream, pending.type, outcome, seconds)

    def _remember(self, request_id: str, etype: str, answered: bool) -> None:
        finished = self._finished
        finished[request_id] = (etype, answered)
        if len(finished) > _REMEMBERED:
            finished.popitem(last=False)

    def receive(self, reply: Reply) -> None:
        """A reply arrived on the reply channel (the adapter calls this on the loop):
        hand it to its waiting request, or drop and count it. Never raises."""
        try:
            request_id = reply.attributes.get(IN_REPLY_TO) or ""
            pending = self._pending.pop(request_id, None)
            if pending is not None and not pending.future.done():
                pending.future.set_result(reply)
                return
            finished = self._finished.get(request_id)
            if finished is None:
                reason, etype = UNMATCHED, ""
            else:
                etype, answered = finished
                reason = DUPLICATE if answered else LATE
            dropped(self._metrics, reason, request_id=request_id[:100], request_type=etype)
        except Exception as exc:  # a reply never breaks the adapter that delivered it
            _log.error("reply.receive_failed", error=repr(exc), exc_info=exc)

    async def close(self) -> None:
        """The bus stops: requests still waiting fail with `BusClosed`; the channel closes."""
        self._closed = True
        async with self._opening:  # not while it is being opened
            pending, self._pending = self._pending, {}
            for waiting in pending.values():
                if not waiting.future.done():
                    waiting.future.set_exception(
                        BusClosed(f"the bus stopped while request {waiting.type} waited")
                    )
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close()


def dropped(metrics: Metrics | None, reason: str, **fields: Any) -> None:
    """A reply was dropped: count it and say so."""
    if metrics is not None:
        metrics.record_dropped_reply(reason)
    _log.warning("reply.dropped", reason=reason, **fields)


def decode_reply(reply: Reply, request: Message, reply_type: Any, max_bytes: int) -> Any:
    """The value of `reply` (validated into `reply_type` if given, else the parsed JSON),
    or `RequestFailed` raised for an error reply; a reply larger than `max_bytes` (the
    bus's `max_message_bytes`) is not decoded (`DecodeError`)."""
    body = reply.body
    if len(body) > max_bytes:
        raise DecodeError(
            f"the reply to request {request.type} (id {request.id}) is {len(body)} bytes, "
            f"above max_message_bytes={max_bytes}"
        )
    if reply.attributes.get("type") == ERROR_TYPE:
        try:
            error = json.loads(body)
            if not isinstance(error, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError, RecursionError):
            text = body[:200].decode("utf-8", "replace")
            error = {"type": "eventbus.DecodeError", "message": f"undecodable error reply {text!r}"}
        code = error.get("code")
        raise RequestFailed(
            request_type=request.type,
            request_id=request.id,
            error_type=str(error.get("type") or "?"),
            error_message=str(error.get("message") or ""),
            code=code if isinstance(code, str) else None,
            dead_lettered=error.get("dead_lettered") is True,
        )
    try:
        if reply_type is None:
            return json.loads(body) if body else None
        return _adapter(reply_type).validate_json(body)
    except (ValidationError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        wanted = getattr(reply_type, "__name__", None) or repr(reply_type)
        raise DecodeError(
            f"the reply to request {request.type} (id {request.id}) is not "
            f"{wanted if reply_type is not None else 'JSON'}: {str(exc)[:1000]}"
        ) from exc


@lru_cache(maxsize=256)
def _cached_adapter(reply_type: Any) -> TypeAdapter[Any]:
    return TypeAdapter(reply_type)


def _adapter(reply_type: Any) -> TypeAdapter[Any]:
    try:
        return _cached_adapter(reply_type)
    except TypeError:  # not hashable
        return TypeAdapter(reply_type)


# --- the responder -----------------------------------------------------------------------

#: `send(address, message)`: the bus sends one reply (bounded, never raises but cancellation)
SendReply = Callable[[str, Message], Awaitable[None]]


def responder_endpoint(
    handler: Callable[..., Any],
    *,
    wants_context: bool,
    is_async: bool,
    errors: tuple[type[BaseException], ...],
    retry: RetryPolicy,
    send: SendReply,
    source: Callable[[], str],
    max_bytes: Callable[[], int],
) -> Callable[[Any, Context], Awaitable[None]]:
    """A responder's handler as the subscription runs it: call `handler`, send what it
    returned (or the domain error it raised) to the request's `replyto`.

    - a value (a pydantic model, any JSON-able value, None) is the reply;
    - an exception of `errors` (`DomainError` and `RequestFailed` always) is an answer:
      replied as an error, and the request is acked (never retried nor dead-lettered);
    - any other exception is a failure of the responder: the subscription's retry policy
      runs; once it gives up (the request is dead-lettered) the caller gets the error too.

    An event without `replyto` (published, not requested) is handled the same way, and
    nothing is sent.
    """

    async def call(event: Any, ctx: Context) -> Any:
        if is_async:
            return await (handler(event, ctx) if wants_context else handler(event))
        if wants_context:
            return await run_sync(handler, event, ctx)
        return await run_sync(handler, event)

    async def respond(event: Any, ctx: Context) -> None:
        address = ctx.envelope.extensions.get(REPLY_TO)
        try:
            value = await call(event, ctx)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and _stopping():
                raise
            if isinstance(exc, errors):  # an answer, not a failure
                if address:
                    await send(address, _error_reply(ctx, source(), exc, dead_lettered=False))
                return
            if address and _gives_up(exc, ctx.attempt, retry):
                await send(address, _error_reply(ctx, source(), exc, dead_lettered=True))
            raise
        if not address:
            return
        try:
            body = to_json(value)
        except PydanticSerializationError as exc:
            problem = f"the reply cannot be serialized as JSON: {exc}"
        else:
            limit = max_bytes()
            if len(body) <= limit:
                await send(address, _reply(ctx, source(), REPLY_TYPE, body))
                return
            problem = f"the reply is {len(body)} bytes, above max_message_bytes={limit}"
        failure = Reject(problem)  # a bug of the responder: dead-lettered, and said so
        await send(address, _error_reply(ctx, source(), failure, dead_lettered=True))
        raise failure

    return update_wrapper(respond, handler)  # its name, and `__wrapped__` for introspection


def _stopping() -> bool:
    """Is the consumer task itself being cancelled (a stop)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


#: stands for a failure that is no `Exception` (`SystemExit`, ...) asking a retry policy
_FAILURE = Exception("failure")


def _gives_up(exc: BaseException, attempt: int, policy: RetryPolicy) -> bool:
    """Whether the pipeline dead-letters the request after this failed attempt (the
    policy's decision, as `Pipeline._failed` takes it)."""
    if isinstance(exc, Reject):
        return True
    retryable = (
        isinstance(exc, Retry)
        or policy.retries(exc)
        or (not isinstance(exc, Exception) and policy.retries(_FAILURE))
    )
    return not retryable or attempt >= policy.attempts


def _reply(ctx: Context, source: str, etype: str, body: bytes) -> Message:
    request = ctx.envelope
    attributes = {
        "id": new_id(),
        "source": source,
        "specversion": "1.0",
        "type": etype,
        "time": now_rfc3339(),
        "datacontenttype": "application/json",
        IN_REPLY_TO: request.id,
        "correlationid": request.correlation_id or request.id,
        "causationid": request.id,
    }
    return Message(request.stream, etype, None, body, attributes)


def _error_reply(ctx: Context, source: str, exc: BaseException, *, dead_lettered: bool) -> Message:
    if isinstance(exc, RequestFailed):  # a request of the responder's own failed: pass it on
        name, message, code = exc.error_type, exc.error_message, exc.code
    else:
        name, message, _stack = describe(exc)
        if isinstance(exc, Reject):
            name, message = "eventbus.Reject", exc.reason
        code = getattr(exc, "code", None)
    error = {
        "type": name,
        "message": message[:_MAX_ERROR_MESSAGE],
        "code": code if isinstance(code, str) else None,
        "dead_lettered": dead_lettered,
    }
    return _reply(ctx, source, ERROR_TYPE, json.dumps(error).encode())


async def send_reply(
    broker: object, metrics: Metrics | None, address: str, message: Message
) -> None:
    """Send one reply through `broker` (bounded by `REPLY_SEND_TIMEOUT`); a reply that
    cannot be sent is dropped and counted as `undeliverable`, never raised: the request
    was handled, and the responder goes on."""
    fields = {"request_id": message.attributes.get(IN_REPLY_TO), "address": address[:200]}
    if broker is None:
        dropped(metrics, UNDELIVERABLE, error="the bus stopped", **fields)
        return
    if not isinstance(broker, RequestReply):
        dropped(metrics, UNDELIVERABLE, error="this broker offers no request/reply", **fields)
        return
    try:
        async with asyncio.timeout(REPLY_SEND_TIMEOUT):
            await broker.send_reply(address, message)
    except Exception as exc:  # the requester is gone, the address refused, the link down
        dropped(metrics, UNDELIVERABLE, error=repr(exc)[:300], **fields)


def domain_errors(errors: tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    """The exceptions a responder answers with: `DomainError` and `RequestFailed` always,
    plus its own `errors`."""
    for error in errors:
        if not (isinstance(error, type) and issubclass(error, BaseException)):
            raise TypeError(f"responder errors= takes exception classes, got {error!r}")
    return (DomainError, RequestFailed, *errors)
