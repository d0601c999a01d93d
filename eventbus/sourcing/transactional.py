"""Exactly-once effects for a handler that writes to a database: `transactional(store)`.

    @bus.subscribe(group="billing")
    @transactional(store)          # an SQL event store: its database holds everything below
    async def bill(event: OrderPaid, ctx: Context, tx: Transaction) -> None:
        await tx.execute("INSERT INTO invoices (order_id, cents) VALUES (?, ?)", (...))
        await ctx.publish(InvoiceIssued(...), key=event.order_id)   # into the outbox

Every delivery runs in **one transaction** of the store's database (SQLite or PostgreSQL):

1. the event id is recorded in the inbox for the subscription's group. If it was recorded
   before (a redelivery after a crash or a lost ack, a replayed dead letter, the relay
   publishing twice), the handler is not called: nothing is written, nothing published,
   and `handler.duplicate` is logged at info;
2. the handler runs; what it writes through `tx` belongs to the transaction;
3. the events it publishes with `ctx.publish` are not sent to the broker: they are
   appended to the event store and queued in the outbox, in the same transaction, on the
   store stream `<group>/<event id>` (versions 1, 2, ... in publish order), so
   `store.read(f"{group}/{event_id}")` shows what an event caused. `ctx.publish` returns
   each one's envelope at once: its id, time, key, correlation and causation ids are the
   ones it will travel with;
4. commit. The outbox relay (`OutboxRelay`) publishes the queued events to the bus with
   those same ids, in order per key.

**The guarantee.** The inbox row, the handler's writes and its published events commit
together or not at all. For each event and group, the database effects and the events
published happen exactly once, on memory://, RabbitMQ and Kafka alike, whatever the broker
redelivers. A handler that raises rolls all of it back and the exception goes to the bus:
the subscription's retry policy and dead-letter queue apply unchanged, and an event
dead-lettered in the end leaves nothing behind.

**What it does not cover.**

- Side effects outside that database (an e-mail, an HTTP call, another database) run
  once per attempt: at least once, and also when the transaction then fails to commit.
  Make them idempotent (the event id is a natural idempotency key), or move them behind
  the outbox: publish an event, and let its consumer make the call.
- Delivery of the published events is at least once: a relay that dies after the broker
  confirmed an event and before it marked it sent publishes it again, with the same id.
  Consumers drop the copy with their inbox (a transactional handler does).
- The relay decodes what it publishes: give it a codec that knows the classes the
  handlers publish (`OutboxRelay(store, bus, codec)`), or it parks them as unpublishable.

**The cost**: one database transaction per event. SQLite runs one transaction at a time
per store; PostgreSQL holds a pooled connection for each handler while it runs (size the
pool for the subscription's `concurrency`). A handler that publishes also takes the
store's append lock (PostgreSQL) from the append to the commit, so that positions stay
gap-free and in commit order: the events are appended when the handler returns, which
keeps that moment short and never holds the lock while the handler waits on rows.

Inside the handler, use `tx` for the database and `ctx.publish` for events
(`bus.publish` still publishes at once, outside the transaction). The store's own calls
(`store.read`, a `Repository`) run outside the transaction: on PostgreSQL on another
connection, and on SQLite, whose single connection the transaction holds, they raise
instead of waiting for it forever. To append to a stream of your own in the same
transaction, call `store.append_in(tx, ...)` (late: it takes the append lock). On an
`exactly_once=True` (Kafka) subscription, a transactional handler's events still go to the
outbox.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from eventbus.context import Context
from eventbus.errors import ConfigurationError
from eventbus.event import Envelope, Event, validate_extension

from .codec import EventCodec
from .database import Database, Transaction
from .inbox import handle_once
from .records import NewEvent
from .store import NO_STREAM, EventStore

E = TypeVar("E")

#: what `@transactional` decorates: `async def (event, ctx, tx)`
TransactionalHandler = Callable[[E, Context, Transaction], Awaitable[None]]
#: what it returns for `bus.subscribe`: `async def (event, ctx)`
BusHandler = Callable[[E, Context], Coroutine[Any, Any, None]]


def transactional(
    store: EventStore, *, codec: EventCodec | None = None
) -> Callable[[TransactionalHandler[E]], BusHandler[E]]:
    """Decorator (under `@bus.subscribe`): run `async def handler(event, ctx, tx)` with the
    inbox, its writes and the events it publishes in one transaction of `store`'s database
    (see the module docstring). `store` must be an SQL event store (SQLite or PostgreSQL),
    opened before the bus starts; `codec` encodes the published events (default: one that
    learns each class as it is published)."""
    db = _database_of(store)
    encoder = codec or EventCodec()

    def decorate(fn: TransactionalHandler[E]) -> BusHandler[E]:
        signature = _bus_signature(fn)

        async def handler(event: E, ctx: Context) -> None:
            await _handle(store, db, encoder, ctx, lambda tx: fn(event, ctx, tx))

        functools.update_wrapper(handler, fn)
        # what `bus.subscribe` reads: (event, ctx), the event's annotation as written
        # (resolved against the wrapped function's module, like the original's)
        handler.__dict__["__signature__"] = signature
        first = next(iter(signature.parameters))
        handler.__annotations__ = {
            k: v for k, v in fn.__annotations__.items() if k in (first, "return")
        }
        return handler

    return decorate


async def _handle(
    store: EventStore,
    db: Database,
    codec: EventCodec,
    ctx: Context,
    call: Callable[[Transaction], Awaitable[None]],
) -> bool:
    """Handle `ctx`'s event once for its group: `call(tx)` with `ctx.publish` writing to
    the outbox, all in one transaction of `db`; returns whether it ran (False: a duplicate)."""
    outputs = _Outputs(codec)

    async def update(tx: Transaction) -> None:
        previous, ctx.sink = ctx.sink, outputs.add
        try:
            await call(tx)
        finally:
            ctx.sink = previous  # e.g. middleware publishing after the handler: at once
        if outputs.events:
            await store.append_in(
                tx, output_stream(ctx.group, ctx.envelope.id), outputs.events, NO_STREAM,
                publish=True,
            )  # fmt: skip

    return await handle_once(db, ctx.group, ctx.envelope.id, update)


def output_stream(group: str, event_id: str) -> str:
    """The store stream of the events a transactional handler of `group` published while
    handling the event `event_id`."""
    return f"{group}/{event_id}"


class _Outputs:
    """The events a handler publishes, encoded for the store, appended when it returns."""

    __slots__ = ("codec", "events")

    def __init__(self, codec: EventCodec) -> None:
        self.codec = codec
        self.events: list[NewEvent] = []

    async def add(
        self,
        event: Event,
        key: str | None,
        headers: dict[str, str] | None,
        correlation_id: str,
        causation_id: str,
    ) -> Envelope:
        """`ctx.publish` inside the transaction (a `Sink`)."""
        for name in headers or ():
            validate_extension(name)  # refused now, rolled back, not parked by the relay
        new = self.codec.encode(
            event,
            key=None if key is None else str(key),  # as `bus.publish` does
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers={name: str(value) for name, value in (headers or {}).items()},
        )
        self.events.append(new)
        return Envelope(
            id=new.id, type=new.type, stream=new.stream, time=new.time, key=new.key,
            body=new.data, correlation_id=new.correlation_id, causation_id=new.causation_id,
            extensions=new.headers,
        )  # fmt: skip


def _database_of(store: EventStore) -> Database:
    db = store.database
    if db is None or type(store).append_in is EventStore.append_in:
        raise ConfigurationError(
            f"transactional({type(store).__name__}): a transactional handler needs an SQL "
            "event store (SQLite or PostgreSQL: open_store('sqlite:///...') or "
            "open_store('postgresql://...')), whose database holds the inbox, the outbox and "
            "the handler's writes in one transaction; this store has no such database"
        )
    return db


def _bus_signature(fn: Callable[..., Any]) -> inspect.Signature:
    """`fn(event, ctx, tx)`'s signature without `tx`: what the bus calls."""
    name = getattr(fn, "__qualname__", repr(fn))
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if (
        not inspect.iscoroutinefunction(fn)
        or len(params) != 3
        or any(p.kind not in positional for p in params)
    ):
        raise TypeError(
            f"transactional handler {name!r} must be `async def (event, ctx, tx)`: the event "
            "(annotated with its class, or an Envelope), the Context and the Transaction"
        )
    return signature.replace(parameters=params[:2])


__all__ = ["output_stream", "transactional"]
