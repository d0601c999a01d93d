"""Per-key order under concurrency: the dispatcher's workers, property-tested."""

import asyncio
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eventbus.dispatch import Dispatcher
from eventbus.protocol import Delivery


class FakeDelivery(Delivery):
    async def nack(self) -> None:
        nacked.append(self.attributes["n"])


nacked: list[str] = []


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=120),
    concurrency=st.integers(1, 6),
    feeders=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_same_key_is_processed_in_submission_order(
    keys: list[str], concurrency: int, feeders: int, seed: int
) -> None:
    """One key's events never run at once, and run in the order one caller submitted
    them. The contract asks for one caller at a time (the adapter's pump); the workers keep
    this with two callers too (inline processing, `concurrency=1`, does not)."""
    assume(feeders == 1 or concurrency > 1)
    rng = random.Random(seed)
    seen: dict[str, list[int]] = defaultdict(list)
    running: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []

    async def process(d: Delivery) -> None:
        assert d.key is not None
        running[d.key] += 1
        if running[d.key] > 1:
            overlaps.append(d.key)
        await asyncio.sleep(rng.random() / 2000)
        seen[d.key].append(int(d.attributes["n"]))
        running[d.key] -= 1

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency)
        items = [
            FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key=key)
            for n, key in enumerate(keys)
        ]
        await asyncio.gather(*(_feed(dispatcher, items[f::feeders]) for f in range(feeders)))
        await until(lambda: sum(map(len, seen.values())) == len(keys))
        await dispatcher.drain(5)

    asyncio.run(main())
    assert not overlaps, "two events of one key ran at once"
    for key in set(keys):
        for feeder in range(feeders):
            expected = [n for n, k in enumerate(keys) if k == key and n % feeders == feeder]
            assert [n for n in seen[key] if n % feeders == feeder] == expected


def test_drain_gives_back_unstarted_and_waits_for_inflight() -> None:
    nacked.clear()
    process, done, gate = gated()

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency=2, backlog=10)
        submitted = [  # two keys: one of each in flight, the rest waiting behind them
            FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key="ab"[n % 2])
            for n in range(6)
        ]
        for item in submitted:
            await dispatcher.submit(item)
        await until(lambda: dispatcher.in_flight == 2)
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


@pytest.mark.parametrize(("keys", "running"), [(["a", None, "c", "d", "e"], 2), (["same"] * 5, 1)])
def test_a_submit_waiting_for_room_returns_at_drain_and_its_delivery_is_given_back(
    keys: list[str | None], running: int
) -> None:
    """Every submitted delivery is settled exactly once, also the one whose `submit` was
    waiting for room in the backlog when the stop began (two keys running and two waiting;
    or one key running and two of it waiting behind)."""
    nacked.clear()
    process, done, gate = gated()

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency=2, backlog=2)
        submitted = [
            FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key=key)
            for n, key in enumerate(keys)
        ]
        feeder = asyncio.create_task(_feed(dispatcher, submitted))
        await until(lambda: dispatcher.in_flight == running and dispatcher.waiting == 2)
        await asyncio.sleep(0.01)
        assert not feeder.done(), "submit returned with two waiting to start (backlog 2)"
        draining = asyncio.create_task(dispatcher.drain(5))
        await feeder  # returns without waiting for the handlers; the rest is given back
        assert sorted(nacked) == [str(n) for n in range(running + 2, len(keys))]
        gate.set()
        await draining

    asyncio.run(main())
    assert sorted(done) == [str(n) for n in range(running)]
    assert sorted(nacked) == [str(n) for n in range(running, len(keys))]


def gated() -> tuple[Callable[[Delivery], Awaitable[None]], list[str], asyncio.Event]:
    """A process that waits for the gate, the numbers it finished, and the gate."""
    done: list[str] = []
    gate = asyncio.Event()

    async def process(d: Delivery) -> None:
        await gate.wait()
        done.append(d.attributes["n"])

    return process, done, gate


@pytest.mark.parametrize("concurrency", [2, 4])
def test_a_held_handler_stalls_its_own_key_only(concurrency: int) -> None:
    """Every other key goes on, however many there are: none waits behind the held one
    (on lanes chosen by crc32, "b" and "k1" shared the lane of "held")."""
    release = asyncio.Event()
    done: list[str] = []

    async def process(d: Delivery) -> None:
        if d.key == "held":
            await release.wait()
        done.append(f"{d.key}:{d.attributes['n']}")

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency, backlog=2)
        await dispatcher.submit(
            FakeDelivery(stream="s", body=b"", attributes={"n": "0"}, key="held")
        )
        others = [
            FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key=key)
            for n in range(20)
            for key in ("a", "b", "k1", None)
        ]
        await asyncio.wait_for(_feed(dispatcher, others), 5)
        await until(lambda: len(done) == len(others))
        assert "held:0" not in done
        release.set()
        await until(lambda: "held:0" in done)
        await dispatcher.drain(5)

    asyncio.run(main())


def test_distinct_keys_run_as_many_at_a_time_as_there_are_workers() -> None:
    """Four keys on four workers run all at once (on crc32 lanes "held" and "b" shared
    one)."""
    running: set[str] = set()
    most = 0
    release = asyncio.Event()

    async def process(d: Delivery) -> None:
        nonlocal most
        assert d.key is not None
        running.add(d.key)
        most = max(most, len(running))
        await release.wait()
        running.discard(d.key)

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency=4)
        for key in ("held", "b", "d", "e"):
            await dispatcher.submit(FakeDelivery(stream="s", body=b"", attributes={}, key=key))
        await until(lambda: len(running) == 4)
        release.set()
        await dispatcher.drain(5)

    asyncio.run(main())
    assert most == 4


def test_a_worker_outlives_a_process_that_raises() -> None:
    done: list[str] = []

    async def process(d: Delivery) -> None:
        if d.attributes["n"] == "0":
            raise RuntimeError("a pipeline bug")
        done.append(d.attributes["n"])

    async def main() -> None:
        dispatcher = Dispatcher(process, concurrency=2)
        await _feed(
            dispatcher,
            [
                FakeDelivery(stream="s", body=b"", attributes={"n": str(n)}, key="k")
                for n in range(3)
            ],
        )
        await until(lambda: len(done) == 2)
        await dispatcher.drain(5)

    asyncio.run(main())
    assert done == ["1", "2"]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling plain state
            await asyncio.sleep(0.001)


async def _feed(dispatcher: Dispatcher, items: list[FakeDelivery]) -> None:
    for item in items:
        await dispatcher.submit(item)
