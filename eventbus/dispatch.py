"""Concurrency per subscription with per-key order: N lanes, a key's events on one lane
while any of them is queued or running."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from .log import get_logger
from .protocol import Delivery

_log = get_logger()


class Dispatcher:
    """Feeds deliveries to the pipeline.

    The adapter awaits `submit` for one delivery at a time (back-pressure). With
    `concurrency == 1` the delivery is processed inline; otherwise it goes to a lane:
    the lane its key already has events on, or else an idle lane (round-robin when none
    is idle; deliveries without a key too). So events with the same key are handled one
    after the other, in order, while different keys run in parallel. A key is not tied to
    a lane by a hash: two busy keys that hashed alike would share one lane, and since a
    full lane blocks `submit`, that lane would set the pace of every other (64 keys on 64
    hashed lanes use 48 of them, 16 twice).
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
        self._rr = itertools.count()
        self._lanes: list[asyncio.Queue[Delivery | None]] = []
        self._workers: list[asyncio.Task[None]] = []
        #: per lane, its deliveries queued or running; the lanes with none
        self._load = [0] * concurrency
        self._idle_lanes = set(range(concurrency))
        #: key -> [its lane, its deliveries queued or running there]
        self._keys: dict[str, list[int]] = {}
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
        if key is None:
            index = self._free_lane()
        else:
            held = self._keys.get(key)
            if held is None:
                held = self._keys[key] = [self._free_lane(), 0]
            held[1] += 1
            index = held[0]
        if not self._load[index]:
            self._idle_lanes.discard(index)
        self._load[index] += 1
        lane = self._lanes[index]
        await lane.put(delivery)
        if self._swept:  # the put waited while drain swept the lanes: give it back too
            await _sweep(lane)

    def _free_lane(self) -> int:
        """An idle lane if there is one, else the next one round-robin."""
        if self._idle_lanes:
            return self._idle_lanes.pop()
        return next(self._rr) % self.concurrency

    def _left(self, index: int, key: str | None) -> None:
        """A delivery of `key` left lane `index` (processed or given back)."""
        load = self._load[index] - 1
        self._load[index] = load
        if not load:
            self._idle_lanes.add(index)
        if key is not None:
            held = self._keys.get(key)
            if held is not None:
                held[1] -= 1
                if not held[1]:
                    del self._keys[key]

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
                finally:
                    self._finished()
            finally:
                self._left(index, delivery.key)

    def _finished(self) -> None:
        """A delivery's processing ended (however it ended)."""
        self._inflight -= 1
        if not self._inflight and self._closing:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Let in-flight handlers finish; give queued, unstarted deliveries back (nack).

        Every delivery ever submitted is settled exactly once: processed, or nacked here
        (also one whose `submit` was still waiting for room in a full lane)."""
        self._closing = True
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
