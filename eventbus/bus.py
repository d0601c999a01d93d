"""`EventBus`: subscribe handlers, publish events, run the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from time import time as _now
from typing import Any, TypeVar, overload

from .batch import DEFAULT_BATCH_SIZE, DEFAULT_BATCH_TIMEOUT, BatchDispatcher, batch_endpoint
from .context import correlate_attributes
from .dispatch import Dispatcher
from .errors import (
    BusClosed,
    ConfigurationError,
    ConsumerFailed,
    SubscriptionError,
    Unsupported,
)
from .event import Envelope, Event, validate_name
from .health import Health, SubscriptionHealth
from .heap import freeze_heap
from .log import configure as configure_logging
from .log import get_logger
from .messages import PUBLISH_MANY_CHUNK, build_message, envelope_of, note_stored
from .metrics import Metrics
from .middleware import chain, correlate
from .observer import Observer, make_tracing
from .pipeline import Pipeline
from .protocol import (
    Broker,
    Consumer,
    ConsumerState,
    DeadLetter,
    Delivery,
    LinkState,
    Message,
    ReportsBacklog,
    ReportsState,
    RequestReply,
    Select,
    SelectsDeadLetters,
    SubscriptionSpec,
)
from .registry import find_adapter
from .requests import (
    DEFAULT_TIMEOUT,
    Requester,
    decode_reply,
    domain_errors,
    responder_endpoint,
    send_reply,
)
from .retry import DEFAULT_RETRY, RetryPolicy
from .routing import inspect_handler, validate_pattern
from .settings import Settings, load_settings, redact_url
from .types import HandleMiddleware, PublishMiddleware

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")
_log = get_logger()


@dataclass(slots=True)
class Subscription:
    """A handler attached to a group: what `bus.subscribe` recorded."""

    handler: Callable[..., Any]
    stream: str
    patterns: tuple[str, ...]
    group: str
    types: dict[str, type[Event]] | None
    retry: RetryPolicy
    concurrency: int
    wants_context: bool
    is_async: bool
    options: dict[str, Any] = field(default_factory=dict)
    #: consume-transform-produce in broker transactions (see `EventBus.subscribe`)
    exactly_once: bool = False
    #: a batch handler (`list[...]` of events): the most events per call, and how long
    #: a batch waits to fill (None: a handler of one event)
    batch_size: int | None = None
    batch_timeout: float = DEFAULT_BATCH_TIMEOUT

    @property
    def name(self) -> str:
        return str(getattr(self.handler, "__qualname__", repr(self.handler)))


class EventBus:
    """The bus. The broker comes from the URL (`EVENTBUS_URL`, default `memory://`)::

    bus = EventBus()                       # or EventBus("amqp://guest:guest@127.0.0.1/")

    @bus.subscribe(group="billing")
    async def charge(event: OrderCreated, ctx: Context) -> None: ...

    async with bus:                        # connect, declare, start consumers
        await bus.publish(OrderCreated(...), key="o-1")
                                           # exit: graceful stop
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        middleware: Sequence[HandleMiddleware] = (),
        publish_middleware: Sequence[PublishMiddleware] = (),
        tracer_provider: Any = None,
        meter_provider: Any = None,
        **options: Any,
    ) -> None:
        """`tracer_provider` / `meter_provider`: OpenTelemetry providers to use instead of
        the global ones (see `Settings.tracing` and `Settings.metrics`)."""
        if settings is None:
            settings = load_settings(url, **options)
        elif url is not None or options:
            raise ConfigurationError("pass either settings= or url/options, not both")
        self.settings = settings
        self._adapter = find_adapter(settings)
        self._broker: Broker | None = self._adapter.create_broker(settings)  # validates options
        self._subscriptions: list[Subscription] = []
        self._handle_middleware = list(middleware)
        self._publish_middleware = [correlate, *publish_middleware]
        self._publish_chain = chain(self._publish_middleware, self._send)
        #: without user publish middleware, `correlate` is inlined into `publish`
        self._fast_publish = not publish_middleware
        self._consumers: list[Consumer] = []
        self._dispatchers: list[Dispatcher | BatchDispatcher] = []
        self._stopping = asyncio.Event()
        self._running = False
        self._stop_task: asyncio.Task[None] | None = None
        self._problems: dict[str, str] = {}
        self._failure: BaseException | None = None
        self._source = settings.source
        self._max_bytes = settings.max_message_bytes
        self._optional_attributes = settings.optional_attributes
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._metrics: Metrics | None = None
        if settings.metrics or meter_provider is not None:
            self._metrics = Metrics()
        self._bridged = False
        #: tracing and metrics around publish and process (None: both off)
        self._observer: Observer | None = None
        self._pipelines: list[Pipeline] = []
        self._backlogs: dict[int, dict[str, int] | None] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._last_published: float | None = None
        #: the requesting side of this run (`request`), made on the first request
        self._requester: Requester | None = None

    def __repr__(self) -> str:
        url = redact_url(self.settings.url)
        return f"EventBus({url!r}, subscriptions={len(self._subscriptions)})"

    # --- subscribing ---------------------------------------------------------------------

    def subscribe(
        self,
        stream: str | None = None,
        *patterns: str,
        group: str,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        exactly_once: bool = False,
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorator: run the handler for every matching event, once per `group`.

        Typed handlers (annotated with an Event class or a union of them) get the stream
        and types from the annotation. Untyped handlers take an `Envelope` and need
        `stream` and optionally patterns (`order.*`, `order.#`; default `#`).

        `exactly_once=True` (brokers with `Capabilities.transactions`: Kafka) commits
        the events the handler publishes through `ctx.publish` together with the
        consumed offset, or with the retry or dead-letter copy that settles a failed
        event, in one broker transaction: a redelivery after a crash re-runs the handler
        but none of its earlier events ever became visible to `read_committed`
        consumers. `bus.start()` refuses it on a broker that cannot.
        """

        def decorator(handler: F) -> F:
            self.add_handler(
                handler,
                stream,
                *patterns,
                group=group,
                retry=retry,
                concurrency=concurrency,
                exactly_once=exactly_once,
                **options,
            )
            return handler

        return decorator

    def add_handler(
        self,
        handler: Callable[..., Any],
        stream: str | None = None,
        *patterns: str,
        group: str,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        exactly_once: bool = False,
        **options: Any,
    ) -> Subscription:
        if self._running:
            raise SubscriptionError("subscribe handlers before the bus starts")
        validate_name("group", group)
        if concurrency < 1:
            raise SubscriptionError(f"concurrency must be >= 1, got {concurrency}")
        shape = inspect_handler(handler)
        if shape.event_types is not None:
            assert shape.stream is not None
            if stream is not None and stream != shape.stream:
                raise SubscriptionError(
                    f"handler reads {shape.stream!r} by its annotation but stream={stream!r} "
                    "was given"
                )
            if patterns:
                raise SubscriptionError(
                    "a typed handler takes its event types from its annotation; patterns "
                    "are for untyped (Envelope) handlers"
                )
            stream = shape.stream
            patterns = tuple(sorted(shape.event_types))
        else:
            if stream is None:
                raise SubscriptionError(
                    f"untyped handler {getattr(handler, '__qualname__', handler)!r} needs a "
                    "stream: bus.subscribe('orders', 'order.#', group=...)"
                )
            patterns = tuple(validate_pattern(p) for p in patterns) or ("#",)
        validate_name("stream", stream)
        batch_size, batch_timeout = _batch_options(handler, shape.batch, options)
        if batch_size is not None and concurrency != 1:
            raise SubscriptionError(
                "a batch handler runs one batch at a time (key order holds across batches): "
                "leave concurrency at 1 and size the batch with batch_size"
            )
        if batch_size is not None and exactly_once:
            raise SubscriptionError("exactly_once does not take batch handlers (yet)")
        for existing in self._subscriptions:
            if existing.stream == stream and existing.group == group:
                raise SubscriptionError(
                    f"group {group!r} on stream {stream!r} already has handler "
                    f"{existing.name!r}; one handler per group and stream (use a union "
                    "annotation or another group)"
                )
        sub = Subscription(
            handler=handler,
            stream=stream,
            patterns=patterns,
            group=group,
            types=shape.event_types,
            retry=retry or DEFAULT_RETRY,
            concurrency=concurrency,
            wants_context=shape.wants_context,
            is_async=shape.is_async,
            options=options,
            exactly_once=exactly_once,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
        )
        self._subscriptions.append(sub)
        return sub

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions)

    # --- request/reply ---------------------------------------------------------------------

    def responder(
        self,
        stream: str | None = None,
        *patterns: str,
        group: str,
        errors: tuple[type[BaseException], ...] = (),
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorator: answer requests (`bus.request`) of the handler's event types with
        what it returns, once per `group` (its members share the requests).

        A responder is a subscription (same arguments as `subscribe`) whose return value
        is the reply: a pydantic model or any JSON-able value. A `DomainError` it raises
        (`NotFound`, ...), a `RequestFailed` of a request of its own, or an exception of
        `errors` is an answer too: the caller gets it as `RequestFailed`, and the request
        is acked, never retried nor dead-lettered. Any other exception goes through
        `retry`; when the policy gives up the request is dead-lettered and the caller
        gets `RequestFailed(dead_lettered=True)`.
        """

        def decorator(handler: F) -> F:
            self.add_responder(
                handler,
                stream,
                *patterns,
                group=group,
                errors=errors,
                retry=retry,
                concurrency=concurrency,
                **options,
            )
            return handler

        return decorator

    def add_responder(
        self,
        handler: Callable[..., Any],
        stream: str | None = None,
        *patterns: str,
        group: str,
        errors: tuple[type[BaseException], ...] = (),
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
        **options: Any,
    ) -> Subscription:
        answers = domain_errors(errors)
        sub = self.add_handler(
            handler,
            stream,
            *patterns,
            group=group,
            retry=retry,
            concurrency=concurrency,
            **options,
        )
        if sub.batch_size is not None:
            self._subscriptions.remove(sub)
            raise SubscriptionError("a responder answers one request at a time: no batch handler")
        sub.handler = responder_endpoint(
            handler,
            wants_context=sub.wants_context,
            is_async=sub.is_async,
            errors=answers,
            retry=sub.retry,
            send=self._send_reply,
            source=lambda: self._source,
            max_bytes=lambda: self._max_bytes,
        )
        sub.wants_context = sub.is_async = True
        return sub

    @overload
    async def request(
        self,
        query: Event,
        *,
        timeout: float = ...,
        reply_type: type[R],
        key: Any = ...,
        headers: dict[str, str] | None = ...,
    ) -> R: ...

    @overload
    async def request(
        self,
        query: Event,
        *,
        timeout: float = ...,
        reply_type: None = ...,
        key: Any = ...,
        headers: dict[str, str] | None = ...,
    ) -> Any: ...

    async def request(
        self,
        query: Event,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        reply_type: Any = None,
        key: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Publish `query` as a request and return the reply of its responder.

        The reply is validated into `reply_type` if given (a pydantic model, or any type
        pydantic validates), else it is the parsed JSON. Raises `RequestFailed` when the
        responder answered with an error, `RequestTimeout` (a `TimeoutError` naming the
        request's type, id and timeout) when no reply came within `timeout` seconds, and
        `PublishError` / `UnroutableError` when the request could not be published.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        broker = self._broker
        if broker is None or not self._running:
            raise BusClosed("the bus is not running: use `async with bus:` before requesting")
        requester = self._requester
        if requester is None:
            if not broker.capabilities.request_reply or not isinstance(broker, RequestReply):
                raise ConfigurationError(
                    f"{broker.capabilities.system} ({redact_url(self.settings.url)}) offers no "
                    "request/reply: its adapter does not implement it"
                )
            requester = self._requester = Requester(
                broker,
                metrics=self._metrics,
                observer=self._observer,
                middleware=self._publish_middleware,
            )
        message = build_message(
            query,
            source=self._source,
            max_bytes=self._max_bytes,
            key=key,
            headers=headers,
            optional=self._optional_attributes,
        )
        reply = await requester.request(message, timeout)
        self._last_published = _now()
        return decode_reply(reply, message, reply_type, self._max_bytes)

    async def _send_reply(self, address: str, message: Message) -> None:
        """A responder's reply: sent, or dropped and counted (never raises)."""
        await send_reply(self._broker, self._metrics, address, message)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            self._broker = self._adapter.create_broker(self.settings)
        return self._broker

    @property
    def running(self) -> bool:
        return self._running

    @property
    def metrics(self) -> Metrics | None:
        """What the bus counted and timed (None while metrics are off): read by the
        Prometheus endpoint (`eventbus.prometheus`) and the OpenTelemetry bridge."""
        return self._metrics

    def enable_metrics(self) -> Metrics:
        """Turn metrics on (before the bus starts): what `eventbus run --http` does for
        its `/metrics` endpoint."""
        if self._metrics is None:
            if self._running:
                raise ConfigurationError("turn metrics on before the bus starts")
            self._metrics = Metrics()
        return self._metrics

    async def start(self) -> None:
        """Connect, declare every subscription's topology and start consuming.
        When it returns, every subscription receives every event published afterwards."""
        if self._running:
            return
        configure_logging(self.settings.log_format, self.settings.log_level)
        broker = self.broker
        self._stopping = asyncio.Event()
        self._stop_task = None
        self._problems = {}
        self._failure = None
        transactional = [s for s in self._subscriptions if s.exactly_once]
        if transactional and not broker.capabilities.transactions:
            names = ", ".join(f"{s.stream}/{s.group}" for s in transactional)
            raise ConfigurationError(
                f"exactly_once=True ({names}) needs broker transactions, which "
                f"{broker.capabilities.system} ({redact_url(self.settings.url)}) does not "
                "offer; use a Kafka bus, or the transactional handler "
                "(eventbus.sourcing.transactional) for exactly-once effects on any broker"
            )
        observer = self._observer = self._telemetry(broker)
        await broker.start()
        self._running = True
        try:
            for sub in self._subscriptions:
                batch = (
                    batch_endpoint(sub.handler, sub.is_async, sub.wants_context)
                    if sub.batch_size is not None
                    else None
                )
                pipeline = Pipeline(
                    self,
                    group=sub.group,
                    patterns=sub.patterns,
                    types=sub.types,
                    handler=sub.handler,
                    wants_context=sub.wants_context,
                    is_async=sub.is_async,
                    retry=sub.retry,
                    middleware=self._handle_middleware,
                    max_message_bytes=self._max_bytes,
                    stopping=self._stopping,
                    exactly_once=sub.exactly_once,
                    batch=batch,
                )
                process: Callable[[Delivery], Awaitable[object]] = pipeline.process
                if observer is not None:
                    process = observer.process(pipeline, sub.stream)
                dispatcher: Dispatcher | BatchDispatcher
                if batch is not None and sub.batch_size is not None:
                    inline = pipeline.batch_inline if observer is None else None
                    dispatcher = BatchDispatcher(
                        process, batch, sub.batch_size, sub.batch_timeout, inline
                    )
                else:
                    dispatcher = Dispatcher(process, sub.concurrency)
                spec = SubscriptionSpec(
                    stream=sub.stream,
                    group=sub.group,
                    patterns=sub.patterns,
                    types=frozenset(sub.types) if sub.types is not None else None,
                    concurrency=sub.concurrency,
                    retry_tiers=tuple(sub.retry.tiers()) if sub.retry.delayed else (),
                    options=sub.options,
                    exactly_once=sub.exactly_once,
                    failed=partial(self._consumer_failed, f"{sub.stream}/{sub.group}"),
                )
                self._dispatchers.append(dispatcher)
                self._pipelines.append(pipeline)
                self._consumers.append(await broker.subscribe(spec, dispatcher.submit))
        except BaseException:
            await self.stop()
            raise
        interval = self.settings.backlog_interval
        if interval > 0 and any(isinstance(c, ReportsBacklog) for c in self._consumers):
            self._monitor = asyncio.ensure_future(self._poll_backlogs(interval))
        _log.info(
            "bus.started",
            url=redact_url(self.settings.url),
            subscriptions=[f"{s.stream}/{s.group}" for s in self._subscriptions],
        )

    async def stop(self) -> None:
        """Graceful stop: stop fetching, let in-flight handlers finish, flush acks/commits,
        give unstarted deliveries back to the broker, disconnect. Concurrent calls wait
        for the one stop in progress."""
        if self._stop_task is None:
            if not self._running:
                return
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._stopping.set()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        consumers, dispatchers = self._consumers, self._dispatchers
        self._consumers, self._dispatchers, self._pipelines = [], [], []
        self._backlogs = {}
        for consumer in consumers:
            await _quietly(consumer.pause(), "consumer.pause")
        await asyncio.gather(
            *(d.drain(self.settings.shutdown_timeout) for d in dispatchers),
            return_exceptions=True,
        )
        for consumer in consumers:
            await _quietly(consumer.close(), "consumer.close")
        requester = self._requester
        if requester is not None:  # after the handlers: theirs may wait for replies
            await _quietly(requester.close(), "requests.close")
        self._requester = None
        self._running = False
        broker, self._broker = self._broker, None
        if broker is not None:
            await _quietly(broker.close(), "broker.close")
        _log.info("bus.stopped", url=redact_url(self.settings.url))

    # --- health ---------------------------------------------------------------------------

    def health(self) -> Health:
        """The bus's state now, without I/O (a readiness probe may ask every second):
        running, connected, each subscription attached (and why not), in-flight
        handlers, the last backlog poll, last publish and handled times, problems (a dead
        letter that cannot be stored, a consumer that died); see `Health`."""
        failure = self._failure
        running = self._running and not self._stopping.is_set()
        connected, detail, reconnects = running, "", 0
        broker = self._broker
        if running and isinstance(broker, ReportsState):
            link = _state_of(broker)
            if isinstance(link, LinkState):
                connected, detail, reconnects = link.connected, link.detail, link.reconnects
            elif isinstance(link, str):
                connected, detail = False, link
        subscriptions = []
        consumers, pipelines, dispatchers = self._consumers, self._pipelines, self._dispatchers
        for i, sub in enumerate(self._subscriptions):
            attached, why = False, "not started"
            in_flight, waiting, last = 0, 0, None
            if running and i < len(consumers):
                attached, why = True, ""
                consumer = consumers[i]
                if isinstance(consumer, ReportsState):
                    state = _state_of(consumer)
                    if isinstance(state, ConsumerState):
                        attached, why = state.attached, state.detail
                    elif isinstance(state, str):
                        attached, why = False, state
                in_flight = dispatchers[i].in_flight
                waiting = dispatchers[i].waiting
                last = pipelines[i].last_handled
            subscriptions.append(
                SubscriptionHealth(
                    stream=sub.stream,
                    group=sub.group,
                    attached=attached,
                    detail=why,
                    in_flight=in_flight,
                    waiting=waiting,
                    last_handled=last,
                    backlog=self._backlogs.get(i),
                )
            )
        return Health(
            running=running,
            problems=dict(self._problems),
            failure=repr(failure) if failure is not None else None,
            broker=redact_url(self.settings.url),
            connected=connected,
            detail=detail,
            reconnects=reconnects,
            last_published=self._last_published,
            subscriptions=tuple(subscriptions),
        )

    async def _poll_backlogs(self, interval: float) -> None:
        """Every `interval` seconds, ask each consumer for its backlog (for `health()`
        and the metrics); a consumer that cannot tell now reports None."""
        while True:
            for i, consumer in enumerate(list(self._consumers)):
                if not isinstance(consumer, ReportsBacklog):
                    continue
                try:
                    backlog = await asyncio.wait_for(consumer.backlog(), max(interval, 1.0))
                except (Exception, TimeoutError) as exc:
                    _log.debug("backlog.unknown", consumer=repr(consumer), error=repr(exc))
                    backlog = None
                self._backlogs[i] = backlog
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
                return

    def _telemetry(self, broker: Broker) -> Observer | None:
        """The observer of this run: tracing when a tracer provider is configured (or
        `Settings.tracing` forces it), metrics when on; None when both are off."""
        tracing = make_tracing(
            self.settings.tracing, self._tracer_provider, broker.capabilities.system
        )
        if self.settings.metrics is not False and not self._bridged:
            meter_provider = self._meter_provider
            if meter_provider is None:
                try:
                    from .otel_metrics import configured_meter_provider
                except ImportError:
                    pass
                else:
                    meter_provider = configured_meter_provider()
            if meter_provider is not None:
                from .otel_metrics import bridge

                self.enable_metrics()
                bridge(self, meter_provider, broker.capabilities.system)
                self._bridged = True
        if tracing is None and self._metrics is None:
            return None
        return Observer(tracing, self._metrics)

    def report_problem(self, component: str, problem: str | None) -> None:
        """Record a problem of a component (`"orders/billing: dead letter"`) for
        `health()`, or that it is resolved (`None`). The pipelines report theirs; an
        application may report its own."""
        if problem is None:
            self._problems.pop(component, None)
        else:
            self._problems[component] = problem

    def _consumer_failed(self, subscription: str, what: str, error: BaseException) -> None:
        """An adapter's consumer died (see `SubscriptionSpec.failed`): fail loudly and stop
        the whole bus, so no member stays half-alive holding a group membership."""
        if not self._running or self._stopping.is_set():
            return
        _log.error(
            "consumer.died",
            subscription=subscription,
            what=what,
            error=repr(error),
            exc_info=error,
        )
        self._failure = ConsumerFailed(
            f"the consumer of {subscription} died ({what}: {error!r}); the bus stopped"
        )
        self.report_problem(subscription, f"consumer died: {what}: {error!r}")
        self._stop_task = asyncio.ensure_future(self._stop())

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run(self, stop_signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Run the subscribers until SIGTERM/SIGINT (or `stop()`), then stop gracefully.
        Once started, the heap built so far is frozen (`Settings.freeze_heap`)."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        installed = []
        for sig in stop_signals:
            try:
                loop.add_signal_handler(sig, done.set)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        try:
            async with self:
                if self.settings.freeze_heap:  # startup is over: see eventbus.heap
                    freeze_heap()
                stopping = asyncio.ensure_future(self._stopping.wait())
                signalled = asyncio.ensure_future(done.wait())
                await asyncio.wait({stopping, signalled}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                signalled.cancel()
                _log.info("bus.stopping", reason="signal" if done.is_set() else "stop()")
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        if self._failure is not None:
            raise self._failure

    # --- publishing ------------------------------------------------------------------------

    async def _send(self, message: Message) -> None:
        broker = self._broker
        if broker is None or not self._running:
            raise BusClosed("the bus is not running: use `async with bus:` before publishing")
        if self._observer is None:
            await broker.publish(message)
        else:
            await self._observer.publish(message, broker.publish)

    async def publish(
        self,
        event: Event,
        *,
        key: Any = None,
        headers: dict[str, str] | None = None,
        id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        time: str | None = None,
    ) -> Envelope:
        """Publish one event; returns once the broker confirmed it is stored.

        `id` and `time` default to a new UUID and now; pass them to re-publish a stored
        event unchanged (an outbox relay), so consumers can deduplicate by id."""
        message = build_message(
            event,
            source=self._source,
            max_bytes=self._max_bytes,
            key=key,
            headers=headers,
            id=id,
            correlation_id=correlation_id,
            causation_id=causation_id,
            time=time,
            optional=self._optional_attributes,
        )
        if self._fast_publish:
            correlate_attributes(message.attributes)
            broker = self._broker
            if broker is None or not self._running:
                raise BusClosed("the bus is not running: use `async with bus:` before publishing")
            if self._observer is None:
                await broker.publish(message)
            else:
                await self._observer.publish(message, broker.publish)
        else:
            await self._publish_chain(message)
        self._last_published = _now()
        return envelope_of(message)

    async def prepare(
        self,
        event: Event,
        *,
        key: Any = None,
        headers: dict[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> tuple[Envelope, list[Message]]:
        """The envelope and the messages `publish` would send for `event`, built and
        passed through the publish middleware (which may drop it: then no message),
        without sending them.
        With tracing on, each gets its `publish` span and trace context. Exactly-once
        subscriptions stage a handler's events this way (`Context.publish`)."""
        message = build_message(
            event,
            source=self._source,
            max_bytes=self._max_bytes,
            key=key,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            optional=self._optional_attributes,
        )
        prepared: list[Message] = []
        if self._fast_publish:
            correlate_attributes(message.attributes)
            prepared.append(message)
        else:

            async def collect(out: Message) -> None:
                prepared.append(out)

            await chain(self._publish_middleware, collect)(message)
        tracing = self._observer.tracing if self._observer is not None else None
        if tracing is not None:
            for out in prepared:
                tracing.end(tracing.start_publish(out))
        return envelope_of(message), prepared

    async def publish_many(
        self,
        events: Iterable[Event | tuple[Event, Any]],
        *,
        key: Callable[[Event], Any] | None = None,
    ) -> list[str]:
        """Publish many events, pipelined; returns their ids once all are confirmed.

        Items are events or `(event, key)` pairs; `key=` derives a key from each event.
        An iterable of any length (a generator reading a file) is published in bounded
        memory: `PUBLISH_MANY_CHUNK` events at a time are built, sent and confirmed
        before the next are read, which also keeps the order per key across chunks. A
        chunk that fails raises at once: the chunks before it are stored, nothing after
        it was read or sent (the error's note says how many were confirmed).
        """
        items = iter(events)
        ids: list[str] = []
        exhausted = False
        while not exhausted:
            try:
                exhausted = await self._publish_chunk(items, key, ids)
            except Exception as exc:
                note_stored(exc, len(ids))
                raise
        self._last_published = _now()
        return ids

    async def _publish_chunk(
        self,
        items: Iterator[Event | tuple[Event, Any]],
        key: Callable[[Event], Any] | None,
        ids: list[str],
    ) -> bool:
        """Build, send and confirm the next chunk of `publish_many`, adding its ids to
        `ids`; -> whether `items` ran out."""
        messages, exhausted = await self._messages_of(items, key, PUBLISH_MANY_CHUNK)
        if not self._running or self._broker is None:
            raise BusClosed("the bus is not running: use `async with bus:` before publishing")
        chunk_ids = [m.attributes["id"] for m in messages]
        # the broker may empty `messages` once sent: none is held while it awaits confirms
        if messages:  # (none: none given, or the publish middleware dropped them all)
            if self._observer is None:
                await self._broker.publish_many(messages)
            else:
                await self._observer.publish_many(messages, self._broker.publish_many)
        ids.extend(chunk_ids)
        return exhausted

    async def _messages_of(
        self,
        items: Iterator[Event | tuple[Event, Any]],
        key: Callable[[Event], Any] | None,
        limit: int,
    ) -> tuple[list[Message], bool]:
        """The messages of the next `limit` items of `publish_many`, through the publish
        middleware (which may drop some); and whether `items` ran out."""
        messages: list[Message] = []

        async def collect(message: Message) -> None:
            messages.append(message)

        wrapped = None if self._fast_publish else chain(self._publish_middleware, collect)
        source, max_bytes, optional = self._source, self._max_bytes, self._optional_attributes
        for taken, item in enumerate(items, 1):
            if isinstance(item, tuple):
                event, item_key = item
            else:
                event, item_key = item, (key(item) if key is not None else None)
            message = build_message(
                event, source=source, max_bytes=max_bytes, key=item_key, optional=optional
            )
            if wrapped is None:
                correlate_attributes(message.attributes)
                messages.append(message)
            else:
                await wrapped(message)
            if taken == limit:
                return messages, False
        return messages, True

    # --- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, stream: str, group: str) -> AsyncGenerator[DeadLetter, None]:
        """Each dead letter of a group (oldest first): raw body, headers, envelope, reason.
        Streamed (the adapter holds a bounded number at a time); to stop early, close the
        iterator (`async with contextlib.aclosing(bus.dead_letters(...)) as letters`)."""
        if not self._running:
            raise BusClosed("the bus is not running: use `async with bus:` first")
        letters = self.broker.dead_letters(stream, group)
        try:
            async for dead in letters:
                yield dead
        finally:  # stopped early: the adapter puts back what it holds now, not at GC
            aclose = getattr(letters, "aclose", None)
            if aclose is not None:
                await aclose()

    async def replay_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Return the dead letters of a group to that group (attempts reset, event ids
        kept, so an `Inbox` does not handle one twice); -> how many.

        `select` (e.g. a `DeadLetterFilter(...).selector()`) takes only the dead letters it
        returns True for; the others stay, in order. It needs an adapter that offers it
        (`SelectsDeadLetters`; all built-in ones do), else `Unsupported` is raised."""
        if not self._running:
            raise BusClosed("the bus is not running: use `async with bus:` first")
        broker = self.broker
        if select is None:
            count = await broker.replay_dead_letters(stream, group)
        else:
            count = await self._selecting(broker, "replay a selection of").replay_dead_letters(
                stream, group, select
            )
        _log.info("dead_letters.replayed", stream=stream, group=group, count=count)
        return count

    async def purge_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        """Delete the dead letters of a group for good (those `select` returns True for,
        or all); -> how many. Needs an adapter that offers it (`SelectsDeadLetters`)."""
        if not self._running:
            raise BusClosed("the bus is not running: use `async with bus:` first")
        count = await self._selecting(self.broker, "purge").purge_dead_letters(
            stream, group, select
        )
        _log.info("dead_letters.purged", stream=stream, group=group, count=count)
        return count

    def _selecting(self, broker: Broker, what: str) -> SelectsDeadLetters:
        if not isinstance(broker, SelectsDeadLetters):
            raise Unsupported(
                f"the {type(broker).__name__} adapter cannot {what} dead letters (it does "
                "not implement eventbus.protocol.SelectsDeadLetters)"
            )
        return broker


def _state_of(part: ReportsState) -> LinkState | ConsumerState | str:
    """An adapter part's `state()`; a broken one says why instead of failing the probe."""
    try:
        return part.state()
    except Exception as exc:
        return f"state() failed: {exc!r}"


async def _quietly(op: Any, what: str) -> None:
    try:
        await op
    except Exception as exc:
        _log.warning(f"{what}.failed", error=repr(exc))


def _batch_options(
    handler: Callable[..., Any], batch: bool, options: dict[str, Any]
) -> tuple[int | None, float]:
    """Take `batch_size` and `batch_timeout` out of a subscription's options: (size or
    None for a handler of one event, timeout)."""
    size = options.pop("batch_size", None)
    timeout = options.pop("batch_timeout", None)
    name = getattr(handler, "__qualname__", handler)
    if not batch:
        if size is not None or timeout is not None:
            raise SubscriptionError(
                f"batch_size and batch_timeout are for batch handlers; {name!r} takes one "
                "event (annotate it `events: list[MyEvent]` to receive batches)"
            )
        return None, DEFAULT_BATCH_TIMEOUT
    size = DEFAULT_BATCH_SIZE if size is None else size
    timeout = DEFAULT_BATCH_TIMEOUT if timeout is None else timeout
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SubscriptionError(f"batch_size must be a whole number >= 1, got {size!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise SubscriptionError(f"batch_timeout must be seconds > 0, got {timeout!r}")
    return size, float(timeout)
