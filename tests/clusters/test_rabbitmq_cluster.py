"""Fault scenarios on a 3-node RabbitMQ cluster (`scripts/rabbitmq-cluster.sh`), each
under concurrent keyed publishing and a consuming group (`load.Load`), with quorum queues
of 3 replicas. The bus is given all three nodes in its URL; it connects to the first
(so the group queue's leader, placed client-local, is on the same node) and moves to
another when its node fails.

  crash     SIGKILL the node holding the client's connection and the queue's leader
  hang      SIGSTOP that node for longer than the heartbeat timeout, then SIGCONT; a
            second bus pinned to that node alone shows publishes that cannot be
            confirmed in time raising PublishError
  rolling   restart the three nodes one after the other (graceful stop, start, wait
            until the queue's replicas are all back online)

Each prints its figures and appends them to reliability.json (`load.report`), and asserts:
nothing confirmed lost, key order kept (duplicates removed), no publish failing with
anything but PublishError, publishing going on through another node, and a bounded
recovery (see the bounds below).

No `from __future__ import annotations`: the handlers' annotations are read at subscribe
time.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pika
import pytest

from eventbus import EventBus, PublishError
from eventbus.testing.conformance import make_events, unique, until

from .load import Load
from .rabbitmq_nodes import (
    NODES,
    PORTS,
    REPLICAS,
    URL,
    ensure_cluster,
    kill,
    node_of,
    pause,
    quorum_queues,
    restart,
    resume,
    start,
    wait_replicas_online,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.soak]

#: AMQP heartbeat the buses ask for: aiormq declares a connection dead after
#: (heartbeat + 1) * 3 = 9 s without a frame
HEARTBEAT = 2
DEAD_AFTER = (HEARTBEAT + 1) * 3
#: the cluster's net_ticktime (scripts/rabbitmq-cluster.sh): the other nodes declare a
#: hung node down after 10-13 s, and only then hand its consumers' messages on
NET_TICKTIME = 10
#: seconds a hung node stays hung (longer than both)
FREEZE = 20
#: a publish gives up (PublishError) after this; none may take much longer (no hang)
PUBLISH_TIMEOUT = 60.0
OPTIONS: dict[str, Any] = {
    "heartbeat": HEARTBEAT,
    "connect_timeout": 3,
    "max_reconnect_backoff": 1.0,
    "publish_timeout": PUBLISH_TIMEOUT,
    "connection_name": "eventbus-cluster-test",
}
#: recovery bounds (the longest time the group handled nothing new while publishing):
#: crash: the socket dies with the process, so the client knows at once; one reconnect
#: (< connect_timeout 3 s), the leader election among the two others (Ra: ~1-2 s, more
#: on a loaded 2-core machine), the consumer re-attached and the publisher's unconfirmed
#: publishes written again: 20 s leaves room for a loaded machine.
CRASH_BOUND = 20.0
#: hang: the consumer's old channel lived on the hung node, so the queue hands its
#: messages to the new consumer only once the others declare that node down (net_ticktime,
#: up to 13 s), the client has meanwhile noticed it (9 s) and reconnected (3 s at most):
#: 13 s + an election + re-attaching; 35 s on a loaded machine.
HANG_BOUND = 35.0
#: rolling: each graceful stop closes the connection (CONNECTION_FORCED) and hands the
#: leadership over; reconnect + re-attach each time: 20 s.
ROLLING_BOUND = 20.0
#: seconds a step of a scenario may take to see its share of events handled (a busy
#: 2-core machine shared with other test runs handles as few as ~25 events/s)
PROGRESS = 120.0
#: a publish through the bus pinned to the hung node gives up after this (PublishError)
PINNED_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[None]:
    """The cluster, started by its script as CI would on a fresh machine."""
    ensure_cluster()
    yield


@pytest.fixture
async def streams(rabbitmq_cluster: None) -> AsyncIterator[list[str]]:
    """Fresh stream names; their queues and exchanges are deleted afterwards, and every
    node is running again (whatever the test did to it)."""
    names: list[str] = []
    try:
        yield names
    finally:
        try:
            await asyncio.to_thread(ensure_cluster)
        finally:
            await asyncio.to_thread(_delete_topology, names)


def _delete_topology(streams: list[str]) -> None:
    if not streams:
        return
    connection = pika.BlockingConnection(
        [pika.ConnectionParameters("127.0.0.1", PORTS[n]) for n in NODES]
    )
    try:
        channel = connection.channel()
        for stream in streams:
            for queue in (
                f"{stream}.load",
                f"{stream}.load.dlq",
                f"{stream}.pinned",
                f"{stream}.pinned.dlq",
            ):
                channel.queue_delete(queue)
            channel.exchange_delete(stream)
    finally:
        connection.close()


def _bus(url: str = URL, **options: Any) -> EventBus:
    return EventBus(url, **{**OPTIONS, **options})


async def _hold(seconds: float, since: float, what: str) -> None:
    """Keep a fault in place until `seconds` after `since` (a fault's duration, not a
    synchronisation: the scenario's checks all wait on conditions)."""
    await until(lambda: time.monotonic() - since >= seconds, timeout=seconds + 5, what=what)


async def _group_queue_on(bus: EventBus, queue: str) -> int:
    """The node the bus is on, after checking the group's queue has 3 replicas online
    and its leader on that very node (quorum queues are placed client-local)."""
    node = node_of(bus)
    info = (await asyncio.to_thread(quorum_queues, [queue]))[queue]
    assert info.members == info.online == REPLICAS, info
    assert info.leader == node, f"leader of {queue} on node {info.leader}, client on {node}"
    return node


@pytest.mark.timeout(420)  # the cluster's start (first test) and a loaded machine
async def test_sigkill_of_the_node_with_the_leader_and_the_connection(
    streams: list[str],
) -> None:
    stream = unique("rc-kill")
    streams.append(stream)
    load = Load(
        stream, scenario="rabbitmq-kill-leader-node", broker="rabbitmq-3", keys=16, rate=250
    )
    bus = _bus()
    load.attach(bus)
    queue = f"{stream}.{load.group}"
    async with bus:
        victim = await _group_queue_on(bus, queue)
        async with load.publishing(bus):
            await load.progress(1000, timeout=PROGRESS, what="handling before the crash")
            killed_at = time.monotonic()
            await asyncio.to_thread(kill, victim)
            load.note(f"SIGKILL node {victim} (leader of {queue}, the client's node)")
            await until(
                lambda: bus.health().connected and node_of(bus) != victim,
                timeout=CRASH_BOUND,
                what="the bus on another node",
            )
            load.note(f"bus reconnected to node {node_of(bus)}")
            reconnected_s = time.monotonic() - killed_at
            await until(
                lambda: any(t > killed_at for t in load.confirmed_at),
                timeout=CRASH_BOUND,
                what="a publish confirmed after the crash",
            )
            confirmed_again_s = min(t for t in load.confirmed_at if t > killed_at) - killed_at
            await load.progress(500, timeout=PROGRESS, what="handling after the crash")
            survivor = node_of(bus)
        # messages the dead node's consumer held stay checked out to it until that node
        # is back (RabbitMQ cannot tell a crash from a partition): restart it, as a
        # supervisor would, then drain
        restarted_at = time.monotonic()
        await asyncio.to_thread(start, victim)
        load.note(f"node {victim} started again")
        await asyncio.to_thread(wait_replicas_online, [queue])
        # (asked now: a CLI call right after a crash can take a minute on a busy machine)
        info = (await asyncio.to_thread(quorum_queues, [queue]))[queue]
        load.note(f"leader of {queue}: node {info.leader}")
        await load.drain(timeout=120)
        assert bus.health().ok, bus.health().reasons()
    rejoined_s = time.monotonic() - restarted_at
    figures = load.report()
    print(
        f"    reconnected after {reconnected_s:.2f}s, first confirm after "
        f"{confirmed_again_s:.2f}s; node {victim} restarted and drained in {rejoined_s:.1f}s"
    )
    assert survivor != victim and info.leader is not None and info.members == REPLICAS
    # publishes in flight when the leader died may be nacked (PublishError: not stored)
    # while the other two elect a new one; the rest goes on
    figures.check(max_recovery_s=CRASH_BOUND, max_publish_s=PUBLISH_TIMEOUT + 5, min_confirmed=1500)


@pytest.mark.timeout(420)
async def test_a_hung_node_is_detected_and_nothing_is_lost(streams: list[str]) -> None:
    stream, side = unique("rc-hang"), unique("rc-pin")
    streams.extend([stream, side])
    load = Load(stream, scenario="rabbitmq-hung-node", broker="rabbitmq-3", keys=16, rate=250)
    bus = _bus()
    load.attach(bus)
    ev = make_events(side)
    pinned_handled: set[int] = set()

    @bus.subscribe(group="pinned")
    async def on_pinned(event: ev.Created) -> None:  # type: ignore[name-defined]
        pinned_handled.add(event.n)

    queue = f"{stream}.{load.group}"
    async with bus:
        victim = await _group_queue_on(bus, queue)
        pinned = _bus(
            f"amqp://guest:guest@127.0.0.1:{PORTS[victim]}/",
            publish_timeout=PINNED_TIMEOUT,
            connection_name="eventbus-cluster-pinned",
        )
        async with pinned:
            await pinned.publish(ev.Created(order_id="p", n=0), key="p")
            async with load.publishing(bus):
                await load.progress(1000, timeout=PROGRESS, what="handling before the hang")
                paused_at = time.monotonic()
                await asyncio.to_thread(pause, victim)
                load.note(f"SIGSTOP node {victim} (leader of {queue}, the client's node)")

                async def pinned_publish(n: int) -> tuple[str, float]:
                    started = time.monotonic()
                    try:
                        await pinned.publish(ev.Created(order_id="p", n=n), key="p")
                    except PublishError:
                        return "PublishError", time.monotonic() - started
                    return "confirmed", time.monotonic() - started

                outcomes = await asyncio.gather(*(pinned_publish(n) for n in range(1, 6)))
                load.note(f"pinned publishes: {outcomes}")
                await until(
                    lambda: bus.health().connected and node_of(bus) != victim,
                    timeout=DEAD_AFTER + 10,
                    what="the bus on another node",
                )
                detected_s = time.monotonic() - paused_at
                load.note(f"bus reconnected to node {node_of(bus)}")
                await load.progress(100, timeout=HANG_BOUND, what="handling while the node hangs")
                handling_again_s = time.monotonic() - paused_at
                await _hold(FREEZE, paused_at, "the end of the freeze")
                await asyncio.to_thread(resume, victim)
                load.note(f"SIGCONT node {victim}")
                await load.progress(500, timeout=PROGRESS, what="handling after the hang")
            await load.drain(timeout=120)
            # the others declared it down while it hung: autoheal restarts it into the
            # cluster (scripts/rabbitmq-cluster.sh)
            await asyncio.to_thread(ensure_cluster)
            load.note(f"node {victim} back in the cluster")
            await asyncio.to_thread(wait_replicas_online, [queue])
            await until(lambda: bus.health().ok, timeout=30, what="the bus healthy")
    figures = load.report()
    stored = sorted(pinned_handled - {0})
    print(
        f"    hang detected and bus moved after {detected_s:.2f}s (heartbeat {HEARTBEAT}s: "
        f"dead after {DEAD_AFTER}s), handling 100 more after {handling_again_s:.2f}s; "
        f"pinned bus: {outcomes}, of those stored anyway: {stored}"
    )
    assert all(outcome == "PublishError" for outcome, _ in outcomes), outcomes
    assert all(took <= PINNED_TIMEOUT + 3 for _, took in outcomes), outcomes
    assert 0 in pinned_handled, "the pinned bus's confirmed publish was lost"
    assert detected_s <= DEAD_AFTER + 10
    figures.check(max_recovery_s=HANG_BOUND, max_publish_s=PUBLISH_TIMEOUT + 5, min_confirmed=1500)


@pytest.mark.timeout(480)
async def test_rolling_restart_of_all_three_nodes_loses_nothing(streams: list[str]) -> None:
    stream = unique("rc-roll")
    streams.append(stream)
    load = Load(stream, scenario="rabbitmq-rolling-restart", broker="rabbitmq-3", keys=16, rate=250)
    bus = _bus()
    load.attach(bus)
    queue = f"{stream}.{load.group}"
    visited: list[int] = []
    async with bus:
        await _group_queue_on(bus, queue)
        async with load.publishing(bus):
            await load.progress(1000, timeout=PROGRESS, what="handling before the restarts")
            for n in NODES:
                started = time.monotonic()
                await asyncio.to_thread(restart, n)
                took = time.monotonic() - started
                replicas = await asyncio.to_thread(wait_replicas_online, [queue])
                load.note(f"node {n} restarted in {took:.1f}s, replicas online {replicas:.1f}s on")
                await load.progress(300, timeout=PROGRESS, what=f"after restarting node {n}")
                visited.append(node_of(bus))
        await load.drain(timeout=120)
        assert bus.health().ok, bus.health().reasons()
        reconnects = bus.health().reconnects
    figures = load.report()
    print(f"    the bus was on nodes {visited} after each restart, {reconnects} reconnections")
    assert reconnects >= 3, "each restart closed the bus's connection at least once"
    # a graceful stop of the leader's node moves the leadership: publishes in flight then
    # may be nacked (PublishError, counted as failed), never lost
    figures.check(
        max_recovery_s=ROLLING_BOUND, max_publish_s=PUBLISH_TIMEOUT + 5, min_confirmed=1900
    )
