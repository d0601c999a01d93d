"""A URL naming several nodes, on the one local broker (cheap: no cluster needed): the
link skips a node that refuses, names the node it is on, and a lost connection moves on
to the next node of the list (here the same broker under another name). The fail-overs
of a real 3-node cluster are the soak tests in tests/clusters/test_rabbitmq_cluster.py.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio

import pytest

from eventbus import EventBus
from eventbus.sync import SyncPublisher
from eventbus.testing.conformance import make_events, until

from .conftest import Broker
from .support import close_connections_named

pytestmark = pytest.mark.rabbitmq

#: nothing listens there (a port of the cluster range no script uses)
DEAD = "127.0.0.1:5689"


async def test_several_hosts_skip_a_dead_one_and_fail_over_to_the_next(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    name = f"hosts-{ev.stream}"
    handled: list[int] = []
    bus = rabbit.bus(
        f"amqp://guest:guest@{DEAD},127.0.0.1:5672,localhost:5672/",
        connection_name=name,
        max_reconnect_backoff=0.5,
    )

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.append(event.n)

    async with bus:
        assert bus.health().detail.startswith("127.0.0.1:5672 ("), bus.health().detail
        await bus.publish(ev.Created(order_id="o", n=1), key="o")
        await until(lambda: handled == [1], what="the first event")
        assert await asyncio.to_thread(close_connections_named, name) == 1
        await until(lambda: bus.health().ok, timeout=30, what="the bus back")
        health = bus.health()
        assert health.detail.startswith("localhost:5672 ("), health.detail
        assert health.reconnects == 1
        await bus.publish(ev.Created(order_id="o", n=2), key="o")
        await until(lambda: handled == [1, 2], what="the event after the fail-over")
        assert "guest:guest" not in repr(bus.broker) and "guest:guest" not in health.broker


async def test_all_hosts_down_fails_start_naming_each(rabbit: Broker) -> None:
    bus = EventBus(f"amqp://guest:s3cret@{DEAD},127.0.0.1:1/", connect_timeout=2)
    with pytest.raises(ConnectionError) as info:
        await bus.start()
    text = str(info.value)
    assert DEAD in text and "127.0.0.1:1:" in text and "s3cret" not in text
    await bus.stop()


async def test_sync_publisher_skips_a_dead_host(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    handled: list[int] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.append(event.n)

    def publish() -> None:
        with SyncPublisher(f"amqp://guest:guest@{DEAD},127.0.0.1:5672/") as publisher:
            publisher.publish(ev.Created(order_id="o", n=7), key="o")

    async with bus:
        await asyncio.to_thread(publish)
        await until(lambda: handled == [7], what="the event published by the sync face")
