"""Concurrency per subscription with per-key order: N lanes, a key always on the same lane."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections.abc import Awaitable, Callable

from .log import get_logger
from .protocol import Delivery

_log = get_logger()


class Dispatcher:
    """Feeds deliveries to the pipeline.

    The adapter awaits `submit` for one delivery at a time (back-pressure). With
    `concurrency == 1` the delivery is processed inline; otherwise it goes to the lane of
    its key (deliveries without a key spread round-robin), so events with the same key
    are handled one after the other, in order, while different keys run in parallel.
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
        if concurrency > 1:
            for n in range(concurrency):
                lane: asyncio.Queue[Delivery | None] = asyncio.Queue(lane_buffer)
                self._lanes.append(lane)
                self._workers.append(asyncio.create_task(self._work(lane), name=f"lane-{n}"))

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
            index = next(self._rr) % self.concurrency
        else:
            index = zlib.crc32(key.encode()) % self.concurrency
        lane = self._lanes[index]
        await lane.put(delivery)
        if self._swept:  # the put waited while drain swept the lanes: give it back too
            await _sweep(lane)

    async def _work(self, lane: asyncio.Queue[Delivery | None]) -> None:
        while True:
            delivery = await lane.get()
            if delivery is None:
                return
            if self._closing:  # queued before the stop, not started: back to the broker
                await _quiet_nack(delivery)
                continue
            self._inflight += 1
            try:
                await self._process(delivery)
            finally:
                self._finished()

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
