"""Bad input on a Kafka stream is dead-lettered with the reason, and the consumer goes on."""

import asyncio
import json

import pytest

from eventbus import Event
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness, raw_produce

pytestmark = pytest.mark.kafka


async def test_bad_records_are_dead_lettered_with_reason_and_consumer_lives(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("bad"), unique("g")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    got: list[str] = []
    bus = kafka.bus(partitions=1, max_message_bytes=4096)

    @bus.subscribe(group=group)
    async def handle(event: Created) -> None:
        got.append(event.order_id)

    typed = [("ce_type", b"order.created")]
    bad = [
        (b"{not json", typed, "eventbus.DecodeError"),
        (b'{"order_id": 42}', typed, "pydantic.ValidationError"),
        (json.dumps({"order_id": "x" * 8000}).encode(), typed, "eventbus.MessageTooLarge"),
        (b'{"order_id": "untyped"}', [], "eventbus.DecodeError"),
    ]
    async with bus:
        for body, headers, _reason in bad:
            await asyncio.to_thread(raw_produce, stream, body, b"k", headers)
            await bus.publish(Created(order_id=f"ok-{len(got)}"), key="k")
        await until(lambda: len(got) == 4, what="the good events between the bad ones")

        async def letters() -> list[object]:
            return [d async for d in bus.dead_letters(stream, group)]

        found: list[object] = []
        for _ in range(600):
            found = await letters()
            if len(found) == 4:
                break
            await asyncio.sleep(0.05)
    assert len(found) == 4
    for letter, (body, _headers, reason) in zip(found, bad, strict=True):
        assert letter.body == body  # type: ignore[attr-defined]
        assert letter.headers["x-exception-type"] == reason  # type: ignore[attr-defined]
        assert letter.headers["x-exception-message"]  # type: ignore[attr-defined]
        assert letter.headers["x-original-partition"] == "0"  # type: ignore[attr-defined]
    offsets = [int(d.headers["x-original-offset"]) for d in found]  # type: ignore[attr-defined]
    assert offsets == [0, 2, 4, 6], "each bad record's own offset"
    assert "no event type" in found[3].headers["x-exception-message"]  # type: ignore[attr-defined]
