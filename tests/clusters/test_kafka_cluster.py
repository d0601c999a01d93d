"""Kafka fault scenarios (soak): a 3-node cluster (`scripts/kafka-cluster.sh`) losing a
node to SIGKILL, hanging one with SIGSTOP, restarting every node in turn, and the
single test broker (`scripts/kafka.sh`) restarting, each under concurrent keyed
publishing and a consuming group (`tests/clusters/load.py`). Every scenario asserts
that every confirmed event is handled, that key order holds on the handled sequence
(duplicates removed), that no publish failed with anything but `PublishError`, and that
the group never stood still longer than the bound its scenario justifies; it prints
its figures and appends them to `reliability.json`.

The groups run with `session.timeout.ms=10000` (librdkafka's default is 45 s), so that
a hung group coordinator outlives the session in a scenario of bounded length. The
cluster fences a node that misses its heartbeats for 6 s (`broker.session.timeout.ms`
in scripts/kafka/cluster.properties).

No `from __future__ import annotations`: the load's handler is annotated at runtime.
"""

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from eventbus import EventBus
from eventbus.adapters.kafka import KafkaBroker
from eventbus.testing.conformance import unique

from ..kafka.harness import BOOTSTRAP as SINGLE_BOOTSTRAP
from ..kafka.harness import KAFKA_URL
from . import kafka_nodes as nodes
from .load import Figures, Load, order_breaks

pytestmark = [pytest.mark.soak, pytest.mark.kafka]

#: what each consuming group runs with (see the module docstring)
GROUP_CONFIG = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1000}
#: a crashed or hung node is fenced after 6 s; its partitions get new leaders at once,
#: and librdkafka finds them on its next metadata refresh (retry backoff up to 1 s);
#: the group may rebalance once. On 2 loaded cores, twice that leaves room.
FAILOVER_BOUND_S = 25.0
#: publish_timeout of the hung-node scenario, and the slack a timed-out publish may
#: take beyond it to be reported (librdkafka scans for timeouts once a second)
HUNG_PUBLISH_TIMEOUT = 8.0
PUBLISH_SLACK_S = 5.0
#: a hung group coordinator: the group notices after its 10 s session, the node is
#: fenced after 6 s and its coordination moves; rejoin and assignment take a few
#: seconds more, and 2 loaded cores half as much again
HUNG_BOUND_S = 30.0
#: how long the hung node stays stopped: longer than that bound, so a client that waits
#: for the hung node instead of failing over fails the scenario
HANG_S = 40.0


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[None]:
    """The 3-node cluster, started by its script as CI would on a fresh machine."""
    nodes.ensure_cluster()
    yield


@pytest.fixture(scope="session")
def single_broker() -> None:
    """The single test broker of scripts/kafka.sh (started if it is not running)."""
    single_broker_script("start")


@pytest.fixture
async def cluster(kafka_cluster: None) -> AsyncIterator[list[EventBus]]:
    """Buses on the cluster (append them); afterwards every node runs and serves again
    (a scenario that failed midway leaves none stopped or paused), and the topics the
    buses created are deleted."""
    buses: list[EventBus] = []
    try:
        yield buses
    finally:
        await asyncio.to_thread(nodes.ensure_cluster)
        await delete_topics(buses)


async def report(load: Load, bootstrap: str = nodes.BOOTSTRAP) -> Figures:
    """Print and record the load's figures; where the handled sequence broke key order,
    also show where, and whether the topic's log itself holds those keys out of order
    (the producer) or only the handling did (the consumer). The log must keep key order
    whatever happened to the leaders (idempotent producer)."""
    figures = load.report()
    handled = load.order_breaks()
    if handled:
        print(f"    handled out of key order: {handled[:10]}")
    stored = order_breaks(await asyncio.to_thread(nodes.stored_sequences, load.stream, bootstrap))
    print(f"    stored out of key order: {len(stored)} {stored[:10]}")
    assert not stored, f"the log breaks key order: {stored[:10]}"
    return figures


