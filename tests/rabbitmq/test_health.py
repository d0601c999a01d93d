"""Health of the RabbitMQ adapter: `RabbitMQBroker.state()` (the link), the consumer's
`state()` (attached or not, and why) and `backlog()` (ready messages per queue the group
consumes), on the real broker: exact counts while handlers hold deliveries, and a broker
restart (`rabbitmqctl stop_app` / `start_app`) seen and recovered from without a new bus.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import logging
from collections.abc import Callable

import pytest

from eventbus import EventBus, RetryPolicy
from eventbus.adapters.rabbitmq.consumer import GroupConsumer
from eventbus.testing.conformance import make_events, until
from eventbus.toolkit import ConsumerState, ReportsBacklog, ReportsState

from .conftest import Broker
from .support import broker_of, rabbitmqctl

pytestmark = pytest.mark.rabbitmq


def consumer_of(bus: EventBus) -> GroupConsumer:
    """The consumer of the bus's only subscription."""
    [consumer] = bus._consumers
    assert isinstance(consumer, GroupConsumer), consumer
    return consumer


async def backlog_becomes(
    consumer: GroupConsumer, expected: dict[str, int], timeout: float = 30
) -> None:
    """Poll `backlog()` until it returns `expected`."""
    seen: list[dict[str, int] | None] = []

    async def poll() -> None:
        while True:
            seen.append(await consumer.backlog())
            await asyncio.sleep(0.02)  # pacing between polls, not a wait for a condition

    polling = asyncio.create_task(poll())
    try:
        await until(lambda: bool(seen) and seen[-1] == expected, timeout, f"backlog {expected}")
    except AssertionError:
        raise AssertionError(f"backlog never became {expected}; last: {seen[-1:]}") from None
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)


async def broker_counts_when(
    queues: set[str],
    condition: Callable[[dict[str, tuple[int, int]]], bool],
    timeout: float = 30,
) -> dict[str, tuple[int, int]]:
    """Poll the broker's own counts of `queues` until `condition` holds; -> the counts."""
    counts: dict[str, tuple[int, int]] = {}

    async def poll() -> None:
        nonlocal counts
        while not (len(counts) == len(queues) and condition(counts)):
            counts = await asyncio.to_thread(queue_counts, queues)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"the broker's counts stayed {counts}") from None
    return counts


def queue_counts(queues: set[str]) -> dict[str, tuple[int, int]]:
    """queue -> (ready, unacknowledged), as the broker itself lists them."""
    out = rabbitmqctl(
        "list_queues", "name", "messages_ready", "messages_unacknowledged", "--quiet",
        "--no-table-headers",
    )  # fmt: skip
    counts: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] in queues:
            counts[fields[0]] = (int(fields[1]), int(fields[2]))
    return counts


