"""The outbox relay: publishes events queued by `append(..., publish=True)` to the bus.

At least once: an event is taken off the outbox only after the broker confirmed it, so a
relay killed between the two re-publishes at most the events it had not marked yet, with
the same event ids (consumers deduplicate on them with an `Inbox`). In order per stream:
the events of one key are published one after another in store order; different keys
go concurrently. Run one relay per store (the order guarantee assumes one publisher).

**An event that can never be published does not stop the others.** What fails decides:

- *permanent* (`is_permanent`): the stored event cannot be decoded (unknown type, a
  payload that no longer validates) or the bus refuses to build the message from it: a
  `ValueError` or `TypeError` such as `MessageTooLarge` (above
  `EVENTBUS_MAX_MESSAGE_BYTES`) or an invalid header name. Retrying cannot change that:
  the event is *parked*: moved from the outbox to `outbox_failed` (position, reason,
  time), logged at error (`outbox.event_parked`), and the events behind it, of its key
  too, keep flowing. `relay.failed()` lists parked events and `relay.requeue()` puts
  them back in the outbox once the cause is fixed (a larger limit, a codec that knows
  the type); they are then published after the events that followed them.
- *transient*: anything else, e.g. the broker is down or slow (`PublishError`,
  `ConnectionError`, timeouts), the bus is not running (`BusClosed`), or RabbitMQ routes
  the type to no queue yet (`UnroutableError`: a group may bind one later, so the event
  waits rather than being set aside). It is never parked: its key waits and is retried
  with exponential backoff (up to `max_backoff`) while the other keys keep publishing at
  full speed; when nothing at all gets through, the relay as a whole backs off as well.

Pass `permanent=` to classify differently (e.g. a broker's own size refusal).
The memory store has no table for parked events: there they are kept, per store, in
this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eventbus.bus import EventBus
from eventbus.errors import BusClosed, UnroutableError
from eventbus.log import get_logger
from eventbus.settings import redact_text
from eventbus.wire import now_rfc3339

from .codec import EventCodec
from .database import Database
from .records import StoredEvent
from .store import EventStore
from .table import E_COLUMNS, rows_to_events

_log = get_logger()


def is_permanent(exc: BaseException) -> bool:
    """Whether publishing an event failed for a reason retrying cannot fix: the message
    cannot be built from it (`ValueError`, `TypeError`, `LookupError`; `MessageTooLarge`
    is a `ValueError`). Broker, connection and routing failures are transient. An
    exception may say so itself with a boolean `permanent` attribute (an adapter's
    refusal of a key or headers the broker can never take)."""
    flag = getattr(exc, "permanent", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, BusClosed | UnroutableError):
        return False
    return isinstance(exc, ValueError | TypeError | LookupError)


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An outbox event set aside as unpublishable: the event, why, and since when."""

    event: StoredEvent
    reason: str
    failed_at: str


#: parked events of stores without SQL (the memory store): they stay in its outbox and
#: the relays of that store skip them
_LOCAL_PARKING: weakref.WeakKeyDictionary[EventStore, dict[int, ParkedEvent]] = (
    weakref.WeakKeyDictionary()
)