async def delete_topics(buses: list[EventBus]) -> None:
    created: set[str] = set()
    brokers = [bus.broker for bus in buses if isinstance(bus.broker, KafkaBroker)]
    for broker in brokers:
        created |= broker.topics.created
    if created and brokers:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(brokers[0].topics.delete, created)


def buses(pool: list[EventBus], url: str, **publisher: Any) -> tuple[EventBus, EventBus]:
    """A consuming bus and a publishing bus (two clients, as two services would be)."""
    consumer, producer = EventBus(url), EventBus(url, **publisher)
    pool += [consumer, producer]
    return consumer, producer


@pytest.mark.timeout(120)
async def test_the_cluster_serves_a_bus_through_all_three_nodes(
    cluster: list[EventBus],
) -> None:
    """`kafka://h1:p1,h2:p2,h3:p3` works, and the topics eventbus creates follow the
    cluster's defaults: 3 replicas each, min.insync.replicas=2."""
    stream = unique("kc")
    load = Load(stream, scenario="kafka cluster smoke", broker="kafka-3", keys=8, rate=200)
    consumer, producer = buses(cluster, nodes.URL)
    load.attach(consumer, config=GROUP_CONFIG)
    async with consumer, producer:
        async with load.publishing(producer):
            await load.progress(200)
        await load.drain(timeout=60)
    (await report(load)).check(max_recovery_s=FAILOVER_BOUND_S)
    assert await asyncio.to_thread(nodes.replica_counts, stream) == {3}
    assert sorted(await asyncio.to_thread(nodes.leaders, [stream])) == [1, 2, 3]
    assert await asyncio.to_thread(nodes.topic_config, stream, "min.insync.replicas") == "2"


@pytest.mark.timeout(240)
async def test_sigkill_of_the_busiest_leader_mid_stream_loses_nothing(
    cluster: list[EventBus],
) -> None:
    """Scenario 1: the node leading most partitions of the stream is SIGKILLed while
    events flow, and started again later. The group keeps handling on the two others
    within the failover bound; nothing confirmed is lost."""
    stream = unique("kc")
    load = Load(stream, scenario="kafka SIGKILL busiest leader", broker="kafka-3")
    consumer, producer = buses(cluster, nodes.URL)
    load.attach(consumer, config=GROUP_CONFIG)
    async with consumer, producer:
        async with load.publishing(producer):
            await load.progress(1500, timeout=120)
            victim = await asyncio.to_thread(nodes.busiest_leader, [stream])
            load.note(f"SIGKILL node {victim}")
            await asyncio.to_thread(nodes.kill, victim)
            took = await load.progress(1000, timeout=120, what="handling without the node")
            load.note(f"1000 events handled on two nodes in {took:.1f}s; restarting node")
            await asyncio.to_thread(nodes.start, victim)
            load.note(f"node {victim} serves again")
            took = await asyncio.to_thread(nodes.wait_in_sync, [stream])
            load.note(f"replicas in sync {took:.1f}s later")
            await load.progress(500, timeout=120)
        await load.drain(timeout=120)
    figures = await report(load)
    figures.check(max_recovery_s=FAILOVER_BOUND_S)


@pytest.mark.timeout(200)
async def test_a_hung_node_is_detected_and_nothing_is_lost(cluster: list[EventBus]) -> None:
    """Scenario 3: the group's coordinator is SIGSTOPped for 40 s (longer than the
    cluster's 6 s broker session, the group's 10 s session and the bound), then
    SIGCONTed. Clients
    neither hang nor stall silently: publishes to its partitions either confirm or raise
    PublishError within `publish_timeout`, handling resumes within the failover bound,
    and nothing confirmed is lost."""
    stream = unique("kc")
    group = unique("g")
    load = Load(stream, scenario="kafka SIGSTOP coordinator 40s", broker="kafka-3", group=group)
    consumer, producer = buses(cluster, nodes.URL, publish_timeout=HUNG_PUBLISH_TIMEOUT)
    load.attach(consumer, config=GROUP_CONFIG)
    async with consumer, producer:
        async with load.publishing(producer):
            await load.progress(1500, timeout=120)
            victim = await asyncio.to_thread(nodes.coordinator, group)
            load.note(f"SIGSTOP node {victim} (coordinator of the group)")
            await asyncio.to_thread(nodes.pause, victim)
            try:
                took = await load.progress(1000, timeout=HANG_S, what="handling past the hung node")
                load.note(f"1000 events handled beside the hung node in {took:.1f}s")
                await asyncio.sleep(max(0.0, HANG_S - took))  # the fault's length, not a sync
            finally:
                await asyncio.to_thread(nodes.resume, victim)
            load.note(f"SIGCONT node {victim}")
            took = await asyncio.to_thread(nodes.wait_in_sync, [stream])
            load.note(f"replicas in sync {took:.1f}s later")
            await load.progress(500, timeout=120)
        await load.drain(timeout=120)
    figures = await report(load)
    figures.check(
        max_recovery_s=HUNG_BOUND_S,
        max_publish_s=HUNG_PUBLISH_TIMEOUT + PUBLISH_SLACK_S,
    )


