"""Publishing at a fixed rate, shared by every latency scenario."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def paced(count: int, rate: float, send: Callable[[int], Awaitable[None]]) -> float:
    """Call `send(i)` for i in range(count) at `rate` per second; return the seconds taken.

    Sleeps only when more than a millisecond ahead of schedule (the loop's timer
    resolution), so the rate holds on average without busy-waiting.
    """
    start = time.perf_counter()
    for i in range(count):
        ahead = start + i / rate - time.perf_counter()
        if ahead > 0.001:
            await asyncio.sleep(ahead)
        await send(i)
    return time.perf_counter() - start


async def wait_for_count(get: Callable[[], int], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while get() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {get()} of {count} events arrived within {timeout}s")
        await asyncio.sleep(0.001)
