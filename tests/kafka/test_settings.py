"""Kafka settings, offset bookkeeping and secrets: what fails at start-up, and how."""

from __future__ import annotations

import pytest

from eventbus import ConfigurationError, EventBus
from eventbus.adapters.kafka.offsets import PartitionTracker
from eventbus.adapters.kafka.settings import (
    ClientConfigs,
    SubscriptionOptions,
    load_kafka_settings,
    parse_url,
)
from eventbus.toolkit import SubscriptionSpec, subscription_options

pytestmark = pytest.mark.kafka

SECRET = "s3cr3t-Pa55"


def test_tracker_commits_only_the_contiguous_prefix() -> None:
    tracker = PartitionTracker()
    assert tracker.commit_point() is None
    for offset in range(10, 15):
        assert tracker.fetched(offset)
    assert tracker.commit_point() == 10
    tracker.finished(12)
    tracker.finished(11)
    assert tracker.commit_point() == 10, "10 is not finished: nothing may be committed"
    tracker.finished(10)
    assert tracker.commit_point() == 13
    tracker.finished(14)
    assert tracker.commit_point() == 13
    tracker.finished(13)
    assert tracker.commit_point() == 15
    assert tracker.window == 0 and tracker.unfinished == 0


def test_tracker_ignores_stale_fetches_and_acks_and_rewinds() -> None:
    tracker = PartitionTracker()
    for offset in (0, 1, 2, 5):  # gaps are fine (compaction, transaction markers)
        tracker.fetched(offset)
    assert not tracker.fetched(1), "a re-fetch of a tracked offset is stale"
    assert not tracker.finished(3)
    tracker.finished(0)
    tracker.finished(2)
    assert tracker.commit_point() == 1
    tracker.rewind(1)
    assert tracker.commit_point() == 1
    assert not tracker.finished(5), "acks from before the rewind are forgotten"
    tracker.fetched(1)
    tracker.finished(1)
    assert tracker.commit_point() == 2


def test_url_parsing() -> None:
    target = parse_url("kafka://b1:9093,b2,[::1]:9094")
    assert target.bootstrap == "b1:9093,b2:9092,[::1]:9094"
    secure = parse_url(f"kafka://alice:{SECRET}@b1:9092")
    assert secure.username == "alice"
    assert SECRET not in repr(secure) and SECRET not in secure.redacted
    for bad in ("kafka://", "kafka://h:notaport", "kafka://h:9092/path"):
        with pytest.raises(ConfigurationError) as info:
            parse_url(bad)
        assert "EVENTBUS_URL" in str(info.value)


def test_options_are_validated_and_named() -> None:
    with pytest.raises(ConfigurationError, match="prefetch"):
        EventBus("kafka://127.0.0.1:9092", prefetch=10)
    with pytest.raises(ConfigurationError, match="EVENTBUS_KAFKA_PARTITIONS"):
        EventBus("kafka://127.0.0.1:9092", partitions=0)
    with pytest.raises(ConfigurationError, match="EVENTBUS_KAFKA_COMPRESSION"):
        EventBus("kafka://127.0.0.1:9092", compression="rar")


def test_a_resumed_partition_waits_at_most_25_ms_for_the_fetch_in_flight() -> None:
    """librdkafka adds a resumed partition to the next fetch only; the broker holds the
    one in flight (for the idle retry partition, say) up to fetch.wait.max.ms."""
    consumer = ClientConfigs(parse_url("kafka://h:1"), load_kafka_settings({})).consumer("g")
    assert consumer["fetch.wait.max.ms"] == 25


def test_a_consumer_behind_by_its_prefetch_fetches_again_within_25_ms() -> None:
    """librdkafka postpones a partition's fetch once its local queue is full by
    fetch.queue.backoff.ms, 1000 ms by default: a backlog larger than the prefetch was
    read in bursts a second apart. A user's value still wins."""
    configs = ClientConfigs(parse_url("kafka://h:1"), load_kafka_settings({}))
    consumer = configs.consumer("g")
    assert consumer["fetch.queue.backoff.ms"] == 25
    assert consumer["queued.max.messages.kbytes"] == 16 * 1024
    chosen = configs.consumer("g", {"fetch.queue.backoff.ms": 200})
    assert chosen["fetch.queue.backoff.ms"] == 200


def test_environment_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_KAFKA_PARTITIONS", "12")
    monkeypatch.setenv("EVENTBUS_KAFKA_CONFIG", '{"fetch.wait.max.ms": 50}')
    settings = load_kafka_settings({"linger_ms": 1})
    assert settings.partitions == 12
    configs = ClientConfigs(parse_url("kafka://h:1"), settings)
    consumer = configs.consumer("g")
    assert consumer["fetch.wait.max.ms"] == 50
    assert consumer["enable.auto.commit"] is False
    producer = configs.producer()
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    assert producer["linger.ms"] == 1


