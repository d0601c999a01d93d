"""memory:// specifics beyond the conformance suite: members joining and leaving while
events flow (partition hand-over keeps per-key order), thread-safe publishing."""

import asyncio
import threading
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus import Event, EventBus, SyncPublisher
from eventbus.testing.conformance import unique


class Step(Event, stream="steps", type="step.done"):
    key: str
    n: int


async def test_members_joining_and_leaving_keep_per_key_order_and_lose_nothing() -> None:
    url = f"memory://{unique()}"
    seen: dict[str, list[int]] = defaultdict(list)

    def member() -> EventBus:
        bus = EventBus(url)

        @bus.subscribe(group="g", concurrency=3)
        async def handle(event: Step) -> None:
            await asyncio.sleep(0.0005)
            seen[event.key].append(event.n)

        return bus

    keys = [f"k{i}" for i in range(12)]
    first, second, third = member(), member(), member()
    async with first:
        await first.publish_many([(Step(key=k, n=n), k) for n in range(50) for k in keys])
        await second.start()  # joins mid-stream: partitions are handed over
        await asyncio.sleep(0.05)
        await third.start()
        await asyncio.sleep(0.05)
        await second.stop()  # leaves mid-stream: its unsettled events go back
        await first.publish_many([(Step(key=k, n=n), k) for n in range(50, 100) for k in keys])
        for _ in range(2000):
            if sum(map(len, seen.values())) >= 1200:
                break
            await asyncio.sleep(0.01)
        await third.stop()
    for key in keys:
        assert seen[key] == list(range(100)), key


async def test_sync_publishers_in_many_threads() -> None:
    url = f"memory://{unique()}"
    got: set[tuple[str, int]] = set()
    bus = EventBus(url)

    @bus.subscribe(group="g")
    async def handle(event: Step) -> None:
        got.add((event.key, event.n))

    def work(t: int) -> None:
        with SyncPublisher(url) as publisher:
            for n in range(200):
                publisher.publish(Step(key=f"t{t}", n=n), key=f"t{t}")

    async with bus:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        await asyncio.gather(*(asyncio.to_thread(thread.join) for thread in threads))
        for _ in range(1000):
            if len(got) == 1600:
                break
            await asyncio.sleep(0.01)
    assert got == {(f"t{t}", n) for t in range(8) for n in range(200)}


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=80),
    concurrency=st.integers(1, 5),
    partitions=st.integers(1, 6),
    failing=st.sets(st.integers(0, 79), max_size=5),
)
def test_bus_keeps_order_per_key_with_retries(
    keys: list[str], concurrency: int, partitions: int, failing: set[int]
) -> None:
    """Property: whatever the keys, concurrency, partition count and transient failures,
    each key's events are handled exactly once each, in publish order."""
    from eventbus import Context, RetryPolicy

    seen: dict[str, list[int]] = defaultdict(list)
    bus = EventBus(f"memory://{unique()}", partitions=partitions)

    @bus.subscribe(group="g", concurrency=concurrency, retry=RetryPolicy(attempts=2, backoff=0))
    async def handle(event: Step, ctx: Context) -> None:
        if event.n in failing and ctx.attempt == 1:
            raise RuntimeError("transient")
        seen[event.key].append(event.n)

    async def main() -> None:
        async with bus:
            await bus.publish_many([(Step(key=k, n=n), k) for n, k in enumerate(keys)])
            for _ in range(1000):
                if sum(map(len, seen.values())) >= len(keys):
                    break
                await asyncio.sleep(0.005)

    asyncio.run(main())
    for key in set(keys):
        assert seen[key] == [n for n, k in enumerate(keys) if k == key]
