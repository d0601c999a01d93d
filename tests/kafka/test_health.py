"""What the Kafka adapter tells `bus.health()` and a readiness probe: the producer's link
(`KafkaBroker.state()`), a consumer's membership (`state()`) and its consumer lag
(`backlog()`), all read from librdkafka's statistics and error callbacks."""

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from eventbus import ConfigurationError, Event, EventBus
from eventbus.adapters.kafka import KafkaBroker, KafkaSubscription
from eventbus.adapters.kafka.link import GroupLink, ProducerLink
from eventbus.adapters.kafka.settings import ClientConfigs, load_kafka_settings, parse_url
from eventbus.testing.conformance import unique, until
from eventbus.toolkit import ConsumerState, LinkState, ReportsBacklog, ReportsState

from .harness import KAFKA_URL, KafkaHarness

pytestmark = pytest.mark.kafka

SECRET = "s3cr3t-Pa55"
KAFKA_SH = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"


def subscription_of(bus: EventBus) -> KafkaSubscription:
    [subscription] = bus._consumers
    assert isinstance(subscription, KafkaSubscription)
    return subscription


async def backlog_until(
    subscription: KafkaSubscription,
    wanted: Callable[[dict[str, int]], bool],
    what: str,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Poll `backlog()` (as the bus does, only more often) until `wanted` holds."""
    deadline = time.monotonic() + timeout
    while True:
        backlog = await subscription.backlog()
        if backlog is not None and wanted(backlog):
            return backlog
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {backlog}")
        await asyncio.sleep(0.05)


def kafka_sh(command: str) -> None:
    done = subprocess.run(
        ["bash", str(KAFKA_SH), command], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"scripts/kafka.sh {command} failed: {done.stderr[-2000:]}"


async def test_backlog_is_the_consumer_lag_of_the_assigned_partitions(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("backlog"), unique("g")
    count, partitions = 30, 3

    class Ping(Event, stream=stream, type="ping"):
        n: int

    bus = kafka.bus(partitions=partitions)
    release = asyncio.Event()
    handled: list[int] = []

    @bus.subscribe(group=group)
    async def handle(event: Ping) -> None:
        await release.wait()
        handled.append(event.n)

    own = {f"{stream}[{p}]" for p in range(partitions)}

    def of_stream(backlog: dict[str, int]) -> int:
        return sum(lag for source, lag in backlog.items() if source in own)

    async with bus:
        subscription = subscription_of(bus)
        assert isinstance(subscription, ReportsState)
        assert isinstance(subscription, ReportsBacklog)
        assert isinstance(bus.broker, ReportsState)
        assert subscription.state() == ConsumerState(True)
        empty = await backlog_until(
            subscription, lambda b: own <= b.keys(), "every stream partition to be known"
        )
        assert set(empty.values()) == {0}, empty
        assert f"{stream}.{group}.replay[0]" in empty, "every assigned partition counts"

        await bus.publish_many([(Ping(n=n), f"key-{n}") for n in range(count)])
        # the handler holds the first event, so none is finished: every event is after
        # the group's committed offsets (the one in flight too, it is not committed)
        full = await backlog_until(
            subscription, lambda b: of_stream(b) == count, f"a backlog of {count}"
        )
        assert own <= full.keys() and all(lag >= 0 for lag in full.values()), full
        assert sum(full.values()) == count, f"nothing waits elsewhere: {full}"
        assert handled == []
        assert subscription.state().attached

        release.set()
        await until(lambda: len(handled) == count, what=f"all {count} events handled")
        drained = await backlog_until(
            subscription,
            lambda b: own <= b.keys() and not any(b.values()),
            "the backlog to drain",
        )
        assert set(drained.values()) == {0}


async def test_a_member_without_partitions_is_attached_and_says_so(kafka: KafkaHarness) -> None:
    stream, group = unique("idle"), unique("g")

    class Ping(Event, stream=stream, type="ping"):
        n: int

    def member() -> EventBus:
        bus = kafka.bus(partitions=1)

        @bus.subscribe(group=group)
        async def handle(event: Ping) -> None:
            pass

        return bus

    # one partition of the stream and one of the group's replay topic: the
    # cooperative-sticky assignor spreads them over two members, and a third holds none
    first, second, third = member(), member(), member()
    async with first:
        one = subscription_of(first)
        async with second, third:
            members = [one, subscription_of(second), subscription_of(third)]

            def details() -> list[str]:
                return sorted(m.state().detail for m in members if m.state().attached)

            # only once the rebalance settled: while a partition moves between two
            # members (revoked by one, not yet assigned to the other), two hold none
            await until(
                lambda: details() == ["", "", "no partitions assigned"],
                what="two members with a partition each, one attached without",
            )
            idle = next(m for m in members if m.state().detail)
            assert await backlog_until(idle, lambda b: b == {}, "an empty backlog") == {}
        await until(lambda: one.state() == ConsumerState(True), what="the first member alone")


@pytest.mark.skipif(
    KAFKA_URL != "kafka://127.0.0.1:9092",
    reason="stops and restarts the broker of scripts/kafka.sh",
)
async def test_state_follows_the_broker_going_down_and_back(kafka: KafkaHarness) -> None:
    stream, group = unique("outage"), unique("g")

    class Ping(Event, stream=stream, type="ping"):
        n: int

    bus = kafka.bus(partitions=2)
    handled: list[int] = []

    @bus.subscribe(group=group)
    async def handle(event: Ping) -> None:
        handled.append(event.n)

    async with bus:
        broker = bus.broker
        assert isinstance(broker, KafkaBroker)
        subscription = subscription_of(bus)
        await bus.publish(Ping(n=0))
        await until(lambda: handled == [0], what="the first event")
        assert broker.state() == LinkState(True, "", 0)
        assert subscription.state() == ConsumerState(True)
        try:
            stopping = asyncio.create_task(asyncio.to_thread(kafka_sh, "stop"))
            await until(lambda: not broker.state().connected, what="the producer to see it down")
            await until(lambda: not subscription.state().attached, what="the consumer detached")
            await stopping
            down, detached = broker.state(), subscription.state()
            assert down.detail and detached.detail, (down, detached)
            assert "9092" in down.detail or "brokers are down" in down.detail, down
            assert down.reconnects == 0
            assert await subscription.backlog() is None, "unknown while the broker is down"
        finally:
            await asyncio.to_thread(kafka_sh, "start")
        await until(lambda: broker.state().connected, timeout=60, what="the producer back up")
        await until(
            lambda: subscription.state().attached, timeout=60, what="the consumer attached again"
        )
        assert broker.state().reconnects >= 1
        assert broker.state().detail == ""
        await bus.publish(Ping(n=1))
        await until(lambda: 1 in handled, timeout=60, what="an event after the outage")
        # event 0 may come again: the broker can stop before its offset commit (every
        # commit_interval_ms) reached it, and at-least-once hands it out once more
        assert handled[-1] == 1 and set(handled) == {0, 1} and handled.count(1) == 1, handled
        assert await backlog_until(
            subscription, lambda b: bool(b) and not any(b.values()), "no backlog"
        )


# --- the link logic alone, fed librdkafka's callbacks by hand ------------------------------


def configs(**options: object) -> ClientConfigs:
    return ClientConfigs(parse_url("kafka://b1:9092"), load_kafka_settings(dict(options)))


def statistics(*brokers: tuple[str, str], group: str | None = None) -> str:
    """A librdkafka statistics document: `(name, state)` of each broker connection."""
    entries: dict[str, object] = {
        name: {
            "state": state,
            "nodeid": -1 if name.endswith("/bootstrap") else int(name.rpartition("/")[2]),
            "source": "configured" if name.endswith("/bootstrap") else "learned",
        }
        for name, state in brokers
    }
    stats: dict[str, object] = {"brokers": entries}
    if group is not None:
        entries["GroupCoordinator"] = {"state": "UP", "nodeid": -1, "source": "logical"}
        stats["cgrp"] = {"state": group, "join_state": "steady"}
    return json.dumps(stats)


def error(code: int, text: str, fatal: bool = False) -> KafkaError:
    return KafkaError(code, text, fatal=fatal)


def test_statistics_interval_option() -> None:
    default = configs()
    assert default.settings.statistics_interval_ms == 1000
    assert default.producer(statistics=True)["statistics.interval.ms"] == 1000
    assert default.consumer("g", statistics=True)["statistics.interval.ms"] == 1000
    # the sync producer, the admin client and the dead-letter reader poll only now and
    # then: statistics would pile up in their queues
    assert "statistics.interval.ms" not in default.producer()
    assert "statistics.interval.ms" not in default.consumer("g")
    assert "statistics.interval.ms" not in default.admin()
    assert (
        configs(statistics_interval_ms=0).producer(statistics=True)["statistics.interval.ms"] == 0
    )
    mine = configs(consumer_config={"statistics.interval.ms": 250})
    assert mine.consumer("g", statistics=True)["statistics.interval.ms"] == 250
    for bad in (-1, 86_400_001, "often"):
        with pytest.raises(ConfigurationError, match="EVENTBUS_KAFKA_STATISTICS_INTERVAL_MS"):
            configs(statistics_interval_ms=bad)


def test_producer_link_is_down_on_errors_and_up_on_statistics() -> None:
    link = ProducerLink(configs(sasl_password=SECRET))
    assert link.state() == LinkState(False, "not started")
    link.start(link.configs.producer(statistics=True))
    assert link.state() == LinkState(True), "the cluster answered at start"
    link.on_statistics(statistics(("b1:9092/1", "INIT")))
    assert link.state().connected, "not connected yet is not down"
    link.on_statistics(statistics(("b1:9092/1", "UP"), ("b2:9092/2", "UP")))
    link.on_error(error(KafkaError._TRANSPORT, "b1:9092/1: Disconnected"))
    assert link.state().connected, "another node is still connected"
    link.on_error(error(KafkaError._TRANSPORT, f"b2:9092/2: Connect failed ({SECRET})"))
    down = link.state()
    assert down == LinkState(False, "b2:9092/2: Connect failed (***)", 0), "scrubbed"
    link.on_error(error(KafkaError._ALL_BROKERS_DOWN, "2/2 brokers are down"))
    link.on_statistics(statistics(("b1:9092/bootstrap", "CONNECT")))
    assert link.state() == down, "the connection error that led here stays the detail"
    link.on_statistics(statistics(("b1:9092/bootstrap", "UP")))
    assert not link.state().connected, "a bootstrap connection is no node yet"
    link.on_statistics(statistics(("b1:9092/1", "UP")))
    assert link.state() == LinkState(True, "", 1)
    link.on_error(error(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert link.state() == LinkState(False, "all Kafka brokers are down (1/1 brokers are down)", 1)
    link.on_statistics(statistics(("b1:9092/1", "UP")))
    assert link.state() == LinkState(True, "", 2)
    link.on_statistics("not json")
    assert link.state() == LinkState(True, "", 2)
    link.on_error(error(KafkaError._FATAL, "producer fenced", fatal=True))
    link.on_statistics(statistics(("b1:9092/1", "UP")))
    assert link.state() == LinkState(False, "fatal error: producer fenced", 2)
    link.closed = True
    assert not link.state().connected


def test_producer_link_without_statistics_is_not_tracked() -> None:
    link = ProducerLink(configs(statistics_interval_ms=0))
    link.start(link.configs.producer(statistics=True))
    assert not link.tracking
    link.on_error(error(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert link.state() == LinkState(True), "nothing would tell when it is up again"


def test_group_link_follows_the_coordinator() -> None:
    link = GroupLink(configs())
    link.start(link.configs.consumer("g", statistics=True))
    assert link.problem() is None
    link.on_error(error(KafkaError._TRANSPORT, "b1:9092/2: Disconnected"))
    assert link.problem() is None, "a partition leader is not the coordinator"
    link.on_error(error(KafkaError._TRANSPORT, "GroupCoordinator: Connect failed"))
    assert (
        link.problem() == "the group coordinator is not reachable: GroupCoordinator: Connect failed"
    )
    link.coordinator(json.loads(statistics(("b1:9092/1", "UP"), group="up")))
    assert link.problem() is None
    link.coordinator(json.loads(statistics(("b1:9092/1", "UP"), group="query-coord")))
    assert link.problem() == (
        "the group coordinator is not reachable: librdkafka's group state is 'query-coord'"
    )
    link.joined()  # an assignment came: the coordinator answered
    assert link.problem() is None
    link.on_error(error(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert link.problem() == (
        "the group coordinator is not reachable: all Kafka brokers are down (1/1 brokers are down)"
    )
