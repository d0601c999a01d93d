"""Kafka over SASL_SSL with SCRAM-SHA-512 against a real listener (scripts/kafka-secure.sh):
a round trip through a consumer group, and a wrong password or a wrong CA refused at
start-up, promptly, with an error naming the setting. The SCRAM password never shows in
any log line (eventbus's, librdkafka's own, stdlib logging), repr or error.

The broker's client listener speaks nothing but SASL_SSL, so a round trip proves both.
No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventbus import ConfigurationError, EventBus, SyncPublisher
from eventbus.adapters.kafka import KafkaBroker
from eventbus.testing.conformance import make_events, unique, until

from .conftest import SecureKafka
from .watch import SecretsWatch

pytestmark = pytest.mark.kafka

#: a refused start-up must say so within this many seconds (connect_timeout is 15)
PROMPT = 10.0


class Buses:
    """The buses of one test: stopped, and the topics they made deleted, afterwards."""

    def __init__(self, kafka: SecureKafka, watch: SecretsWatch) -> None:
        self.kafka = kafka
        self.watch = watch
        self.made: list[EventBus] = []

    def bus(self, url: str | None = None, **options: Any) -> EventBus:
        bus = EventBus(url or self.kafka.url, **options)
        self.made.append(bus)
        self.watch.note(bus, bus.settings, bus.broker)
        return bus

    async def close(self) -> None:
        for bus in self.made:
            self.watch.note(bus.health())
            await bus.stop()
        for bus in self.made:
            broker = bus.broker
            assert isinstance(broker, KafkaBroker)
            if broker.topics.created:
                await asyncio.to_thread(broker.topics.delete, broker.topics.created)


@pytest.fixture
async def buses(secure_kafka: SecureKafka, secrets_watch: SecretsWatch) -> AsyncIterator[Buses]:
    made = Buses(secure_kafka, secrets_watch)
    try:
        yield made
    finally:
        await made.close()


async def refused(buses: Buses, url: str | None = None, **opts: Any) -> str:
    """Start a bus that must be refused promptly with a ConfigurationError; -> its text."""
    bus = buses.bus(url, **opts)
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await bus.start()
    took = time.monotonic() - started
    buses.watch.note(info.value)
    assert took < PROMPT, f"refused only after {took:.1f}s: {info.value}"
    buses.watch.report(f"refused in {took:.2f}s: {info.value}")
    return str(info.value)


async def test_round_trip_over_sasl_ssl_with_scram_sha_512(buses: Buses) -> None:
    kafka = buses.kafka
    events = make_events(unique("sasl"))
    Created = events.Created
    seen: list[int] = []
    count = 50
    bus = buses.bus(**kafka.options(partitions=3))

    @bus.subscribe(group="billing")
    async def billing(event: Created) -> None:  # type: ignore[valid-type]
        seen.append(event.n)  # type: ignore[attr-defined]

    started = time.monotonic()
    async with bus:
        for n in range(count):
            await bus.publish(Created(order_id=f"o-{n}", n=n), key=f"o-{n % 5}")
        await until(lambda: len(seen) >= count, 60, f"{count} events over SASL_SSL")
        health = bus.health()
        buses.watch.note(health)
        assert health.ok, health
    took = time.monotonic() - started
    assert sorted(seen) == list(range(count))
    buses.watch.report(f"SASL_SSL SCRAM-SHA-512 round trip of {count} events: {took:.2f}s")
    text = buses.watch.assert_hidden(kafka.password)
    assert "bus.started" in text, "the watch sees eventbus's log lines"


async def test_credentials_in_the_url_work_too_and_stay_hidden(buses: Buses) -> None:
    kafka = buses.kafka
    url = f"kafka://{kafka.username}:{kafka.password}@127.0.0.1:19092"
    options = kafka.options()
    del options["sasl_username"], options["sasl_password"]
    bus = buses.bus(url, **options)
    events = make_events(unique("sasl"))
    async with bus:
        await bus.publish(events.Created(order_id="o-1"), key="o-1")
    text = buses.watch.assert_hidden(kafka.password)
    assert f"kafka://{kafka.username}:***@127.0.0.1:19092" in text


async def test_a_wrong_password_fails_at_start_up_promptly_and_clearly(buses: Buses) -> None:
    kafka = buses.kafka
    wrong = "WrongScramPw-7d2e41"
    # librdkafka's own security debug lines go to stderr, which the watch reads too
    text = await refused(buses, **kafka.options(sasl_password=wrong, config={"debug": "security"}))
    assert "refused the SASL login of user 'eventbus-app' (SCRAM-SHA-512)" in text
    assert "EVENTBUS_KAFKA_SASL_PASSWORD" in text
    assert "with SASL mechanism SCRAM-SHA-512" in text, "no secret, so not masked"
    seen = buses.watch.assert_hidden(wrong, kafka.password)
    assert "Authentication failed" in seen, "the watch sees librdkafka's log lines"


async def test_a_wrong_ca_fails_at_start_up_promptly_naming_the_setting(buses: Buses) -> None:
    kafka = buses.kafka
    other = str(kafka.pki.other_ca)
    text = await refused(buses, **kafka.options(ssl_ca_location=other))
    assert "EVENTBUS_KAFKA_SSL_CA_LOCATION" in text and other in text
    assert "certificate verify failed" in text
    buses.watch.assert_hidden(kafka.password)


async def test_the_default_trust_store_refuses_our_ca(buses: Buses) -> None:
    kafka = buses.kafka
    options = kafka.options()
    del options["ssl_ca_location"]
    text = await refused(buses, **options)
    assert "EVENTBUS_KAFKA_SSL_CA_LOCATION" in text and "the system CAs" in text
    buses.watch.assert_hidden(kafka.password)


async def test_the_sync_face_publishes_over_sasl_ssl_and_names_the_setting_when_refused(
    buses: Buses,
) -> None:
    kafka = buses.kafka
    Created = make_events(unique("sasl")).Created
    seen: list[int] = []
    bus = buses.bus(**kafka.options(partitions=1))

    @bus.subscribe(group="billing")
    async def billing(event: Created) -> None:  # type: ignore[valid-type]
        seen.append(event.n)  # type: ignore[attr-defined]

    def publish(n: int, **changes: Any) -> None:
        with SyncPublisher(kafka.url, **kafka.options(partitions=1, **changes)) as publisher:
            buses.watch.note(publisher)
            publisher.publish(Created(order_id=f"o-{n}", n=n), key=f"o-{n}")

    async with bus:
        await asyncio.to_thread(publish, 1)
        await until(lambda: seen == [1], 60, "the sync face's event")
    wrong = "WrongScramPw-0b77c3"
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await asyncio.to_thread(publish, 2, sasl_password=wrong)
    assert time.monotonic() - started < PROMPT
    buses.watch.note(info.value)
    assert "EVENTBUS_KAFKA_SASL_PASSWORD" in str(info.value)
    buses.watch.assert_hidden(wrong, kafka.password)
