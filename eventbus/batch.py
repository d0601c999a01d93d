"""Batch handlers: `async def handle(events: list[OrderCreated], ctx: BatchContext)`.

A subscription whose handler takes a `list[...]` of events receives up to `batch_size`
events at a time, or what arrived within `batch_timeout` seconds of the first one of a
batch. Everything else stays per event, on the same path as a plain handler:

- every delivery of a batch is decoded as a plain handler's would be (bad input to the
  dead-letter destination, another type acked), and the items that decode are handed to
  one call of the handler, in delivery order. With handle middleware or telemetry, each
  delivery goes through `Pipeline.process` on a task of its own (its spans, metrics and
  middleware wrap it alone) and the items meet in one `_Round`; without them,
  `Pipeline.process_batch` runs the whole batch in the dispatcher's task (no task,
  context copy or future per item: what makes a batch cheaper than as many calls);
- each event is settled on its own: acked if the handler returned and did not mark it
  failed (`ctx.fail(item, exc)`), otherwise it goes through the retry policy like a
  failed plain handler call, and from there to the dead-letter destination. An
  in-process retry calls the handler with that one event (a batch of one); a delayed
  retry brings it back in a later batch. A handler that raises fails every item.

Batches run one at a time per subscription, in the order the broker delivered, so key
order holds inside and across batches; the adapter gets back-pressure when a batch is
full (`submit` waits for it). On RabbitMQ `prefetch` must be at least `batch_size` for
batches to fill (else each waits for `batch_timeout`); Kafka fills them from its
partition buffers.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .context import current_context
from .dispatch import _quiet_nack
from .log import get_logger
from .protocol import Delivery
from .workers import run_sync

if TYPE_CHECKING:
    from .context import Context
    from .event import Envelope, Event

_log = get_logger()

#: defaults of `subscribe(..., batch_size=, batch_timeout=)`
DEFAULT_BATCH_SIZE = 100
DEFAULT_BATCH_TIMEOUT = 0.05


class BatchContext:
    """What a batch handler knows about its batch, and how it reports failed items.

    `contexts[i]` is the per-event `Context` of `events[i]` (its envelope, attempt, key,
    partition, and `publish`, which makes the new event caused by that one)."""

    def __init__(self, contexts: list[Context]) -> None:
        self.contexts = contexts
        #: index -> the exception an item failed with (`fail`)
        self.failures: dict[int, BaseException] = {}

    @property
    def events(self) -> list[Event | Envelope]:
        return [ctx.event for ctx in self.contexts]

    @property
    def envelopes(self) -> list[Envelope]:
        return [ctx.envelope for ctx in self.contexts]

    @property
    def group(self) -> str:
        return self.contexts[0].group

    def __len__(self) -> int:
        return len(self.contexts)

    def __iter__(self) -> Iterator[Context]:
        return iter(self.contexts)

    def index(self, item: int | Context | Event | Envelope) -> int:
        """The position of an item given as an index, its context, event or envelope."""
        if isinstance(item, int):
            if not 0 <= item < len(self.contexts):
                raise IndexError(f"batch item {item} out of range (batch of {len(self)})")
            return item
        for i, ctx in enumerate(self.contexts):
            if item is ctx or item is ctx.event or item is ctx.envelope:
                return i
        raise ValueError(f"{item!r} is not in this batch")

    def fail(self, item: int | Context | Event | Envelope, exc: BaseException) -> None:
        """Mark one item failed with `exc` (`Retry(...)`, `Reject(...)` or any exception):
        it goes through the retry policy on its own; the others are acked."""
        self.failures[self.index(item)] = exc


#: a batch handler's signature, as `Pipeline` calls it
BatchCall = Callable[[list[Any], BatchContext], Awaitable[None]]


def batch_endpoint(handler: Callable[..., Any], is_async: bool, wants_context: bool) -> BatchCall:
    """`handler(events[, ctx])` as a coroutine function (sync handlers run in a worker
    thread)."""

    async def call(events: list[Any], ctx: BatchContext) -> None:
        args = (events, ctx) if wants_context else (events,)
        if is_async:
            await handler(*args)
        else:
            await run_sync(handler, *args)

    return call


@dataclass
class _Slot:
    """A delivery's place in a round (the task that processes it carries it)."""

    round: _Round
    index: int
    used: bool = False


#: the slot of the delivery this task processes (set by `BatchDispatcher` per item task)
_current_slot: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "eventbus_batch_slot", default=None
)


