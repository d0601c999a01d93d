"""Concurrency per subscription with per-key order: N lanes; a key holds one lane while
any of its events is queued or running there, and a key without one waits for an idle lane."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .log import get_logger
from .protocol import Delivery

_log = get_logger()


class Dispatcher:
    """Feeds deliveries to the pipeline.

    The adapter awaits `submit` for one delivery at a time (back-pressure). With
    `concurrency == 1` the delivery is processed inline. Otherwise a delivery goes to the
    lane its key already holds (queued behind that key's earlier events, so a key's events
    run one after the other, in order), or, if its key holds none (and for a delivery
    without a key), to an idle lane, which its key then holds until the lane runs dry.
    When no lane is idle, `submit` waits for one.

    A delivery never queues behind another key's events. So a handler that hangs stalls
    its own key only (and, once its lane is full, the pump: that is the back-pressure),
    and N busy keys run N at a time. A lane per key by hash did neither: keys that hash
    alike share a lane (64 keys on 64 lanes use 48 of them), and a new key hashed onto a
    held handler's lane waited behind it and, once that lane was full, blocked the pump.
    """

    def __init__(
        self,
        process: Callable[[Delivery], Awaitable[object]],
        concurrency: int = 1,
        lane_buffer: int = 16,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._process = process
        self.concurrency = concurrency
        self._closing = False
        self._swept = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._lanes: list[asyncio.Queue[Delivery | None]] = []
        self._workers: list[asyncio.Task[None]] = []
        #: per lane: its deliveries queued or running, and the key that holds it
        self._load = [0] * concurrency
        self._holder: list[str | None] = [None] * concurrency
        #: the lanes with nothing queued or running (a stack: the last freed is warm)
        self._free = list(range(concurrency - 1, -1, -1))
        #: key -> the lane it holds
        self._held: dict[str, int] = {}
        #: submits waiting for a free lane, each with what it awaits: True once a lane
        #: took its delivery, False to look again (or, at the stop, to give it back)
        self._parked: deque[tuple[Delivery, asyncio.Future[bool]]] = deque()
        if concurrency > 1:
            for n in range(concurrency):
                lane: asyncio.Queue[Delivery | None] = asyncio.Queue(lane_buffer)
                self._lanes.append(lane)
                self._workers.append(asyncio.create_task(self._work(n), name=f"lane-{n}"))

    @property
    def in_flight(self) -> int:
        """Deliveries being processed now."""
        return self._inflight

    async def submit(self, delivery: Delivery) -> None:
        if self._closing:
            await _quiet_nack(delivery)
            return
        if not self._lanes:  # processed inline (no coroutine between: once per event)
            self._inflight += 1
            try:
                await self._process(delivery)
            finally:
                self._finished()
            return
        key = delivery.key
        while True:
            index = self._held.get(key) if key is not None else None
            if index is not None:
                break
            if self._free:
                index = self._free.pop()
                self._hold(index, key)
                break
            # no lane is free: park here; the lane that frees first takes the delivery
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._parked.append((delivery, waiter))
            if await waiter:  # on a lane now
                return
            if self._closing:  # the stop began while this waited for a lane
                await _quiet_nack(delivery)
                return
            # (else another submit gave its key a lane meanwhile: queue behind that)
        self._load[index] += 1
        lane = self._lanes[index]
        await lane.put(delivery)
        if self._swept:  # the put waited while drain swept the lanes: give it back too
            await _sweep(lane)

    def _hold(self, index: int, key: str | None) -> None:
        """Lane `index`, free, now carries `key`'s events (or one keyless delivery)."""
        if key is not None:
            self._held[key] = index
            self._holder[index] = key

    def _left(self, index: int) -> None:
        """A delivery left lane `index` (processed, or given back at the stop). A lane
        that runs dry goes to the submit parked for one, or else back to the free ones."""
        self._load[index] -= 1
        if self._load[index]:
            return
        key = self._holder[index]
        if key is not None:
            self._holder[index] = None
            del self._held[key]
        while self._parked and not self._closing:
            delivery, waiter = self._parked.popleft()
            if waiter.done():  # that submit was cancelled
                continue
            if delivery.key is not None and delivery.key in self._held:
                waiter.set_result(False)  # its key has a lane now: it queues there
                continue
            self._hold(index, delivery.key)
            self._load[index] = 1
            self._lanes[index].put_nowait(delivery)  # the lane is empty: no wait
            waiter.set_result(True)
            return
        self._free.append(index)

    def _release_parked(self) -> None:
        """At the stop: every parked submit gives its delivery back."""
        while self._parked:
            _, waiter = self._parked.popleft()
            if not waiter.done():
                waiter.set_result(False)

    async def _work(self, index: int) -> None:
        lane = self._lanes[index]
        while True:
            delivery = await lane.get()
            if delivery is None:
                return
            try:
                if self._closing:  # queued before the stop, not started: back to the broker
                    await _quiet_nack(delivery)
                    continue
                self._inflight += 1
                try:
                    await self._process(delivery)
                except Exception as exc:  # the pipeline settles, never raises: keep the lane
                    _log.error(
                        "dispatch.failed", event_id=delivery.attributes.get("id"), error=repr(exc)
                    )
                finally:
                    self._finished()
            finally:
                self._left(index)

    def _finished(self) -> None:
        """A delivery's processing ended (however it ended)."""
        self._inflight -= 1
        if not self._inflight and self._closing:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Let in-flight handlers finish; give queued, unstarted deliveries back (nack).

        Every delivery ever submitted is settled exactly once: processed, or nacked here
        (also one whose `submit` was still waiting for a lane or for room in one)."""
        self._closing = True
        self._release_parked()
        if self._inflight:
            self._idle.clear()
        try:
            async with asyncio.timeout(timeout):
                for lane in self._lanes:  # the worker nacks what is queued ahead of it
                    await lane.put(None)
                await self._idle.wait()
                if self._workers:
                    await asyncio.gather(*self._workers)
        except TimeoutError:
            _log.warning("shutdown.timeout", timeout=timeout, inflight=self._inflight)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        self._swept = True
        for lane in self._lanes:
            await _sweep(lane)


async def _sweep(lane: asyncio.Queue[Delivery | None]) -> None:
    while not lane.empty():
        queued = lane.get_nowait()
        if queued is not None:
            await _quiet_nack(queued)


async def _quiet_nack(delivery: Delivery) -> None:
    try:
        await delivery.nack()
    except Exception as exc:
        _log.warning("nack.failed", event_id=delivery.attributes.get("id"), error=repr(exc))