def test_sasl_and_ssl_settings_reach_librdkafka_and_stay_secret() -> None:
    settings = load_kafka_settings(
        {
            "security_protocol": "sasl_ssl",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "bob",
            "sasl_password": SECRET,
            "ssl_ca_location": "/etc/ca.pem",
            "config": {"ssl.key.password": SECRET + "2"},
        }
    )
    configs = ClientConfigs(parse_url("kafka://b1:9093"), settings)
    common = configs.common
    assert common["security.protocol"] == "sasl_ssl"
    assert common["sasl.mechanism"] == "SCRAM-SHA-512"
    assert common["sasl.username"] == "bob" and common["sasl.password"] == SECRET
    assert common["ssl.ca.location"] == "/etc/ca.pem"
    assert SECRET not in repr(settings)
    assert SECRET not in str(configs.describe(common))
    assert configs.scrub(f"failed with {SECRET}2 and {SECRET}") == "failed with *** and ***"


async def test_secrets_never_in_reprs_errors_or_logs(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"kafka://alice:{SECRET}@127.0.0.1:1"  # nothing listens on port 1
    bus = EventBus(url, connect_timeout=2, config={"sasl.password": SECRET})
    assert SECRET not in repr(bus) and SECRET not in repr(bus.settings)
    assert SECRET not in repr(bus.broker)
    with pytest.raises(ConnectionError) as info:
        await bus.start()
    assert "127.0.0.1:1" in str(info.value)
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigurationError) as bad:
        EventBus(f"kafka://alice:{SECRET}@h:1", partitions="many")
    assert SECRET not in str(bad.value)
    out, err = capsys.readouterr()
    assert SECRET not in out and SECRET not in err


async def test_unknown_librdkafka_property_fails_at_start_naming_the_option() -> None:
    bus = EventBus("kafka://127.0.0.1:9092", config={"no.such.property": "1"})
    with pytest.raises(ConfigurationError) as info:
        await bus.start()
    assert "no.such.property" in str(info.value)
    assert "EVENTBUS_KAFKA_CONFIG" in str(info.value)


def test_byte_buffer_is_validated_and_bounds_the_client_prefetch() -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_KAFKA_PARTITION_BUFFER_BYTES"):
        EventBus("kafka://127.0.0.1:9092", partition_buffer_bytes=10)
    configs = ClientConfigs(parse_url("kafka://h:1"), load_kafka_settings({}))
    default = configs.consumer("g")
    assert default["queued.max.messages.kbytes"] == 16 * 1024
    assert default["fetch.max.bytes"] == 16 * 1024 * 1024
    small = configs.consumer("g", None, 2 * 1024 * 1024)
    assert small["queued.max.messages.kbytes"] == 1024, "a quarter of the buffer, >= 1 MiB"
    mine = ClientConfigs(
        parse_url("kafka://h:1"),
        load_kafka_settings({"consumer_config": {"queued.max.messages.kbytes": 7}}),
    )
    assert mine.consumer("g")["queued.max.messages.kbytes"] == 7, "explicit settings win"
    large = ClientConfigs(
        parse_url("kafka://h:1"), load_kafka_settings({"config": {"message.max.bytes": 40 << 20}})
    )
    assert large.consumer("g")["fetch.max.bytes"] == 40 << 20, "librdkafka: >= message.max.bytes"
    assert configs.producer()["message.max.bytes"] == configs.producer_max_bytes == 64 << 20


def test_subscription_byte_buffer_is_validated() -> None:
    def options(value: int) -> SubscriptionOptions:
        spec = SubscriptionSpec("s", "g", ("#",), None, options={"partition_buffer_bytes": value})
        return subscription_options(SubscriptionOptions, spec, "Kafka")

    with pytest.raises(ConfigurationError, match="PARTITION_BUFFER_BYTES"):
        options(-1)
    assert options(1 << 20).partition_buffer_bytes


def test_publish_timeout_bounds_the_producer_delivery_timeout() -> None:
    configs = ClientConfigs(parse_url("kafka://h:1"), load_kafka_settings({}))
    assert configs.producer()["message.timeout.ms"] == 120_000
    assert "message.timeout.ms" not in configs.producer(transactional=True), (
        "librdkafka bounds a transactional producer's by transaction.timeout.ms"
    )
    short = ClientConfigs(parse_url("kafka://h:1"), load_kafka_settings({"publish_timeout": 2.5}))
    assert short.producer()["message.timeout.ms"] == 2500
    mine = ClientConfigs(
        parse_url("kafka://h:1"),
        load_kafka_settings({"producer_config": {"message.timeout.ms": 7000}}),
    )
    assert mine.producer()["message.timeout.ms"] == 7000, "explicit settings win"
    with pytest.raises(ConfigurationError, match="EVENTBUS_KAFKA_PUBLISH_TIMEOUT"):
        EventBus("kafka://127.0.0.1:9092", publish_timeout=0)
