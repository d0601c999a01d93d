"""`CountingEventStore`: a third party's event store, written outside eventbus against its
`EventStore` abstraction only. It decorates another store (here SQLite) and counts what it
is asked, as an auditing or metrics layer would; the shipped store contract proves it
keeps every promise of the store it wraps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from eventbus.sourcing import EventStore, NewEvent, Snapshot, SqliteEventStore, StoredEvent
from eventbus.sourcing.database import Database


class CountingEventStore(EventStore):
    def __init__(self, path: str) -> None:
        self.inner = SqliteEventStore(path)
        self.calls: Counter[str] = Counter()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        publish: bool = False,
    ) -> list[StoredEvent]:
        self.calls["append"] += 1
        return await self.inner.append(stream_id, events, expected_version, publish=publish)

    async def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        self.calls["read"] += 1
        return await self.inner.read(stream_id, from_version, to_version)

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        self.calls["read_all"] += 1
        return await self.inner.read_all(from_position, limit)

    async def stream_version(self, stream_id: str) -> int:
        return await self.inner.stream_version(stream_id)

    async def last_position(self) -> int:
        return await self.inner.last_position()

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await self.inner.save_snapshot(snapshot)

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        return await self.inner.load_snapshot(stream_id)

    async def outbox_pending(self, limit: int = 500) -> list[StoredEvent]:
        return await self.inner.outbox_pending(limit)

    async def outbox_mark_sent(self, positions: Sequence[int]) -> None:
        await self.inner.outbox_mark_sent(positions)

    async def try_acquire_relay(self) -> bool:
        return await self.inner.try_acquire_relay()

    async def release_relay(self) -> None:
        await self.inner.release_relay()

    @property
    def database(self) -> Database | None:
        return self.inner.database
