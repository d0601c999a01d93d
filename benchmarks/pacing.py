"""Publishing at a fixed rate, shared by every latency scenario."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial

from .core import Runner, Scenario, Stopwatch, metrics_of
from .workload import Latencies

#: seconds of paced, unmeasured events before a latency run measures: the run's new topic
#: or queue, connections and consumers reach their steady state first (the first 20-40 ms
#: of a new Kafka topic wait 20-35 ms for acknowledgements, which alone moves a p99)
WARM_UP_SECONDS = 0.5


def warm_up_count(rate: float | None) -> int:
    """The events of a run's warm-up: one through the whole path (connections, metadata,
    the consumer's first fetch), or, for a run at `rate`, `WARM_UP_SECONDS` of them at that
    rate."""
    return 1 if rate is None else max(1, int(rate * WARM_UP_SECONDS))


def pause(ahead: float) -> float:
    """Seconds a paced sender sleeps when it is `ahead` seconds ahead of its schedule:
    nothing when it is not ahead, else whole milliseconds, rounded up, as the event loop
    waits (its selector rounds a timer's timeout up to the millisecond). Every paced
    sender sleeps this, the asyncio ones and the raw clients' threads alike, so all send
    on one schedule: at 1k/s one event a millisecond, at 10k/s about ten after each
    millisecond's sleep.

    (A sender that slept only when more than a millisecond ahead sent its events at 1k/s
    in pairs, two milliseconds apart: the second of each pair then waited for the first
    to be handled, which measured queueing behind a burst, not the latency at 1k/s.)"""
    return math.ceil(ahead * 1000) / 1000 if ahead > 0 else 0.0


async def paced(
    count: int, rate: float, send: Callable[[int], Awaitable[None]], window: int = 256
) -> float:
    """Start `send(i)` for i in range(count) at `rate` per second, up to `window` sends in
    flight (a confirmed publish takes a round trip, so awaiting each one in turn could not
    hold 10k/s); return the seconds taken until every send finished.

    Sleeps `pause` whenever ahead of schedule, so the rate holds without busy-waiting.
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
        wait = pause(start + i / rate - time.perf_counter())
        if wait:
            await asyncio.sleep(wait)
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


async def warm_up(
    count: int, rate: float, send: Callable[[int], Awaitable[None]], latencies: Latencies
) -> None:
    """`count` unmeasured events sent at `rate`; returns once all were handled, with
    `latencies` emptied (a consumer's own loop: `drive` warms a broker run up)."""
    await paced(count, rate, send)
    await wait_for_count(lambda: len(latencies), count, 60)
    latencies.clear()


async def drive(
    count: int,
    rate: float | None,
    consume: bool,
    publish_all: Callable[[], Awaitable[None]],
    publish_one: Callable[[int], Awaitable[None]],
    latencies: Latencies,
    groups: int = 1,
) -> dict[str, float]:
    """One run of a broker scenario, the same for every implementation: a warm-up
    (`warm_up_count`), then publish as fast as possible (`rate=None`, throughput) or at
    `rate` (latency), then wait until `count` events were handled (`latencies` grows by
    one per handled event).

    With several consumer `groups`, each handles every event: the run waits for, and
    counts, `count * groups` deliveries."""
    # warm-up, as for every implementation, not measured
    warm = warm_up_count(rate)
    if rate is None:
        await publish_one(0)
    else:
        await paced(warm, rate, publish_one)
    if consume:
        await wait_for_count(lambda: len(latencies), warm * groups, 60)
        latencies.clear()
    watch = Stopwatch()
    if rate is None:
        await publish_all()
    else:
        await paced(count, rate, publish_one)
    published = watch.lap()
    if not consume:
        return metrics_of(count, published, watch=watch.stop())
    await wait_for_count(lambda: len(latencies), count * groups, 300)
    watch.stop()
    return metrics_of(count * groups, published if rate else watch.wall, latencies, watch)


def broker_scenarios(
    broker: str,
    impls: dict[str, Callable[[int, float | None, bool], Awaitable[dict[str, float]]]],
    throughput_count: int,
    latency_counts: dict[int, int],
    publish_description: str,
    e2e_description: str,
    variant: str = "",
) -> list[Scenario]:
    """publish, end-to-end and latency-at-rate scenarios of one broker; a `variant`
    ("(classic queue)") is appended to their names."""

    def runners(count: int, rate: float | None, consume: bool) -> dict[str, Runner]:
        return {name: partial(fn, count, rate, consume) for name, fn in impls.items()}

    suffix = f" {variant}" if variant else ""
    result = [
        Scenario(
            broker, f"publish{suffix}", publish_description, runners(throughput_count, None, False)
        ),
        Scenario(
            broker, f"end-to-end{suffix}", e2e_description, runners(throughput_count, None, True)
        ),
    ]
    for rate, count in latency_counts.items():
        result.append(
            Scenario(
                broker,
                f"latency@{rate // 1000}k/s{suffix}",
                f"publish -> handler latency at {rate} events/s",
                runners(count, rate, True),
                metric="p99_ms",
                higher_is_better=False,
            )
        )
    return result
