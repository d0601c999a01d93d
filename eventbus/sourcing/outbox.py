"""The outbox relay: publishes events queued by `append(..., publish=True)` to the bus.

At least once: an event is taken off the outbox only after the broker confirmed it, so a
relay killed between the two re-publishes at most the events it had not marked yet, with
the same event ids (consumers deduplicate on them with an `Inbox`). In order per stream:
the events of one key are published one after another in store order; different keys
go concurrently. Run one relay per store (the order guarantee assumes one publisher).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from eventbus.bus import EventBus
from eventbus.log import get_logger

from .codec import EventCodec
from .records import StoredEvent
from .store import EventStore

_log = get_logger()


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
    ) -> None:
        self.store = store
        self.bus = bus
        self.codec = codec
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.standby_interval = standby_interval
        self.published = 0
        #: test hook: called after a batch was published and before it is marked sent
        self.before_mark: Callable[[list[StoredEvent]], None] | None = None

    async def publish_pending(self) -> int:
        """Publish one batch of pending events; returns how many were published."""
        pending = await self.store.outbox_pending(self.batch_size)
        if not pending:
            return 0
        lanes: dict[str | None, list[StoredEvent]] = {}
        for stored in pending:
            lanes.setdefault(stored.key or stored.stream_id, []).append(stored)
        sent: list[int] = []

        async def lane(events: list[StoredEvent]) -> None:
            for stored in events:
                await self.bus.publish(
                    self.codec.decode(stored),
                    key=stored.key,
                    id=stored.id,
                    correlation_id=stored.correlation_id,
                    causation_id=stored.causation_id,
                    headers=stored.headers or None,
                    time=stored.time,
                )
                sent.append(stored.position)

        results = await asyncio.gather(*(lane(ev) for ev in lanes.values()), return_exceptions=True)
        if self.before_mark is not None:
            self.before_mark([s for s in pending if s.position in set(sent)])
        await self.store.outbox_mark_sent(sent)
        self.published += len(sent)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(sent)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until `stop` is set (or the task is cancelled); errors back off and retry.

        Only the holder of the store's relay lease publishes: a second relay on the same
        store stands by and takes over when the first stops or dies."""
        stop = stop or asyncio.Event()
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
        backoff = self.poll_interval
        while not stop.is_set():
            try:
                count = await self.publish_pending()
                backoff = self.poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox.relay_failed", error=repr(exc), retry_in=backoff)
                count = 0
                await _wait(stop, backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if count < self.batch_size:
                await _wait(stop, self.poll_interval)

    async def drain(self, timeout: float = 30.0) -> None:
        """Publish until the outbox is empty (used by tests and the demo)."""
        async with asyncio.timeout(timeout):
            while await self.publish_pending():
                pass


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