@pytest.mark.timeout(300)
async def test_a_rolling_restart_of_all_three_nodes_loses_nothing(
    cluster: list[EventBus],
) -> None:
    """Scenario 5: each node in turn is stopped (SIGTERM: controlled shutdown, its
    leaderships move first), started again, and the next one waits until every replica
    is back in sync, as an operator would. Zero loss, and no publish fails: two of three
    replicas are always in sync."""
    stream = unique("kc")
    load = Load(stream, scenario="kafka rolling restart", broker="kafka-3")
    consumer, producer = buses(cluster, nodes.URL)
    load.attach(consumer, config=GROUP_CONFIG)
    async with consumer, producer:
        async with load.publishing(producer):
            await load.progress(1000, timeout=120)
            for n in nodes.NODES:
                load.note(f"stop node {n}")
                await asyncio.to_thread(nodes.stop, n)
                await asyncio.to_thread(nodes.start, n)
                took = await asyncio.to_thread(nodes.wait_in_sync, [stream])
                load.note(f"node {n} back, replicas in sync {took:.1f}s later")
                await load.progress(300, timeout=120)
        await load.drain(timeout=120)
    figures = await report(load)
    figures.check(max_recovery_s=FAILOVER_BOUND_S)
    assert figures.failed == 0, figures.line()


@pytest.mark.timeout(240)
async def test_a_restart_of_the_single_test_broker_mid_stream_loses_nothing(
    single_broker: None,
) -> None:
    """Scenario 4: the single-node test broker (`scripts/kafka.sh restart`: SIGTERM,
    then a new JVM) restarts while events flow. There is no other replica: publishes wait
    (publish_timeout 120 s) and the group waits, then both carry on; nothing confirmed is
    lost. The group may stand still for the restart itself, then librdkafka's reconnect
    backoff (up to 10 s), and a rejoin that waits for the group's old membership to
    expire (its 10 s session): 30 s beyond the restart (one run: 20 s)."""
    stream = unique("k1")
    load = Load(stream, scenario="kafka single broker restart", broker="kafka-1")
    pool: list[EventBus] = []
    consumer, producer = buses(pool, KAFKA_URL)
    load.attach(consumer, config=GROUP_CONFIG)
    try:
        async with consumer, producer:
            async with load.publishing(producer):
                await load.progress(1500, timeout=120)
                load.note("scripts/kafka.sh restart")
                restart = await asyncio.to_thread(single_broker_script, "restart")
                load.note(f"broker restarted in {restart:.1f}s")
                await load.progress(1000, timeout=180)
            await load.drain(timeout=180)
        figures = await report(load, SINGLE_BOOTSTRAP)
    finally:
        await asyncio.to_thread(single_broker_script, "start")  # never leave it down
        await delete_topics(pool)
    figures.check(max_recovery_s=restart + 30.0)


def single_broker_script(command: str) -> float:
    """Run `scripts/kafka.sh command`; -> seconds it took (fails loudly if it fails)."""
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(nodes.ROOT / "scripts" / "kafka.sh"), command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"scripts/kafka.sh {command} failed:\n{done.stdout}{done.stderr}"
    return time.monotonic() - started
