"""`Repository`: load aggregates from a store (snapshot + newer events) and save them."""

from __future__ import annotations

import json
from typing import Generic, TypeVar

from eventbus.context import ambient_ids
from eventbus.cqrs import NotFound

from .aggregate import Aggregate
from .codec import EventCodec
from .records import Snapshot, StoredEvent
from .store import EventStore

A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    """Aggregates of one class in one store.

    `save` appends the pending events with `expected_version` = the version the aggregate
    was loaded at, so a concurrent writer makes it raise `ConcurrencyError`. With
    `publish=True` (the default) the events go into the outbox in the same transaction,
    on the bus stream of their class, keyed by the aggregate id. With `snapshot_every=N`
    a snapshot is stored whenever a save crosses a multiple of N.
    """

    def __init__(
        self,
        store: EventStore,
        aggregate: type[A],
        codec: EventCodec | None = None,
        *,
        snapshot_every: int = 0,
        publish: bool = True,
    ) -> None:
        self.store = store
        self.aggregate = aggregate
        self.codec = codec or EventCodec(aggregate.event_classes())
        for cls in aggregate.event_classes():
            if cls.__event_type__ not in self.codec.types:
                self.codec.register(cls)
        self.snapshot_every = snapshot_every
        self.publish = publish

    async def load(self, id: str) -> A:
        """The aggregate as stored (version 0 and no state if it has no events)."""
        stream_id = self.aggregate.stream_id(id)
        snapshot = await self.store.load_snapshot(stream_id) if self.snapshot_every else None
        if snapshot is not None and snapshot.schema_version != self.aggregate.snapshot_version:
            snapshot = None  # an older layout: replay from the start instead
        start = snapshot.version + 1 if snapshot is not None else 1
        history = await self.store.read(stream_id, start)
        return self.aggregate.rehydrate(
            id,
            (self.codec.decode(e) for e in history),
            snapshot=json.loads(snapshot.state) if snapshot is not None else None,
            snapshot_version=snapshot.version if snapshot is not None else 0,
        )

    async def get(self, id: str) -> A:
        """The aggregate; `NotFound` if it has no events."""
        aggregate = await self.load(id)
        if aggregate.version == 0:
            raise NotFound(f"{self.aggregate.category} {id!r} does not exist")
        return aggregate

    async def save(
        self,
        aggregate: A,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> list[StoredEvent]:
        """Append the aggregate's pending events (and queue them in the outbox). Their
        `correlation_id` and `causation_id` default to the ambient ones, as a publish's do:
        the handled event's chain inside a handler, else the `correlation_scope` (an HTTP
        request's id under `eventbus.fastapi.CorrelationIdMiddleware`)."""
        pending = aggregate.pending
        if not pending:
            return []
        if correlation_id is None or causation_id is None:
            ambient_correlation, ambient_causation = ambient_ids()
            correlation_id = correlation_id if correlation_id is not None else ambient_correlation
            causation_id = causation_id if causation_id is not None else ambient_causation
        expected = aggregate.version - len(pending)
        stored = await self.store.append(
            self.aggregate.stream_id(aggregate.id),
            [
                self.codec.encode(
                    e, key=aggregate.id, correlation_id=correlation_id, causation_id=causation_id
                )
                for e in pending
            ],
            expected,
            publish=self.publish,
        )
        aggregate.mark_saved()
        every = self.snapshot_every
        if every and expected // every != aggregate.version // every:
            await self.store.save_snapshot(
                Snapshot(
                    self.aggregate.stream_id(aggregate.id),
                    aggregate.version,
                    aggregate.snapshot_bytes(),
                    self.aggregate.snapshot_version,
                )
            )
        return stored
