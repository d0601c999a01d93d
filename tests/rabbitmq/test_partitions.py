"""`partitions=N`: members of a group share the partition queues (scale out) while every
key keeps its order, through joins, graceful leaves and killed members.

Who is active on which queue is read from the broker (`rabbitmqctl list_consumers`), not
from the adapter's own bookkeeping.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from eventbus import Context, RetryPolicy
from eventbus.adapters.rabbitmq.assignment import assign
from eventbus.testing.conformance import make_events, until

from .conftest import Broker
from .support import active_members, close_connections_named

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parents[2]


async def balanced(
    stream: str, group: str, partitions: int, members: int, timeout: float = 60
) -> dict[str, str]:
    """Wait until every partition queue has exactly one active consumer, spread over
    `members` distinct members as evenly as possible; -> queue -> member id."""
    deadline = time.monotonic() + timeout
    while True:
        active = await asyncio.to_thread(active_members, stream, group, partitions)
        if all(len(owners) == 1 for owners in active.values()):
            owner = {queue: next(iter(owners)) for queue, owners in active.items()}
            counts = Counter(owner.values())
            if len(counts) == members and max(counts.values()) - min(counts.values()) <= 1:
                return owner
        if time.monotonic() > deadline:
            raise AssertionError(f"not balanced over {members} members after {timeout}s: {active}")
        await asyncio.sleep(0.2)


def first_occurrences(values: list[Any]) -> list[Any]:
    """Handling order with redeliveries (at-least-once duplicates) taken out."""
    return list(dict.fromkeys(values))


def test_assignment_is_balanced_deterministic_and_sticky() -> None:
    members = [f"host.{i}.{i * 7919:08x}" for i in range(6)]
    for count in range(1, 7):
        for partitions in (1, 4, 7, 16):
            owned = assign(members[:count], partitions)
            sizes = [len(parts) for parts in owned.values()]
            assert sorted(p for parts in owned.values() for p in parts) == list(range(partitions))
            assert max(sizes) - min(sizes) <= 1
            assert owned == assign(reversed(members[:count]), partitions)
    before, after = assign(members[:4], 16), assign(members[:5], 16)
    moved = [
        p
        for p in range(16)
        if next(m for m, ps in before.items() if p in ps)
        != next(m for m, ps in after.items() if p in ps)
    ]
    assert len(moved) <= 5  # about what the newcomer takes (3 or 4), not a reshuffle
    assert set(moved) >= after[members[4]]


async def test_four_members_each_take_one_partition_and_keep_key_order(
    rabbit: Broker,
) -> None:
    ev = make_events(rabbit.stream())
    seen: dict[str, list[int]] = defaultdict(list)
    handled_by: dict[int, int] = Counter()
    members_of: dict[str, set[int]] = defaultdict(set)
    buses = []
    for member in range(4):
        bus = rabbit.bus()

        def make(m: int) -> Any:
            async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
                await asyncio.sleep(0)
                seen[event.order_id].append(event.n)
                handled_by[m] += 1
                members_of[event.order_id].add(m)

            return handle

        bus.add_handler(make(member), group="scaled", partitions=4, concurrency=4)
        buses.append(bus)
    for bus in buses:
        await bus.start()
    await balanced(ev.stream, "scaled", 4, members=4)
    keys = [f"key-{k}" for k in range(50)]
    await buses[0].publish_many(
        [(ev.Created(order_id=key, n=n), key) for n in range(20) for key in keys]
    )
    await until(lambda: sum(map(len, seen.values())) >= 1000, timeout=60, what="1000 events")
    for bus in buses:
        await bus.stop()
    for key in keys:
        assert seen[key] == list(range(20)), f"order broken for {key}: {seen[key]}"
        assert len(members_of[key]) == 1, f"{key} was handled by members {members_of[key]}"
    assert sorted(handled_by) == [0, 1, 2, 3], f"not every member worked: {handled_by}"


async def test_keyless_events_spread_over_the_partitions(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    subscriber = rabbit.bus()

    @subscriber.subscribe(group="spread", partitions=4)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        raise AssertionError("nobody consumes in this test")

    await subscriber.start()  # declares the group's topology
    await subscriber.stop()  # the queues stay and fill up: their depths tell where events went
    publisher = rabbit.bus()
    async with publisher:
        await publisher.publish_many([ev.Created(order_id=f"o{i}") for i in range(200)])
        await publisher.publish_many([(ev.Created(order_id=f"k{i}"), "one-key") for i in range(20)])
    depths = await asyncio.to_thread(_queue_depths, ev.stream, "spread", 4)
    assert sum(depths) == 220
    assert all(depth >= 10 for depth in depths), f"keyless events not spread: {depths}"
    assert max(depths) >= 20 + 10, f"the keyed events did not stay together: {depths}"


def _queue_depths(stream: str, group: str, partitions: int) -> list[int]:
    from .support import raw_connection

    connection = raw_connection()
    try:
        channel = connection.channel()
        return [
            int(
                channel.queue_declare(f"{stream}.{group}.{i}", passive=True).method.message_count
                or 0
            )
            for i in range(partitions)
        ]
    finally:
        connection.close()


async def test_graceful_leave_and_join_mid_stream_keep_everything_in_order(
    rabbit: Broker,
) -> None:
    ev = make_events(rabbit.stream())
    seen: dict[str, list[int]] = defaultdict(list)
    handled_by: dict[str, int] = Counter()
    # a backlog on every partition whatever the machine's speed: handlers start once all
    # is published, and the members that stay hold theirs while b leaves and d joins
    published = asyncio.Event()
    flowing = asyncio.Event()
    flowing.set()

    def member(name: str) -> Any:
        bus = rabbit.bus()

        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            await published.wait()
            if name != "b":
                await flowing.wait()
            await asyncio.sleep(0.01)
            seen[event.order_id].append(event.n)
            handled_by[name] += 1

        bus.add_handler(handle, group="g", partitions=4, concurrency=4)
        return bus

    a, b, c = member("a"), member("b"), member("c")
    for bus in (a, b, c):
        await bus.start()
    await balanced(ev.stream, "g", 4, members=3)
    keys = [f"key-{k}" for k in range(50)]
    await a.publish_many([(ev.Created(order_id=key, n=n), key) for n in range(60) for key in keys])
    published.set()
    await until(lambda: sum(handled_by.values()) >= 300, timeout=60, what="some progress")
    # with a backlog on every partition: b leaves (its in-flight events finish, the rest is
    # handed over), then d joins (a and c hand partitions over with events in flight)
    flowing.clear()
    await b.stop()
    d = member("d")
    await d.start()
    flowing.set()
    await balanced(ev.stream, "g", 4, members=3)
    # the backlog may have drained before d got its partitions (a busy machine): more
    # events after the hand-over reach d whatever the timing, and continue every key
    await a.publish_many(
        [(ev.Created(order_id=key, n=n), key) for n in range(60, 80) for key in keys]
    )
    await until(lambda: sum(handled_by.values()) >= 4000, timeout=120, what="4000 events")
    for key in keys:
        assert seen[key] == list(range(80)), f"order broken or events lost for {key}: {seen[key]}"
    assert handled_by["b"] > 0 and handled_by["d"] > 0, handled_by


async def test_killed_member_loses_nothing_and_its_partition_moves(
    rabbit: Broker, tmp_path: Path
) -> None:
    ev = make_events(rabbit.stream())
    log = tmp_path / "handled.log"
    log.touch()
    killed = _start_member(ev.stream, log, partitions=3)
    seen: dict[str, list[str]] = defaultdict(list)
    try:
        assert killed.stderr is not None
        ready = await asyncio.wait_for(
            asyncio.to_thread(_wait_for_line, killed.stderr, "bus.started"), 60
        )
        assert ready, "the member process did not start"
        survivors = [rabbit.bus(), rabbit.bus()]
        for bus in survivors:

            async def handle(event: ev.Created, ctx: Any) -> None:  # type: ignore[name-defined]
                seen[ctx.envelope.key].append(event.order_id)

            bus.add_handler(handle, group="workers", partitions=3)
            await bus.start()
        await balanced(ev.stream, "workers", 3, members=3)
        keys = [f"k{k}" for k in range(30)]
        # in the killed member's partition, the first "hang" blocks its handler
        events = [(ev.Created(order_id=f"{key}:{n}"), key) for n in range(5) for key in keys]
        events += [(ev.Created(order_id="hang"), key) for key in keys]
        events += [(ev.Created(order_id=f"{key}:{n}"), key) for n in range(5, 10) for key in keys]
        await survivors[0].publish_many(events)
        await until(lambda: "hanging" in log.read_text(), timeout=60, what="the hang")
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        everything = {f"{key}:{n}" for key in keys for n in range(10)}

        def handled() -> set[str]:
            return {i for ids in seen.values() for i in ids} | set(log.read_text().split())

        await until(lambda: everything <= handled(), timeout=120, what="every event")
        await balanced(ev.stream, "workers", 3, members=2)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait(30)
    in_killed = defaultdict(list)
    for line in log.read_text().split():
        if line != "hanging":
            in_killed[line.split(":")[0]].append(line)
    assert in_killed, "the killed member handled nothing before the kill"
    for key in keys:
        timeline = first_occurrences(in_killed[key] + seen[key])
        expected = [
            *(f"{key}:{n}" for n in range(5)),
            "hang",
            *(f"{key}:{n}" for n in range(5, 10)),
        ]
        assert timeline == expected, f"order broken for {key}: {timeline}"


async def test_member_whose_connection_drops_rejoins_and_loses_nothing(
    rabbit: Broker,
) -> None:
    ev = make_events(rabbit.stream())
    handled: dict[str, set[str]] = defaultdict(set)
    name = f"drop-{ev.stream}"
    buses = {"steady": rabbit.bus(), "dropped": rabbit.bus(connection_name=name)}
    for who, bus in buses.items():

        def make(w: str) -> Any:
            async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
                handled[w].add(event.order_id)

            return handle

        bus.add_handler(make(who), group="g", partitions=2)
        await bus.start()
    await balanced(ev.stream, "g", 2, members=2)
    assert await asyncio.to_thread(close_connections_named, name) == 1
    # the dropped member reconnects, joins again and gets a partition back
    await balanced(ev.stream, "g", 2, members=2)
    keys = [f"k{k}" for k in range(20)]
    await buses["steady"].publish_many(
        [(ev.Created(order_id=f"{key}:{n}"), key) for n in range(10) for key in keys]
    )
    await until(
        lambda: len(handled["steady"] | handled["dropped"]) == 200, timeout=60, what="every event"
    )
    assert handled["steady"] and handled["dropped"], "one member did all the work"


async def test_delayed_retries_come_back_to_the_same_partition(rabbit: Broker) -> None:
    """A retry re-enters through the group's route exchange: keyed events hash on their key,
    keyless ones on their (kept) event id, so every try lands on the same partition queue,
    hence the same member."""
    ev = make_events(rabbit.stream())
    tries: dict[str, list[tuple[int, str]]] = defaultdict(list)
    buses = {"x": rabbit.bus(), "y": rabbit.bus()}
    for who, bus in buses.items():

        def make(w: str) -> Any:
            async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
                tries[event.order_id].append((ctx.attempt, w))
                if ctx.attempt < 3:
                    raise RuntimeError("not yet")

            return handle

        bus.add_handler(
            make(who),
            group="p",
            partitions=2,
            retry=RetryPolicy(attempts=3, backoff=0.2, delayed=True),
        )
        await bus.start()
    await balanced(ev.stream, "p", 2, members=2)
    publisher = buses["x"]
    await publisher.publish_many([(ev.Created(order_id=f"keyed{i}"), f"k{i}") for i in range(8)])
    await publisher.publish_many([ev.Created(order_id=f"keyless{i}") for i in range(8)])
    await until(
        lambda: len(tries) == 16 and all(len(t) == 3 for t in tries.values()),
        timeout=60,
        what="three tries of every event",
    )
    for order_id, attempts in tries.items():
        assert [n for n, _ in attempts] == [1, 2, 3], (order_id, attempts)
        assert len({w for _, w in attempts}) == 1, f"{order_id} moved between members: {attempts}"
    assert {w for attempts in tries.values() for _, w in attempts} == {"x", "y"}


def _start_member(stream: str, log: Path, partitions: int) -> subprocess.Popen[str]:
    """A member of group "workers" in its own process (see consumer_app)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.rabbitmq.consumer_app", stream, str(log), str(partitions)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EVENTBUS_LOG_LEVEL": "INFO"},
    )


def _wait_for_line(stream: Any, needle: str) -> bool:
    return any(needle in line for line in stream)
