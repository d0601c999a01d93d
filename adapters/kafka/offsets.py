"""Which offset of a partition may be committed: the last *contiguously* finished one + 1.

Records finish out of order (concurrency lanes, delayed retries, dead-lettering), but a
commit says "everything below this offset is done", so it may only move past a record
once that record and every record before it finished. The tracker also counts the bytes
of the unfinished records (what the consumer holds in memory), so that a partition can
be bounded by bytes as well as by records. Pure bookkeeping, no client here.
"""

from __future__ import annotations

from collections import deque


class PartitionTracker:
    """Fetched and finished offsets of one partition."""

    __slots__ = ("_order", "_pending", "bytes", "next_offset")

    def __init__(self) -> None:
        #: fetched offsets from the lowest unfinished one on, in fetch order
        self._order: deque[int] = deque()
        #: fetched offsets that are not finished -> their size in bytes
        self._pending: dict[int, int] = {}
        #: bytes of the unfinished records
        self.bytes = 0
        #: the offset after the last fetched record (None: nothing fetched yet)
        self.next_offset: int | None = None

    def fetched(self, offset: int, size: int = 0, limit: int | None = None) -> bool | None:
        """Record a fetched offset of `size` bytes; False for a stale re-fetch of one
        already tracked; None (not recorded) if the unfinished records already hold
        `limit` bytes: the caller fetches it again later. A partition with nothing
        unfinished always takes the record, whatever its size."""
        if self.next_offset is not None and offset < self.next_offset:
            return False
        if limit is not None and self.bytes >= limit and self._pending:
            return None
        self._order.append(offset)
        self._pending[offset] = size
        self.bytes += size
        self.next_offset = offset + 1
        return True

    def finished(self, offset: int) -> bool:
        """Mark an offset finished; False if it is not tracked (stale or already finished)."""
        pending = self._pending
        size = pending.pop(offset, None)
        if size is None:
            return False
        self.bytes -= size
        order = self._order
        while order and order[0] not in pending:
            order.popleft()
        return True

    def commit_point(self) -> int | None:
        """The offset to commit: the lowest unfinished one, or the next to fetch."""
        if self._order:
            return self._order[0]
        return self.next_offset

    @property
    def window(self) -> int:
        """Records between the commit point and the last fetched one (the redo on a crash)."""
        return len(self._order)

    @property
    def unfinished(self) -> int:
        return len(self._pending)

    def rewind(self, offset: int) -> None:
        """The consumer seeks back to `offset`: forget everything from there on."""
        self._order.clear()
        self._pending.clear()
        self.bytes = 0
        self.next_offset = offset