class OutboxRelay:
    def __init__(
        self,
        store: EventStore,
        bus: EventBus,
        codec: EventCodec,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.05,
        max_backoff: float = 5.0,
        standby_interval: float = 1.0,
        permanent: Callable[[BaseException], bool] = is_permanent,
    ) -> None:
        self.store = store
        self.bus = bus
        self.codec = codec
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.standby_interval = standby_interval
        self.permanent = permanent
        #: events published / parked by this relay, and publish cycles run
        self.published = 0
        self.parked = 0
        self.cycles = 0
        #: test hook: called after a batch was published and before it is marked sent
        self.before_mark: Callable[[list[StoredEvent]], None] | None = None
        #: events whose publishing failed transiently: position -> (failures, retry at)
        self._held: dict[int, tuple[int, float]] = {}

    async def publish_pending(self) -> int:
        """Publish one batch of pending events; returns how many left the outbox
        (published, or parked as unpublishable). Raises the error when none could be
        published because of a transient failure (the broker is down)."""
        handled, _ = await self._cycle()
        return handled

    async def _cycle(self) -> tuple[int, bool]:
        """One batch; returns (events published or parked, whether the batch was full)."""
        self.cycles += 1
        local = _LOCAL_PARKING.get(self.store) if self.store.database is None else None
        pending = await self.store.outbox_pending(self.batch_size + len(local or ()))
        if local:
            pending = [stored for stored in pending if stored.position not in local]
        full = len(pending) >= self.batch_size
        if self._held and not full:  # forget holds of events no longer pending
            positions = {stored.position for stored in pending}
            self._held = {p: h for p, h in self._held.items() if p in positions}
        now = time.monotonic()
        lanes: dict[str | None, list[StoredEvent]] = {}
        for stored in pending:
            lanes.setdefault(stored.key or stored.stream_id, []).append(stored)
        ready = (
            [ev for ev in lanes.values() if self._held.get(ev[0].position, (0, 0.0))[1] <= now]
            if self._held
            else list(lanes.values())
        )
        sent: list[int] = []
        unpublishable: list[tuple[StoredEvent, Exception]] = []
        failed: list[tuple[StoredEvent, Exception]] = []

        async def lane(events: list[StoredEvent]) -> None:
            for stored in events:
                try:
                    event = self.codec.decode(stored)
                except Exception as exc:  # the stored bytes will not change
                    unpublishable.append((stored, exc))
                    continue
                try:
                    await self.bus.publish(
                        event,
                        key=stored.key,
                        id=stored.id,
                        correlation_id=stored.correlation_id,
                        causation_id=stored.causation_id,
                        headers=stored.headers or None,
                        time=stored.time,
                    )
                except Exception as exc:
                    if self.permanent(exc):
                        unpublishable.append((stored, exc))
                        continue
                    failed.append((stored, exc))
                    return  # the rest of this key waits: order per key
                sent.append(stored.position)

        results = await asyncio.gather(*(lane(events) for events in ready), return_exceptions=True)
        if self.before_mark is not None:
            marked = set(sent)
            self.before_mark([s for s in pending if s.position in marked])
        await self.store.outbox_mark_sent(sent)
        self.published += len(sent)
        if self._held:
            for position in sent:
                self._held.pop(position, None)
        if unpublishable:
            await self._park(unpublishable)
        for stored, exc in failed:
            failures = self._held.get(stored.position, (0, 0.0))[0] + 1
            delay = min(self.poll_interval * 2 ** (failures - 1), self.max_backoff)
            self._held[stored.position] = (failures, time.monotonic() + delay)
            _log.warning(
                "outbox.publish_failed", event_id=stored.id, position=stored.position,
                type=stored.type, key=stored.key, error=repr(exc), retry_in=delay,
            )  # fmt: skip
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if failed and not sent and not unpublishable:  # nothing got through: back off
            raise failed[0][1]
        return len(sent) + len(unpublishable), full

    async def _park(self, items: list[tuple[StoredEvent, Exception]]) -> None:
        """Move unpublishable events off the outbox into `outbox_failed`, with the reason."""
        at = now_rfc3339()
        parked = [
            ParkedEvent(stored, redact_text(f"{type(exc).__name__}: {exc}")[:2000], at)
            for stored, exc in items
        ]
        db = self.store.database
        if db is None:
            _LOCAL_PARKING.setdefault(self.store, {}).update((p.event.position, p) for p in parked)
        else:
            async with db.transaction() as tx:
                await tx.executemany(
                    "INSERT INTO outbox_failed (position, reason, failed_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (position) DO UPDATE SET reason = excluded.reason, "
                    "failed_at = excluded.failed_at",
                    [(p.event.position, p.reason, p.failed_at) for p in parked],
                )
                await tx.executemany(
                    "DELETE FROM outbox WHERE position = ?", [(p.event.position,) for p in parked]
                )
        self.parked += len(parked)
        for p in parked:
            self._held.pop(p.event.position, None)
            _log.error(
                "outbox.event_parked", event_id=p.event.id, position=p.event.position,
                type=p.event.type, stream_id=p.event.stream_id, key=p.event.key, reason=p.reason,
            )  # fmt: skip

    async def failed(self) -> list[ParkedEvent]:
        """The events parked as unpublishable, oldest first."""
        db = self.store.database
        if db is None:
            local = _LOCAL_PARKING.get(self.store, {})
            return [local[p] for p in sorted(local)]
        async with db.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT {E_COLUMNS}, f.reason, f.failed_at FROM outbox_failed f "
                "JOIN events e ON e.position = f.position ORDER BY f.position"
            )
        events = rows_to_events([row[:-2] for row in rows])
        return [ParkedEvent(e, row[-2], row[-1]) for e, row in zip(events, rows, strict=True)]

    async def requeue(self, positions: Sequence[int] | None = None) -> int:
        """Put parked events (all, or those at `positions`) back in the outbox, to be
        published again; returns how many were requeued."""
        db = self.store.database
        if db is None:
            local = _LOCAL_PARKING.get(self.store, {})
            chosen = list(local) if positions is None else [p for p in positions if p in local]
            for position in chosen:
                del local[position]
            return len(chosen)
        return await _requeue(db, positions)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until `stop` is set (or the task is cancelled); errors back off and retry.

        Only the holder of the store's relay lease publishes: a second relay on the same
        store stands by and takes over when the first stops or dies."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            standby_logged = False
            while not await self.store.try_acquire_relay():
                if not standby_logged:
                    _log.info("outbox.relay_standby", reason="another relay holds the lease")
                    standby_logged = True
                await _wait(stop, self.standby_interval)
                if stop.is_set():
                    return
            try:
                await self._publish_until(stop)
            finally:
                await self.store.release_relay()

    async def _publish_until(self, stop: asyncio.Event) -> None:
        """Publish batches while the lease holds; return when `stop` is set or the lease
        was lost (the caller stands by again: another relay may publish now)."""
        backoff = self.poll_interval
        while not stop.is_set():
            try:
                if not await self.store.relay_lease_held():
                    _log.warning("outbox.relay_lease_lost", action="standing by")
                    return
            except Exception as exc:  # cannot tell: do not publish on a maybe-lost lease
                _log.warning("outbox.relay_failed", error=repr(exc), retry_in=backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                handled, full = await self._cycle()
                backoff = self.poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox.relay_failed", error=repr(exc), retry_in=backoff)
                await _wait(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if not full or not handled:
                await _wait(stop, self.poll_interval)

    async def drain(self, timeout: float = 30.0) -> None:
        """Publish until the outbox holds nothing publishable (parked events aside),
        retrying transient publish failures with their backoff (used by tests and the
        demo). Raises `TimeoutError`, from the last publish error if any, after `timeout`;
        `BusClosed` and store errors at once."""
        last: Exception | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        handled, full = await self._cycle()
                    except Exception as exc:
                        if isinstance(exc, BusClosed) or not self._held:
                            raise  # not an event's publish failing: waiting cannot help
                        last, handled, full = exc, 0, False  # held: retried when due
                    if handled or full:
                        continue
                    if not self._held:
                        return
                    due = min(at for _, at in self._held.values())
                    await asyncio.sleep(max(due - time.monotonic(), 0.0))
        except TimeoutError as exc:
            raise TimeoutError(f"the outbox did not drain within {timeout}s") from last or exc


async def _requeue(db: Database, positions: Sequence[int] | None) -> int:
    """Move parked events back from `outbox_failed` to the outbox, in one transaction."""
    async with db.transaction() as tx:
        if positions is None:
            chosen = [
                int(row[0]) for row in await tx.fetchall("SELECT position FROM outbox_failed")
            ]
        else:
            chosen = [
                p
                for p in positions
                if await tx.fetchone("SELECT 1 FROM outbox_failed WHERE position = ?", (p,))
            ]
        if not chosen:
            return 0
        await tx.executemany(
            "INSERT INTO outbox (position) VALUES (?) ON CONFLICT (position) DO NOTHING",
            [(p,) for p in chosen],
        )
        await tx.executemany("DELETE FROM outbox_failed WHERE position = ?", [(p,) for p in chosen])
    return len(chosen)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
