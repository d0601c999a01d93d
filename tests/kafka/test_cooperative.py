"""Incremental cooperative rebalancing: a join or a leave next to a handler that holds an
event revokes only the partitions that change owner, so every partition that does not move
(of this subscription, of the group's other subscription, of every member) keeps being
handled while the held handler runs. Under the eager protocol every member revokes every
partition and the whole group waits for the held handler (up to `revoke_timeout`).

Two subscriptions of one group on two topics, three members; each scenario holds one event
for `HOLD` seconds of publishing, then prints and checks the longest gap in handling of
every partition (the stall), and per-key order over the whole run.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import itertools
from collections import defaultdict
from typing import Any

import pytest

from eventbus import Context, Event, EventBus
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka

#: seconds a handler holds its event while a member joins or leaves (the scenario's length)
HOLD = 10.0
#: the longest a partition that does not move may go without a handled event meanwhile
#: (a rebalance round on a busy 2-core machine); the eager protocol stalls them for HOLD
STALL_BOUND = 4.0


async def test_a_join_and_a_leave_next_to_a_held_handler_stall_only_what_moves(
    kafka: KafkaHarness,
) -> None:
    slow_stream, fast_stream, group = unique("coopa"), unique("coopb"), unique("g")

    class Slow(Event, stream=slow_stream, type="slow"):
        key: str
        n: int
        hold: bool = False

    class Fast(Event, stream=fast_stream, type="fast"):
        key: str
        n: int

    loop = asyncio.get_running_loop()
    #: (topic, partition, member, key, n, time) of every handled event
    handled: list[tuple[str, int, str, str, int, float]] = []
    release = asyncio.Event()
    holding: list[tuple[str, int]] = []  # (member, partition) of a held event

    def member(name: str) -> EventBus:
        bus = kafka.bus(partitions=4, revoke_timeout=30.0)

        @bus.subscribe(group=group, concurrency=8)
        async def slow(event: Slow, ctx: Context) -> None:
            partition = ctx.partition if ctx.partition is not None else -1
            if event.hold:
                holding.append((name, partition))
                await release.wait()
            handled.append((slow_stream, partition, name, event.key, event.n, loop.time()))

        @bus.subscribe(group=group, concurrency=8)
        async def fast(event: Fast, ctx: Context) -> None:
            partition = ctx.partition if ctx.partition is not None else -1
            handled.append((fast_stream, partition, name, event.key, event.n, loop.time()))

        return bus

    keys = [f"k{i}" for i in range(16)]
    publisher = kafka.bus(partitions=4)
    members = {name: member(name) for name in ("m1", "m2", "m3")}
    stop = asyncio.Event()
    sent = 0

    async def publish() -> None:  # a steady stream on both topics all along
        nonlocal sent
        while not stop.is_set():
            batch: list[tuple[Any, str]] = [(Slow(key=k, n=sent), k) for k in keys]
            batch += [(Fast(key=k, n=sent), k) for k in keys]
            await publisher.publish_many(batch)
            sent += 1
            await asyncio.sleep(0.05)

    def progress(since: float) -> set[tuple[str, int]]:
        return {(t, p) for t, p, _, _, _, at in handled if at >= since}

    every = {(t, p) for t in (slow_stream, fast_stream) for p in range(4)}
    holds: list[int] = []
    report: list[str] = []

    async def hold_and(change: str, action: Any) -> None:
        """Hold one event, then join or leave, publish for HOLD seconds, release; check
        the stall of every partition that did not move."""
        release.clear()
        holding.clear()
        holds.append(-len(holds) - 1)  # each held event is one of its own
        await publisher.publish(Slow(key="held", n=holds[-1], hold=True), key="held")
        await until(lambda: bool(holding), what="the held event to start")
        holder, held_partition = holding[0]
        before = owners(loop.time() - 2.0, loop.time())
        started = loop.time()
        task = asyncio.create_task(action())
        await asyncio.sleep(HOLD)  # the scenario: HOLD seconds of publishing while it holds
        released = loop.time()
        release.set()
        await task
        settled = loop.time()
        await until(
            lambda: len(progress(settled)) == len(every),
            timeout=60,
            what=f"every partition handled again after the {change}",
        )
        after = owners(settled, loop.time() + 1)
        moved = {tp for tp in every if before.get(tp) != after.get(tp)}
        gaps = stalls(started, released)
        waited = {  # the consumer that handed the held event's partition over waits for it
            (slow_stream, p)
            for (t, p), m in before.items()
            if t == slow_stream and m == holder and (slow_stream, held_partition) in moved
        }
        kept = every - moved - waited
        report.append(
            f"{change}: held on {holder}[{held_partition}]; moved {len(moved)} of "
            f"{len(every)} partitions; longest stall of a partition that stayed "
            f"{max((gaps[tp] for tp in kept), default=0.0):.2f} s, of one that moved "
            f"{max((gaps[tp] for tp in moved), default=0.0):.2f} s (held {HOLD:.0f} s)"
        )
        report.append(
            "  "
            + "; ".join(
                f"{t[:5]}[{p}] {before.get((t, p))}->{after.get((t, p))} "
                f"{gaps[(t, p)]:.1f}s at +{where[(t, p)]:.1f}s"
                for t, p in sorted(every)
            )
        )
        for tp in sorted(kept):
            assert gaps[tp] < STALL_BOUND, (
                f"{tp} did not move in the {change} but stalled {gaps[tp]:.1f} s: {report}"
            )
        assert kept, f"no partition stayed with its owner in the {change}"

    def owners(since: float, until_: float) -> dict[tuple[str, int], str]:
        found: dict[tuple[str, int], str] = {}
        for t, p, m, _, _, at in handled:
            if since <= at <= until_:
                found[(t, p)] = m
        return found

    where: dict[tuple[str, int], float] = {}

    def stalls(start: float, end: float) -> dict[tuple[str, int], float]:
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        for t, p, _, _, _, at in handled:
            if start <= at <= end:
                times[(t, p)].append(at)
        gaps: dict[tuple[str, int], float] = {}
        for tp in every:
            points = [start, *sorted(times[tp]), end]
            gaps[tp] = max(b - a for a, b in itertools.pairwise(points))
            at = max(itertools.pairwise(points), key=lambda ab: ab[1] - ab[0])[0]
            where[tp] = at - start
        return gaps

    async with publisher:
        publishing = asyncio.create_task(publish())
        try:
            await members["m1"].start()
            await members["m2"].start()
            await until(
                lambda: {h[2] for h in handled} == {"m1", "m2"},
                timeout=60,
                what="both members handling",
            )
            await hold_and("join", members["m3"].start)
            leaving = next(m for m in ("m1", "m2", "m3") if m != holding[0][0])
            await hold_and("leave", members[leaving].stop)
            stop.set()
            await publishing
            total = sent * len(keys) * 2 + len(holds)
            await until(
                lambda: len({(t, k, n) for t, _, _, k, n, _ in handled}) == total,
                timeout=120,
                what=f"all {total} events",
            )
        finally:
            stop.set()
            release.set()
            await asyncio.gather(publishing, return_exceptions=True)
            for bus in members.values():
                await bus.stop()
    print("\n" + "\n".join(report))
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    for topic, _, _, key, n, _ in handled:
        by_key[(topic, key)].append(n)
    by_key.pop((slow_stream, "held"), None)
    for topic_key, ns in by_key.items():  # in order, a record redone after a move at most
        highest = -1
        for n in ns:
            assert n <= highest + 1, f"order broken for {topic_key}: {ns}"
            highest = max(highest, n)
