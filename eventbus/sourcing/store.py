"""The event-store protocol every backend implements, and `open_store(url)`.

Guarantees (the shared store tests check each one on every backend):

- `append` is atomic: all events of a call are stored, or none. With `expected_version`
  it raises `ConcurrencyError` unless the stream is at exactly that version, so of
  several writers racing for one version exactly one wins. With `publish=True` the events
  are queued in the outbox in the same transaction. The SQL backends also append inside a
  caller's transaction (`append_in`), with the same guarantees.
- `read_all(from_position, limit)` returns events in global order. Positions are assigned
  in commit order, so a reader tailing the store by "last position seen + 1" never skips
  an event that commits later with a smaller position.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from eventbus.errors import ConcurrencyError

from .records import NewEvent, Snapshot, StoredEvent

if TYPE_CHECKING:
    from .database import Database, Transaction

#: `expected_version` for "no check": append whatever the stream's version
ANY_VERSION: int | None = None
#: `expected_version` for "the stream must not exist yet"
NO_STREAM = 0


class EventStore(ABC):
    """An append-only store of event streams with a global order."""

    #: the URL scheme of the backend (`memory`, `sqlite`, `postgresql`)
    backend: str = ""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create the schema if missing (idempotent)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""

    async def __aenter__(self) -> EventStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        publish: bool = False,
    ) -> list[StoredEvent]:
        """Append `events` after version `expected_version` of `stream_id` (None: any).

        Returns them as stored (versions and positions assigned). Raises
        `ConcurrencyError` if the stream is at another version. `publish=True` also
        queues them in the outbox, in the same transaction.
        """

    async def append_in(
        self,
        tx: Transaction,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        publish: bool = False,
    ) -> list[StoredEvent]:
        """`append` inside the caller's open transaction `tx` of `self.database`: the
        events commit (or roll back) with whatever else `tx` writes, e.g. a handler's
        read-model rows and its inbox entry (`eventbus.sourcing.transactional`). Positions
        stay gap-free and in commit order: the backend's append lock is held from here to
        the end of `tx`, so append last, just before the transaction ends. Stores without
        SQL (the memory store) cannot."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot append inside a caller's database transaction: "
            "use an SQL event store (SQLite or PostgreSQL)"
        )

    @abstractmethod
    async def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        """The events of one stream with `from_version <= version <= to_version`."""

    @abstractmethod
    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        """Up to `limit` events with `position >= from_position`, in global order."""

    @abstractmethod
    async def stream_version(self, stream_id: str) -> int:
        """The version of a stream (0 if it has no events)."""

    @abstractmethod
    async def last_position(self) -> int:
        """The position of the last committed event (0 if none)."""

    @abstractmethod
    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot; it replaces an older one of the same stream."""

    @abstractmethod
    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The newest snapshot of a stream, if any."""

    @abstractmethod
    async def outbox_pending(self, limit: int = 500) -> list[StoredEvent]:
        """Events queued for publishing and not yet marked sent, in global order."""

    @abstractmethod
    async def outbox_mark_sent(self, positions: Sequence[int]) -> None:
        """Take published events off the outbox (idempotent)."""

    async def try_acquire_relay(self) -> bool:
        """Take the relay lease: at most one outbox relay publishes from a store at a time
        (per-key order assumes one publisher). False if another relay holds it. The lease
        ends with `release_relay`, or with the holder's process. This default covers one
        process (the memory store); SQLite and PostgreSQL lease across processes."""
        if getattr(self, "_relay_held", False):
            return False
        self._relay_held = True
        return True

    async def release_relay(self) -> None:
        self._relay_held = False

    async def relay_lease_held(self) -> bool:
        """Whether this store still holds the relay lease it took. A lease can end without
        `release_relay` (PostgreSQL ends the session lock when the server drops that
        connection: a restart, a failover, `pg_terminate_backend`), and another relay may
        hold it by now: the relay asks before each batch it publishes."""
        return bool(getattr(self, "_relay_held", False))

    @property
    def database(self) -> Database | None:
        """The SQL database the store lives in, for read models, inboxes and checkpoints
        that must commit together (None for the memory store)."""
        return None


def check_version(stream_id: str, current: int, expected: int | None) -> None:
    if expected is not None and current != expected:
        raise ConcurrencyError(
            f"stream {stream_id!r} is at version {current}, not the expected {expected}: "
            "another writer appended first; reload and retry the command"
        )


def check_events(events: Sequence[NewEvent]) -> None:
    if not events:
        raise ValueError("append needs at least one event")


def encode_headers(headers: dict[str, str]) -> str:
    return json.dumps(headers, separators=(",", ":")) if headers else "{}"


def decode_headers(text: str | None) -> dict[str, str]:
    if not text or text == "{}":
        return {}
    value: dict[str, str] = json.loads(text)
    return value
