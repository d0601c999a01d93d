"""The Kafka harness of the conformance suite, and the raw client the Kafka tests share."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Producer

from eventbus import EventBus
from eventbus.adapters.kafka import KafkaBroker
from eventbus.testing.conformance import Harness

#: the broker started by scripts/kafka.sh
KAFKA_URL = os.environ.get("EVENTBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")
BOOTSTRAP = KAFKA_URL.removeprefix("kafka://")


RawHeaders = Sequence[tuple[str | bytes, bytes]]


def raw_produce(
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: RawHeaders | None = None,
) -> None:
    """Produce one record as a foreign client would: with a plain confluent Producer, or
    with kcat when a header name is not valid UTF-8 (confluent-kafka cannot write one)."""
    texts: list[tuple[str, str | bytes | None]] = []
    for name, header_value in headers or ():
        if isinstance(name, bytes):
            try:
                name = name.decode()
            except UnicodeDecodeError:
                kcat_produce(topic, value, key, headers or ())
                return
        texts.append((name, header_value))
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "allow.auto.create.topics": False})
    errors: list[Any] = []
    producer.produce(
        topic, value, key, headers=texts, on_delivery=lambda err, _m: errors.append(err)
    )
    producer.flush(30)
    if errors != [None]:
        raise AssertionError(f"raw produce to {topic!r} failed: {errors}")


def kcat_produce(topic: str, value: bytes, key: bytes | None, headers: RawHeaders) -> None:
    """Produce one record with kcat, header names and values as raw bytes (argv), the
    value from a file (sent whole, any bytes)."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not installed: run scripts/brokers.sh kafka (it installs it)"
    args: list[str | bytes] = [kcat, "-P", "-b", BOOTSTRAP, "-t", topic]
    if key is not None:
        args += ["-k", key]
    for name, header_value in headers:
        raw_name = name.encode() if isinstance(name, str) else name
        assert b"=" not in raw_name and b"\0" not in raw_name + header_value, "kcat cannot send it"
        args += ["-H", raw_name + b"=" + header_value]
    with tempfile.NamedTemporaryFile(prefix="eventbus-kcat-") as file:
        file.write(value)
        file.flush()
        done = subprocess.run([*args, file.name], capture_output=True, timeout=60, check=False)
    if done.returncode:
        raise AssertionError(f"kcat produce to {topic!r} failed: {done.stderr.decode()}")


def _raw(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


class KafkaHarness(Harness):
    name = "kafka"

    def __init__(self) -> None:
        self._brokers: list[KafkaBroker] = []
        #: more topics to delete at teardown (made by subprocesses or raw clients)
        self.extra_topics: set[str] = set()

    def url(self) -> str:
        return KAFKA_URL

    def bus(self, **options: Any) -> EventBus:
        bus = EventBus(self.url(), **options)
        broker = bus.broker
        assert isinstance(broker, KafkaBroker)
        self._brokers.append(broker)
        return bus

    async def inject_raw(
        self,
        stream: str,
        event_type: str | bytes | None,
        body: bytes,
        key: str | bytes | None = None,
        *,
        headers: Mapping[str | bytes, str | bytes] | None = None,
    ) -> None:
        raw: list[tuple[str | bytes, bytes]] = []
        if event_type is not None:
            raw.append(("ce_type", _raw(event_type)))
        raw += [(name, _raw(value)) for name, value in (headers or {}).items()]
        await asyncio.to_thread(
            raw_produce, stream, body, _raw(key) if key is not None else None, raw
        )

    async def teardown(self) -> None:
        """Delete the topics this test's buses created (cheap, keeps the broker small)."""
        names = set(self.extra_topics)
        for broker in self._brokers:
            names |= broker.topics.created
        if names and self._brokers:
            await asyncio.to_thread(self._brokers[0].topics.delete, names)
