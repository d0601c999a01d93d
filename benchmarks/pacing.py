"""Publishing at a fixed rate, shared by every latency scenario."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def paced(
    count: int, rate: float, send: Callable[[int], Awaitable[None]], window: int = 256
) -> float:
    """Start `send(i)` for i in range(count) at `rate` per second, up to `window` sends in
    flight (a confirmed publish takes a round trip, so awaiting each one in turn could not
    hold 10k/s); return the seconds taken until every send finished.

    Sleeps only when more than a millisecond ahead of schedule (the loop's timer
    resolution), so the rate holds on average without busy-waiting.
    """
    limit = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await send(i)
        except Exception as exc:
            errors.append(exc)
        finally:
            limit.release()

    start = time.perf_counter()
    for i in range(count):
        ahead = start + i / rate - time.perf_counter()
        if ahead > 0.001:
            await asyncio.sleep(ahead)
        await limit.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    if errors:
        raise errors[0]
    return time.perf_counter() - start


async def wait_for_count(get: Callable[[], int], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while get() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {get()} of {count} events arrived within {timeout}s")
        await asyncio.sleep(0.001)
