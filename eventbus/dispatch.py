"""Concurrency per subscription with per-key order: N workers take deliveries from one
ready queue; a key's later deliveries wait for its earlier one, never another key's."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .log import get_logger
from .protocol import Delivery

_log = get_logger()


class Dispatcher:
    """Feeds deliveries to the pipeline.

    The adapter awaits `submit` for one delivery at a time. With `concurrency == 1` the
    delivery is processed inline. Otherwise N workers run the handlers:

    - a delivery whose key has no delivery running or ready (and one without a key) joins
      the **ready** queue, which the N workers take from in order;
    - a delivery whose key has one waits in that key's **later** queue; the worker that
      ran the key's delivery runs the key's next one when it finishes, so a key's
      deliveries run one after the other, in the order they were submitted.

    So nothing waits behind another key's delivery: a handler that hangs holds its own key
    and one worker, while the other keys run on the N-1 others. `submit` returns once
    fewer than `backlog` deliveries (default 16 per worker) wait to start: that is the
    back-pressure on the broker client. (A lane per key by hash did not keep this: keys
    that hash alike share a lane, 64 keys on 64 lanes used 48 of them, and a new key
    hashed onto a held handler's lane waited behind it.)
    """

    def __init__(
        self,
        process: Callable[[Delivery], Awaitable[object]],
        concurrency: int = 1,
        backlog: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._process = process
        self.concurrency = concurrency
        self._backlog = max(1, backlog if backlog is not None else 16 * concurrency)
        self._closing = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: deliveries that can start now, in the order they were submitted
        self._ready: deque[Delivery] = deque()
        #: key -> its deliveries after the one ready or running (present while it is)
        self._later: dict[str, deque[Delivery]] = {}
        #: deliveries submitted and not started (ready and later)
        self._waiting = 0
        #: what the workers with nothing to do await
        self._sleepers: deque[asyncio.Future[None]] = deque()
        #: what `submit` awaits while the backlog is full
        self._pump: asyncio.Future[None] | None = None
        self._workers = (
            [asyncio.create_task(self._work(), name=f"worker-{n}") for n in range(concurrency)]
            if concurrency > 1
            else []
        )

    @property
    def in_flight(self) -> int:
        """Deliveries being processed now."""
        return self._inflight

    @property
    def waiting(self) -> int:
        """Deliveries submitted and not started yet."""
        return self._waiting

    async def submit(self, delivery: Delivery) -> None:
        if self._closing:
            await _quiet_nack(delivery)
            return
        if not self._workers:  # processed inline (no coroutine between: once per event)
            self._inflight += 1
            try:
                await self._process(delivery)
            finally:
                self._finished()
            return
        key = delivery.key
        later = self._later.get(key) if key is not None else None
        if later is not None:
            later.append(delivery)
        else:
            if key is not None:
                self._later[key] = deque()
            self._ready.append(delivery)
            while self._sleepers:
                sleeper = self._sleepers.popleft()
                if not sleeper.done():
                    sleeper.set_result(None)
                    break
        self._waiting += 1
        while self._waiting >= self._backlog and not self._closing:
            self._pump = asyncio.get_running_loop().create_future()
            await self._pump  # (a stop meanwhile: drain gives the waiting ones back)

    async def _work(self) -> None:
        ready = self._ready
        while not self._closing:
            if not ready:
                sleeper = asyncio.get_running_loop().create_future()
                self._sleepers.append(sleeper)
                await sleeper
                continue
            delivery: Delivery | None = ready.popleft()
            while delivery is not None:
                self._started()
                self._inflight += 1
                try:
                    await self._process(delivery)
                except Exception as exc:  # the pipeline settles, never raises: keep working
                    _log.error(
                        "dispatch.failed", event_id=delivery.attributes.get("id"), error=repr(exc)
                    )
                finally:
                    self._finished()
                delivery = self._next_of(delivery.key)

    def _next_of(self, key: str | None) -> Delivery | None:
        """The key's next delivery, for the worker that ran its last one (None: the key
        has no delivery left, or the stop began: drain gives the rest back)."""
        if key is None:
            return None
        later = self._later[key]
        if not later:
            del self._later[key]
            return None
        return None if self._closing else later.popleft()

    def _started(self) -> None:
        """A waiting delivery starts: room for one more in the backlog."""
        self._waiting -= 1
        pump = self._pump
        if pump is not None and self._waiting < self._backlog:
            self._pump = None
            if not pump.done():
                pump.set_result(None)

    def _finished(self) -> None:
        """A delivery's processing ended (however it ended)."""
        self._inflight -= 1
        if not self._inflight and self._closing:
            self._idle.set()

    async def drain(self, timeout: float) -> None:
        """Let in-flight handlers finish; give waiting, unstarted deliveries back (nack).

        Every delivery ever submitted is settled exactly once: processed, or nacked here
        (also one whose `submit` was still waiting for room in the backlog)."""
        self._closing = True
        for waiter in (self._pump, *self._sleepers):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._pump = None
        self._sleepers.clear()
        if self._inflight:
            self._idle.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
                if self._workers:
                    await asyncio.gather(*self._workers)
        except TimeoutError:
            _log.warning("shutdown.timeout", timeout=timeout, inflight=self._inflight)
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        unstarted = [*self._ready, *(d for later in self._later.values() for d in later)]
        self._ready.clear()
        self._later.clear()
        self._waiting = 0
        for delivery in unstarted:
            await _quiet_nack(delivery)


async def _quiet_nack(delivery: Delivery) -> None:
    try:
        await delivery.nack()
    except Exception as exc:
        _log.warning("nack.failed", event_id=delivery.attributes.get("id"), error=repr(exc))
