"""`publish_timeout`: a publish the cluster does not confirm in time raises PublishError."""

from __future__ import annotations

import asyncio
import time

import pytest

from eventbus import PublishError
from eventbus.adapters.kafka import producer as producer_module
from eventbus.adapters.kafka.producer import AsyncProducer, Record
from eventbus.adapters.kafka.settings import ClientConfigs, load_kafka_settings, parse_url
from eventbus.toolkit import Message

pytestmark = pytest.mark.kafka


async def test_a_publish_nobody_confirms_raises_publish_error_after_publish_timeout() -> None:
    """Nothing listens on the port: the delivery report says the record timed out, and
    the publish raises PublishError once `publish_timeout` has passed, not later."""
    configs = ClientConfigs(
        parse_url("kafka://127.0.0.1:9"), load_kafka_settings({"publish_timeout": 1.0})
    )
    producer = AsyncProducer(configs)
    producer.start()
    started = time.monotonic()
    try:
        with pytest.raises(PublishError, match="timed out"):
            await asyncio.wait_for(producer.send(Record("t", b"{}", b"k", [], "e-1")), 30)
        took = time.monotonic() - started
        assert 0.9 <= took < 10, took
    finally:
        await producer.close(timeout=1)


async def test_a_published_event_nobody_confirms_is_named_in_its_publish_error() -> None:
    """The publish path keeps nothing of a record in flight (`send_message`): the error of
    its delivery report is described from the record librdkafka reports, with the event's
    id and topic, as `send` describes it from its own record."""
    configs = ClientConfigs(
        parse_url("kafka://127.0.0.1:9"), load_kafka_settings({"publish_timeout": 1.0})
    )
    producer = AsyncProducer(configs)
    producer.start()
    message = Message(
        "orders", "order.created", "k", b"{}", {"id": "e-42", "type": "order.created"}
    )
    try:
        with pytest.raises(PublishError, match="timed out") as failure:
            await asyncio.wait_for(producer.send_message(message), 30)
        assert "e-42" in str(failure.value) and "'orders'" in str(failure.value)
    finally:
        await producer.close(timeout=1)


async def test_a_batch_nobody_confirms_names_the_failed_record_by_its_key() -> None:
    """A batch keeps nothing per record in flight and librdkafka's reports carry no
    headers: its failure names the record by topic and key, and says the id is unknown
    (instead of naming an event "?")."""
    configs = ClientConfigs(
        parse_url("kafka://127.0.0.1:9"), load_kafka_settings({"publish_timeout": 1.0})
    )
    producer = AsyncProducer(configs)
    producer.start()
    messages = [
        Message("orders", "order.created", f"k{i}", b"{}", {"id": f"e-{i}"}) for i in range(3)
    ]
    try:
        with pytest.raises(PublishError, match="timed out") as failure:
            await asyncio.wait_for(producer.send_messages(messages), 30)
        text = str(failure.value)
        assert "on topic 'orders'" in text and "with key 'k" in text, text
        assert "its id is not reported back" in text and "event ?" not in text, text
    finally:
        await producer.close(timeout=1)


async def test_a_failing_callback_does_not_stop_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer's error callback logs each connection failure; if writing that log
    line raises (stderr closed), the poll thread lives on and the publish still gets its
    outcome instead of waiting forever."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("I/O operation on closed file.")

    monkeypatch.setattr(producer_module._log, "warning", broken)
    configs = ClientConfigs(
        parse_url("kafka://127.0.0.1:9"), load_kafka_settings({"publish_timeout": 1.0})
    )
    producer = AsyncProducer(configs)
    producer.start()
    try:
        with pytest.raises(PublishError, match="timed out"):
            await asyncio.wait_for(producer.send(Record("t", b"{}", b"k", [], "e-1")), 30)
    finally:
        await producer.close(timeout=1)


async def test_closing_fails_the_publishes_still_waiting() -> None:
    """A producer closed while a record waits for a broker that never answers: the record
    is purged, its publish raises PublishError at once (not after `publish_timeout`), and
    librdkafka's handle is closed (it stops connecting to the dead address)."""
    configs = ClientConfigs(
        parse_url("kafka://127.0.0.1:9"), load_kafka_settings({"publish_timeout": 120.0})
    )
    producer = AsyncProducer(configs)
    producer.start()
    sending = asyncio.ensure_future(producer.send(Record("t", b"{}", b"k", [], "e-1")))
    await asyncio.sleep(0)  # the record is handed to librdkafka
    started = time.monotonic()
    await producer.close(timeout=0.2)
    with pytest.raises(PublishError, match="e-1"):
        await asyncio.wait_for(sending, 10)
    assert time.monotonic() - started < 10
