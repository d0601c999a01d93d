"""Per-key order under concurrency: the dispatcher's lanes, property-tested."""

import asyncio
import random
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus.dispatch import Dispatcher
from eventbus.protocol import Delivery


class FakeDelivery(Delivery):
    async def nack(self) -> None:
        nacked.append(self.attributes["n"])


nacked: list[str] = []


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=120),
    concurrency=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_same_key_is_processed_in_submission_order(
    keys: list[str], concurrency: int, seed: int
) -> None:
    rng = random.Random(seed)
    seen: dict[str, list[int]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)

    async def process(d: Delivery) -> None:
        assert d.key is not None
        running[d.key] += 1
        assert running[d.key] == 1, "two events of one key ran at once"
        await asyncio.sleep(rng.random() / 2000)
        seen[d.key].append(int(d.attributes["n"]))
        running[d.key] -= 1

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency)
        for n, key in enumerate(keys):
            await dispatcher.submit(
                FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key=key)
            )
        while sum(map(len, seen.values())) < len(keys):  # noqa: ASYNC110 - polling a dict
            await asyncio.sleep(0.001)
        await dispatcher.drain(5)

    asyncio.run(main())
    for key in set(keys):
        expected = [n for n, k in enumerate(keys) if k == key]
        assert seen[key] == expected


def test_drain_gives_back_unstarted_and_waits_for_inflight() -> None:
    nacked.clear()
    done: list[str] = []
    gate = asyncio.Event()

    async def process(d: Delivery) -> None:
        await gate.wait()
        done.append(d.attributes["n"])

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency=2, lane_buffer=10)
        for n in range(6):
            await dispatcher.submit(
                FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key=None)
            )
        await asyncio.sleep(0.01)  # one in flight per lane, the rest queued
        draining = asyncio.create_task(dispatcher.drain(5))
        await asyncio.sleep(0.01)
        assert not draining.done(), "drain returned while handlers were running"
        gate.set()
        await draining
        # a delivery submitted after drain began is given back at once
        await dispatcher.submit(FakeDelivery(stream="s", body=b"", attributes={"n": "late"}))

    asyncio.run(main())
    assert sorted(done) == ["0", "1"]
    assert sorted(nacked) == ["2", "3", "4", "5", "late"]


def test_a_submit_waiting_on_a_full_lane_is_given_back_at_drain() -> None:
    """Every submitted delivery is settled exactly once, even one whose `submit` was
    blocked on a full lane when the stop began."""
    nacked.clear()
    done: list[str] = []
    gate = asyncio.Event()

    async def process(d: Delivery) -> None:
        await gate.wait()
        done.append(d.attributes["n"])

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency=2, lane_buffer=1)
        submitted = [
            FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key="same")
            for n in range(5)
        ]
        feeder = asyncio.create_task(_feed(dispatcher, submitted))
        await asyncio.sleep(0.01)  # one in flight, one queued, the feeder blocked on put
        draining = asyncio.create_task(dispatcher.drain(5))
        await asyncio.sleep(0.01)
        gate.set()
        await draining
        await feeder

    async def _feed(dispatcher: Dispatcher, items: list[FakeDelivery]) -> None:
        for item in items:
            await dispatcher.submit(item)

    asyncio.run(main())
    assert done == ["0"]
    assert sorted(nacked) == ["1", "2", "3", "4"]
    assert len(done) + len(nacked) == 5
