"""Projections: handlers that build a read model from events, declared like subscriptions.

    summary = Projection("customer-summary", schema=[...DDL...], tables=["customers"])

    @summary.on
    async def created(event: OrderCreated, tx: Transaction) -> None:
        await tx.execute("INSERT INTO customers ... ON CONFLICT ...", (...))

A projection runs in one of two ways, with the same handlers:

- **from the store** (`catch_up` / `run`): reads `read_all` after its checkpoint and
  applies a batch plus the new checkpoint in one transaction, so each event is applied
  exactly once even if the process dies anywhere;
- **from the bus** (`bind`): a subscription (group = the projection's name) that applies
  each event and records its id in the inbox in one transaction, so a redelivered event
  changes nothing.

`rebuild` empties the read model and replays the whole store; for a read model whose
updates per key are order-sensitive only within that key, both ways give the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.event import Envelope, Event, validate_name
from eventbus.retry import Reject, RetryPolicy

from .codec import EventCodec
from .database import Database, Row, Transaction, create_schema, dump_tables
from .inbox import SCHEMA as INBOX_SCHEMA
from .inbox import record
from .records import StoredEvent
from .store import EventStore

CHECKPOINT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
)


@dataclass(frozen=True, slots=True)
class EventMeta:
    """Where an event came from: its envelope fields, and its store position when the
    projection reads the store (None when it comes from the bus)."""

    id: str
    type: str
    stream: str
    key: str | None
    time: str
    position: int | None = None

    @classmethod
    def of_stored(cls, stored: StoredEvent) -> EventMeta:
        return cls(stored.id, stored.type, stored.stream, stored.key, stored.time, stored.position)

    @classmethod
    def of_envelope(cls, envelope: Envelope) -> EventMeta:
        return cls(envelope.id, envelope.type, envelope.stream, envelope.key, envelope.time)


Handler = Callable[..., Awaitable[None]]


def _event_classes(annotation: Any) -> list[type[Event]]:
    origin = typing.get_origin(annotation)
    members = (
        typing.get_args(annotation)
        if origin is typing.Union or origin is types.UnionType
        else (annotation,)
    )
    classes = [m for m in members if isinstance(m, type) and issubclass(m, Event)]
    if not classes or len(classes) != len(members):
        raise TypeError(f"projection handler annotation {annotation!r}: expected Event classes")
    for cls in classes:
        if not cls.__event_type__ or not cls.__stream__:
            raise TypeError(f"{cls.__name__} has no stream/type")
    return classes


class Projection:
    def __init__(
        self, name: str, *, schema: Sequence[str] = (), tables: Sequence[str] = ()
    ) -> None:
        self.name = validate_name("projection name", name)
        self.schema = tuple(schema)
        self.tables = tuple(tables)
        self._handlers: dict[str, tuple[type[Event], Handler, bool]] = {}

    # --- declaring -------------------------------------------------------------------------

    def on(self, fn: Handler) -> Handler:
        """Decorator: `fn(event, tx)` or `fn(event, tx, meta)` for the annotated event types."""
        params = list(inspect.signature(fn).parameters.values())
        if len(params) not in (2, 3) or not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"projection handler {fn.__qualname__!r} must be `async def (event, tx)` or "
                "`async def (event, tx, meta)`"
            )
        hints = typing.get_type_hints(fn)
        for cls in _event_classes(hints.get(params[0].name)):
            if cls.__event_type__ in self._handlers:
                raise ValueError(f"projection {self.name!r} handles {cls.__event_type__} already")
            self._handlers[cls.__event_type__] = (cls, fn, len(params) == 3)
        return fn

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    @property
    def streams(self) -> frozenset[str]:
        return frozenset(cls.__stream__ for cls, _, _ in self._handlers.values())

    def codec(self) -> EventCodec:
        return EventCodec(cls for cls, _, _ in self._handlers.values())

    # --- applying --------------------------------------------------------------------------

    async def setup(self, db: Database) -> None:
        """Create the read-model tables, the checkpoint table and the inbox (idempotent)."""
        await create_schema(db, (*self.schema, *CHECKPOINT_SCHEMA, *INBOX_SCHEMA))

    async def apply(self, tx: Transaction, event: Event, meta: EventMeta) -> None:
        entry = self._handlers.get(meta.type)
        if entry is None:
            return
        _, fn, wants_meta = entry
        if wants_meta:
            await fn(event, tx, meta)
        else:
            await fn(event, tx)

    async def checkpoint(self, db: Database) -> int:
        """The store position this projection has applied up to (0: nothing yet)."""
        async with db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT position FROM projection_checkpoints WHERE name = ?", (self.name,)
            )
        return int(row[0]) if row is not None else 0

    async def catch_up(
        self,
        store: EventStore,
        db: Database,
        codec: EventCodec | None = None,
        *,
        batch_size: int = 500,
    ) -> int:
        """Apply every stored event after the checkpoint; returns how many were read."""
        codec = codec or self.codec()
        done = 0
        position = await self.checkpoint(db)
        while True:
            batch = await store.read_all(position + 1, batch_size)
            if not batch:
                return done
            async with db.transaction() as tx:
                row = await tx.fetchone(
                    "SELECT position FROM projection_checkpoints WHERE name = ?", (self.name,)
                )
                if row is not None and int(row[0]) != position:
                    raise RuntimeError(
                        f"projection {self.name!r} is being run by another runner too "
                        f"(checkpoint moved from {position} to {row[0]})"
                    )
                for stored in batch:
                    if stored.type in self._handlers:
                        await self.apply(tx, codec.decode(stored), EventMeta.of_stored(stored))
                position = batch[-1].position
                await tx.execute(
                    "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    (self.name, position),
                )
            done += len(batch)

    async def run(
        self,
        store: EventStore,
        db: Database,
        codec: EventCodec | None = None,
        *,
        stop: asyncio.Event | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        """Follow the store until `stop` is set or the task is cancelled."""
        stop = stop or asyncio.Event()
        codec = codec or self.codec()
        while not stop.is_set():
            if not await self.catch_up(store, db, codec):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll_interval)

    async def reset(self, db: Database) -> None:
        """Empty the read model, the checkpoint and the inbox of this projection."""
        async with db.transaction() as tx:
            for table in self.tables:
                await tx.execute(f"DELETE FROM {table}")
            await tx.execute("DELETE FROM projection_checkpoints WHERE name = ?", (self.name,))
            await tx.execute("DELETE FROM inbox WHERE consumer_group = ?", (self.name,))

    async def rebuild(
        self, store: EventStore, db: Database, codec: EventCodec | None = None
    ) -> int:
        """Empty the read model and replay the whole store into it."""
        await self.setup(db)
        await self.reset(db)
        return await self.catch_up(store, db, codec)

    async def dump(self, db: Database) -> dict[str, list[Row]]:
        """Every row of the read model's tables, sorted (for comparing read models)."""
        return await dump_tables(db, self.tables)

    # --- from the bus ----------------------------------------------------------------------

    async def handle_envelope(self, db: Database, envelope: Envelope) -> bool:
        """Apply one received event unless the inbox has seen its id; returns whether it
        was applied."""
        entry = self._handlers.get(envelope.type)
        if entry is None:
            return False
        cls = entry[0]
        try:
            event = cls.model_validate_json(envelope.body)
        except ValidationError as exc:
            raise Reject(f"{envelope.type} does not validate as {cls.__name__}: {exc}") from exc
        async with db.transaction() as tx:
            if not await record(tx, self.name, envelope.id):
                return False
            await self.apply(tx, event, EventMeta.of_envelope(envelope))
        return True

    def bind(
        self,
        bus: EventBus,
        db: Database,
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
    ) -> None:
        """Subscribe this projection to `bus` (one subscription per stream it reads);
        call `setup(db)` before the bus starts."""
        if group is not None and group != self.name:
            raise ValueError("a projection's group is its name (its inbox is keyed by it)")
        for stream in sorted(self.streams):
            types_ = sorted(
                t for t, (cls, _, _) in self._handlers.items() if cls.__stream__ == stream
            )
            bus.add_handler(
                self._bus_handler(db),
                stream,
                *types_,
                group=self.name,
                retry=retry,
                concurrency=concurrency,
            )

    def _bus_handler(self, db: Database) -> Callable[[Envelope, Context], Awaitable[None]]:
        async def handler(envelope: Envelope, ctx: Context) -> None:
            await self.handle_envelope(db, envelope)

        handler.__qualname__ = f"projection:{self.name}"
        return handler
