"""Static group membership (`instance_id`, KIP-345): a member that restarts within its
session takes its partitions back at once, without a rebalance; the other member keeps
its own partitions throughout. Two processes given one name fence each other, and the
health of the fenced one says so.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import time
from collections import defaultdict

import pytest

from eventbus import Context, Event, EventBus
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka

#: the group's session: a member restarted without static membership would get its
#: partitions back only after the coordinator gave up on the old one (this long)
SESSION_MS = 60_000
#: how long the restarted member may take to start (join, assignment) on a loaded machine:
#: well under the session
RESTART_BOUND_S = 20.0


async def test_a_restarted_static_member_takes_its_partitions_back_without_a_rebalance(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("static"), unique("g")

    class Tick(Event, stream=stream, type="tick"):
        n: int

    #: partitions each member instance handled (name -> partitions)
    handled: defaultdict[str, set[int]] = defaultdict(set)

    def member(name: str, instance: str) -> EventBus:
        bus = kafka.bus(
            partitions=4,
            instance_id=instance,
            consumer_config={"session.timeout.ms": SESSION_MS},
        )

        @bus.subscribe(group=group)
        async def tick(event: Tick, ctx: Context) -> None:
            assert ctx.partition is not None
            handled[name].add(ctx.partition)

        return bus

    publisher = kafka.bus(partitions=4)
    sent = 0

    async def publish(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            await publisher.publish(Tick(n=sent), key=f"k{sent % 16}")
            sent += 1

    first, other = member("first", "a"), member("other", "b")
    async with publisher, other:
        async with first:
            await publish(200)
            await until(lambda: len(handled["first"] | handled["other"]) == 4, 60, "all handled")
        mine, theirs = set(handled["first"]), set(handled["other"])
        assert mine and theirs and not mine & theirs, (mine, theirs)
        # stopped (as a crash would): a static member does not leave; its partitions wait
        started = time.monotonic()
        again = member("again", "a")
        async with again:
            took = time.monotonic() - started
            handled["other"].clear()
            await publish(200)
            await until(lambda: handled["again"] == mine, 60, "the same partitions back")
            await until(lambda: handled["other"] == theirs, 60, "the other member's")
        print(f"static member restarted with its partitions in {took:.1f}s (session 60 s)")
        assert took < RESTART_BOUND_S, f"restart took {took:.1f}s: it waited for a rebalance"
        assert handled["other"] == theirs, "the other member's assignment changed"


async def test_two_members_given_one_instance_id_fence_each_other(kafka: KafkaHarness) -> None:
    stream, group = unique("static"), unique("g")

    class Tick(Event, stream=stream, type="tick"):
        n: int

    def member() -> EventBus:
        bus = kafka.bus(partitions=2, instance_id="twin")

        @bus.subscribe(group=group)
        async def tick(event: Tick) -> None:
            pass

        return bus

    older, newer = member(), member()
    async with older, newer:
        await until(lambda: not older.health().ok, 60, "the older twin fenced")
        health = older.health()
        print(f"fenced twin's health: {health.reasons()}")
        [subscription] = health.subscriptions
        assert not subscription.attached
        assert "fenced by other consumer with same group.instance.id" in subscription.detail
        assert newer.health().ok, newer.health().reasons()