async def test_backlog_is_what_waits_beyond_the_deliveries_in_flight(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    prefetch, concurrency, total = 5, 2, 20
    release = asyncio.Event()
    started: list[str] = []
    handled: list[str] = []
    bus = rabbit.bus()

    # delayed retries: the group also has wait queues (and a dead-letter queue), which are
    # no backlog
    retry = RetryPolicy(attempts=3, backoff=0.05, delayed=True)

    @bus.subscribe(group="g", concurrency=concurrency, prefetch=prefetch, retry=retry)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        started.append(event.order_id)
        await release.wait()
        handled.append(event.order_id)

    queue = f"{ev.stream}.g"
    async with bus:
        try:
            consumer = consumer_of(bus)
            assert isinstance(consumer, ReportsState)
            assert isinstance(consumer, ReportsBacklog)
            assert consumer.state() == ConsumerState(True, "")
            assert await consumer.backlog() == {queue: 0}

            await bus.publish_many([ev.Created(order_id=f"o{i}", n=i) for i in range(total)])
            await until(lambda: len(started) == concurrency, what="the handlers to block")
            # the broker hands the consumer `prefetch` deliveries (two in handlers, the others
            # waiting for a free one), every other event is ready in the queue
            await backlog_becomes(consumer, {queue: total - prefetch})
            # the broker's own view agrees (its listed counts of a quorum queue lag a little)
            expected = {queue: (total - prefetch, prefetch)}
            await broker_counts_when({queue}, lambda counts: counts == expected)
            assert await consumer.backlog() == {queue: total - prefetch}
            assert len(started) == concurrency
            assert consumer.state().attached
        finally:
            release.set()  # never leave a handler blocked at stop
        await until(lambda: len(handled) == total, what="every event")
        await backlog_becomes(consumer, {queue: 0})
    assert sorted(handled) == sorted(f"o{i}" for i in range(total))


async def test_partitioned_backlog_has_one_entry_per_partition_queue(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    partitions, total = 3, 30
    release = asyncio.Event()
    handled: list[str] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g", partitions=partitions, prefetch=1)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        await release.wait()
        handled.append(event.order_id)

    queues = {f"{ev.stream}.g.{i}" for i in range(partitions)}
    async with bus:
        try:
            consumer = consumer_of(bus)
            await until(lambda: consumer.state().attached, what="the member to attach")
            assert consumer.state() == ConsumerState(True, "partitions 0, 1, 2 (3 of 3)")
            assert await consumer.backlog() == dict.fromkeys(queues, 0)

            await bus.publish_many([(ev.Created(order_id=f"o{i}"), f"k{i}") for i in range(total)])
            # every partition channel holds one delivery (prefetch 1) of what its queue got
            counts = await broker_counts_when(
                queues,
                lambda c: (
                    sum(r + u for r, u in c.values()) == total
                    and all(u == min(1, r + u) for r, u in c.values())
                ),
            )
            await backlog_becomes(consumer, {q: ready for q, (ready, _) in counts.items()})
            in_flight = sum(unacked for _, unacked in counts.values())
            assert sum((await consumer.backlog() or {}).values()) == total - in_flight
        finally:
            release.set()  # never leave a handler blocked at stop
        await until(lambda: len(handled) == total, what="every event")
        await backlog_becomes(consumer, dict.fromkeys(queues, 0))


async def test_state_follows_a_broker_restart_and_recovers(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    handled: list[str] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.append(event.order_id)

    queue = f"{ev.stream}.g"
    try:
        async with bus:
            broker, consumer = broker_of(bus), consumer_of(bus)
            assert isinstance(broker, ReportsState)
            up = broker.state()
            assert up.connected and up.reconnects == 0
            assert up.detail.startswith("127.0.0.1:5672 (RabbitMQ "), up.detail
            assert consumer.state() == ConsumerState(True, "")
            await bus.publish(ev.Created(order_id="before"))
            await until(lambda: handled == ["before"], what="the first event")

            stopping = asyncio.create_task(asyncio.to_thread(rabbitmqctl, "stop_app"))
            await until(lambda: not broker.state().connected, 60, "the link to go down")
            await until(lambda: not consumer.state().attached, 60, "the consumer to detach")
            await stopping
            down = broker.state()
            assert down.detail.startswith("connection lost ("), down.detail
            assert "guest:" not in down.detail and "://" not in down.detail
            assert down.reconnects == 0
            assert consumer.state() == ConsumerState(False, "connection lost, reconnecting")
            # the backlog is unknown while the link is down, and asking does not wait
            assert await asyncio.wait_for(consumer.backlog(), 1) is None
            # the reconnection attempts fail meanwhile: the detail says so
            await until(lambda: "attempt" in broker.state().detail, 60, "a failed attempt")

            await asyncio.to_thread(rabbitmqctl, "start_app")
            await asyncio.to_thread(rabbitmqctl, "await_startup")
            await until(lambda: broker.state().connected, 60, "the link to come back")
            await until(lambda: consumer.state().attached, 60, "the consumer to re-attach")
            again = broker.state()
            assert again.reconnects == 1
            assert again.detail.startswith("127.0.0.1:5672 ("), again.detail
            assert consumer.state() == ConsumerState(True, "")
            assert bus.broker is broker and consumer_of(bus) is consumer  # the same bus

            await bus.publish(ev.Created(order_id="after"))
            await until(lambda: "after" in handled, 60, "an event published afterwards")
            await backlog_becomes(consumer, {queue: 0})
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")  # never leave the broker down
        await asyncio.to_thread(rabbitmqctl, "await_startup")


async def test_a_bus_stopped_while_it_counts_its_backlog_leaves_aiormq_nothing_to_say(
    rabbit: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """The bus counts its backlog as it starts (a channel opened, queues declared
    passively). Stopped at once, it lets the count finish instead of cancelling it while
    its channel opens: aiormq would close that channel with a warning of its own on
    stderr ("Closing channel ... locally because RPC call None cancelled before
    Channel.Open was sent"), which reached stderr past structlog on every start and stop
    of a bus (here pytest's log capture holds it)."""
    caplog.set_level(logging.WARNING, logger="aiormq")
    for _ in range(3):
        ev = make_events(rabbit.stream())
        bus = rabbit.bus()

        @bus.subscribe(group="g")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            pass

        async with bus:
            pass
    said = [r.getMessage() for r in caplog.records if r.name.startswith("aiormq")]
    assert not said, said