@dataclass
class _Round:
    """One batch: its items join (decoded, at the handler) or leave (settled without it);
    once all have, the handler runs once for the joined ones."""

    expected: int
    joined: dict[int, Context] = field(default_factory=dict)
    left: set[int] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    results: asyncio.Future[dict[int, BaseException | None]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def join(self, index: int, ctx: Context) -> None:
        self.joined[index] = ctx
        self._check()

    def leave(self, index: int) -> None:
        if index not in self.joined:
            self.left.add(index)
            self._check()

    def _check(self) -> None:
        if len(self.joined) + len(self.left) >= self.expected:
            self.ready.set()


async def call_batch(call: BatchCall, contexts: list[Context]) -> list[BaseException | None]:
    """Call the batch handler once with the events of `contexts`; -> each item's failure
    (None: handled). A handler that raises fails every item; only a cancellation of the
    consumer itself propagates."""
    ctx = BatchContext(contexts)
    token = current_context.set(None)  # no single event is being handled here
    try:
        await call([c.event for c in contexts], ctx)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the consumer stops
        return [asyncio.CancelledError()] * len(contexts)
    except BaseException as exc:
        return [exc] * len(contexts)
    finally:
        current_context.reset(token)
    return [ctx.failures.get(i) for i in range(len(contexts))]


async def call_in_batch(call: BatchCall, ctx: Context) -> None:
    """The per-event call of a batch subscription (the end of `Pipeline`'s handle chain):
    the first time, wait for the item's round and raise what the batch handler said of
    it; a retry (or a call outside a round) calls the handler with this event alone."""
    slot = _current_slot.get()
    if slot is None or slot.used:
        single = BatchContext([ctx])
        await call([ctx.event], single)
        failure = single.failures.get(0)
        if failure is not None:
            raise failure
        return
    slot.used = True
    slot.round.join(slot.index, ctx)
    results = await asyncio.shield(slot.round.results)
    failure = results.get(slot.index)
    if failure is not None:
        raise failure


class BatchDispatcher:
    """`Dispatcher` for a batch subscription: collects deliveries into batches of up to
    `size` (or what arrived within `timeout` of a batch's first delivery) and runs them
    one batch at a time (see the module docstring). `process` is the subscription's
    per-delivery path (the pipeline, with telemetry); `call` is the batch handler."""

    def __init__(
        self,
        process: Callable[[Delivery], Awaitable[object]],
        call: BatchCall,
        size: int = DEFAULT_BATCH_SIZE,
        timeout: float = DEFAULT_BATCH_TIMEOUT,
        inline: Callable[[list[Delivery]], Awaitable[None]] | None = None,
    ) -> None:
        """`inline`: runs a whole batch in the dispatcher's task (`Pipeline.process_batch`),
        where nothing needs to wrap each item's handler call; None: a task per item."""
        if size < 1 or timeout <= 0:
            raise ValueError("batch_size must be >= 1 and batch_timeout > 0")
        self._process = process
        self._inline = inline
        self._call = call
        self.size = size
        self.timeout = timeout
        self.concurrency = 1
        self._pending: list[Delivery] = []
        self._lock = asyncio.Lock()  # one batch at a time
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._closing = False
        self._inflight = 0

    @property
    def in_flight(self) -> int:
        """Deliveries of the batch being handled now."""
        return self._inflight

    @property
    def waiting(self) -> int:
        """Deliveries collected for the next batch."""
        return len(self._pending)

    async def submit(self, delivery: Delivery) -> None:
        if self._closing:
            await _quiet_nack(delivery)
            return
        self._pending.append(delivery)
        if len(self._pending) >= self.size:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await self._flush()  # back-pressure: the adapter waits for a full batch
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            if self._closing:
                for delivery in batch:
                    await _quiet_nack(delivery)
                return
            await self._run(batch)

    async def _run(self, batch: list[Delivery]) -> None:
        if self._inline is not None:
            self._inflight += len(batch)
            try:
                await self._inline(batch)
            finally:
                self._inflight -= len(batch)
            return
        round_ = _Round(len(batch))
        self._inflight += len(batch)
        tasks = []
        for index, delivery in enumerate(batch):
            slot = _Slot(round_, index)
            context = contextvars.copy_context()
            context.run(_current_slot.set, slot)
            tasks.append(asyncio.create_task(self._item(slot, delivery), context=context))
        try:
            await round_.ready.wait()  # every item at the handler, or settled without it
            round_.results.set_result(await self._handle(round_) if round_.joined else {})
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not round_.results.done():
                round_.results.cancel()
            self._inflight -= len(batch)

    async def _item(self, slot: _Slot, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        finally:
            slot.round.leave(slot.index)

    async def _handle(self, round_: _Round) -> dict[int, BaseException | None]:
        """Call the batch handler once; -> each joined item's failure (None: handled)."""
        indexes = sorted(round_.joined)
        failures = await call_batch(self._call, [round_.joined[i] for i in indexes])
        return dict(zip(indexes, failures, strict=True))

    async def drain(self, timeout: float) -> None:
        """Let the running batch finish; give the collected, unstarted deliveries back."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for delivery in pending:
            await _quiet_nack(delivery)
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    pass
                if self._flushes:
                    await asyncio.gather(*self._flushes, return_exceptions=True)
        except TimeoutError:
            _log.warning("shutdown.timeout", timeout=timeout, inflight=self._inflight)
            for task in list(self._flushes):
                task.cancel()
            await asyncio.gather(*self._flushes, return_exceptions=True)
