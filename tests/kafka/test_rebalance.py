"""Rebalances while consuming: a second member joins, then the first leaves; nothing is
lost and the events of each key are handled in order."""

import asyncio
from collections import defaultdict

import pytest

from eventbus import Event, EventBus
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


async def test_member_joins_then_one_leaves_while_consuming(kafka: KafkaHarness) -> None:
    stream, group = unique("rebalance"), unique("g")

    class Step(Event, stream=stream, type="step"):
        key: str
        n: int

    seen: list[tuple[str, int, str]] = []

    def member(name: str) -> EventBus:
        bus = kafka.bus(partitions=6)

        @bus.subscribe(group=group, concurrency=3)
        async def handle(event: Step) -> None:
            await asyncio.sleep(0.001)
            seen.append((event.key, event.n, name))

        return bus

    keys = [f"key-{i}" for i in range(24)]
    publisher = kafka.bus(partitions=6)
    first, second = member("first"), member("second")
    enough = asyncio.Event()
    rounds: list[int] = []

    async def publish_until_enough() -> None:  # a steady stream while members come and go
        n = 0
        while not enough.is_set():
            await publisher.publish_many([(Step(key=k, n=n), k) for k in keys])
            rounds.append(n)
            n += 1
            await asyncio.sleep(0.02)

    def handled_by(name: str, since: int) -> int:
        return sum(m == name for *_, m in seen[since:])

    async with publisher:
        await first.start()
        publishing = asyncio.create_task(publish_until_enough())
        try:
            await until(lambda: len(seen) >= 400, timeout=60, what="progress of the first member")
            await second.start()  # joins: the partitions are split
            joined_at = len(seen)
            await until(
                lambda: (
                    handled_by("second", joined_at) > 100 and handled_by("first", joined_at) > 100
                ),
                timeout=60,
                what="both members handling events",
            )
            await first.stop()  # leaves: the second member takes every partition
            left_at = len(seen)
            await until(
                lambda: handled_by("second", left_at) > 400, timeout=60, what="the second alone"
            )
            enough.set()
            await publishing
            total = len(keys) * len(rounds)
            await until(
                lambda: len({(k, n) for k, n, _ in seen}) == total,
                timeout=120,
                what=f"all {total} events",
            )
        finally:
            enough.set()
            await asyncio.gather(publishing, return_exceptions=True)
            await first.stop()
            await second.stop()
    assert {(k, n) for k, n, _ in seen} == {(k, n) for k in keys for n in rounds}
    assert {m for *_, m in seen[left_at:]} == {"second"}, "the member that left kept handling"
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, n, _member in seen:
        by_key[key].append(n)
    for key, ns in by_key.items():
        # in order: n is never handled before n-1 was; at-least-once allows a member that
        # takes a partition over to redo records after the last commit (never skip ahead)
        highest = -1
        for n in ns:
            assert n <= highest + 1, f"order broken for {key}: {n} after {highest}: {ns}"
            highest = max(highest, n)
