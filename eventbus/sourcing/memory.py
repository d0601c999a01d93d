"""The in-memory event store: one process, no durability; for tests and experiments."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventbus.errors import ConcurrencyError

from .records import NewEvent, Snapshot, StoredEvent
from .store import EventStore, check_events, check_version


class MemoryEventStore(EventStore):
    backend = "memory"

    def __init__(self) -> None:
        self._log: list[StoredEvent] = []
        self._streams: dict[str, list[StoredEvent]] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._outbox: dict[int, StoredEvent] = {}
        self._ids: set[str] = set()
        self._lock = asyncio.Lock()

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        publish: bool = False,
    ) -> list[StoredEvent]:
        check_events(events)
        async with self._lock:
            stream = self._streams.get(stream_id, [])
            check_version(stream_id, len(stream), expected_version)
            duplicate = next((e.id for e in events if e.id in self._ids), None)
            if duplicate is not None or len({e.id for e in events}) != len(events):
                raise ConcurrencyError(
                    f"stream {stream_id!r}: event id {duplicate!r} is stored already"
                )
            base_version = len(stream)
            base_position = len(self._log)
            stored = [
                StoredEvent.of(new, stream_id, base_version + i, base_position + i)
                for i, new in enumerate(events, start=1)
            ]
            self._streams[stream_id] = [*stream, *stored]
            self._log.extend(stored)
            self._ids.update(e.id for e in stored)
            if publish:
                for event in stored:
                    self._outbox[event.position] = event
            return list(stored)

    async def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        stream = self._streams.get(stream_id, [])
        end = len(stream) if to_version is None else min(to_version, len(stream))
        return stream[max(from_version, 1) - 1 : end]

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        start = max(from_position, 1) - 1
        return self._log[start : start + limit]

    async def stream_version(self, stream_id: str) -> int:
        return len(self._streams.get(stream_id, ()))

    async def last_position(self) -> int:
        return len(self._log)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        current = self._snapshots.get(snapshot.stream_id)
        if current is None or current.version <= snapshot.version:
            self._snapshots[snapshot.stream_id] = snapshot

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        return self._snapshots.get(stream_id)

    async def outbox_pending(self, limit: int = 500) -> list[StoredEvent]:
        positions = sorted(self._outbox)[:limit]
        return [self._outbox[p] for p in positions]

    async def outbox_mark_sent(self, positions: Sequence[int]) -> None:
        for position in positions:
            self._outbox.pop(position, None)
