"""Records near the size limits: a dead letter is always storable when the original
record was (its topic takes more, and the added headers shrink to fit); a dead letter
that truly cannot be stored is a clear, reported error, never a silent stall; and an
event too large for its topic is refused at publish with a clear PublishError."""

import asyncio
import json

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventbus import Event, PublishError, RetryPolicy
from eventbus.testing.conformance import unique, until, wait_dead

from .harness import BOOTSTRAP, KafkaHarness, raw_produce

pytestmark = pytest.mark.kafka

TYPED = ("ce_type", b"order.created")


def typed(event_id: str) -> list[tuple[str, bytes]]:
    return [TYPED, ("ce_id", event_id.encode())]


#: just under what a plain confluent producer sends by default (message.max.bytes 1000000)
NEAR_LIMIT = 995_000


def _body(order_id: str, size: int) -> bytes:
    start = json.dumps({"order_id": order_id, "pad": ""}).encode()
    return start[:-2] + b"x" * (size - len(start)) + b'"}'


def _deep(depth: int) -> None:
    if depth:
        _deep(depth - 1)
    raise ValueError("m" * 5000)  # a long message and a long stack trace


async def test_dead_letters_of_records_near_the_size_limit_are_stored(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("large"), unique("g")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    got: list[str] = []
    bus = kafka.bus(partitions=1)

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=1))
    async def handle(event: Created) -> None:
        if event.order_id != "after":
            _deep(60)
        got.append(event.order_id)

    big_body = _body("big-body", NEAR_LIMIT)
    big_key = b"k" * NEAR_LIMIT
    small = _body("big-key", 100)
    async with bus:
        await asyncio.to_thread(raw_produce, stream, big_body, b"k", typed("big-body"))
        await asyncio.to_thread(raw_produce, stream, small, big_key, typed("big-key"))
        await bus.publish(Created(order_id="after"), key="k")
        dead = await wait_dead(bus, stream, group, 2)
        await until(lambda: got == ["after"], what="the event behind the large records")
        assert bus.health().ok, bus.health()
    assert [d.body for d in dead] == [big_body, small]
    assert dead[1].key == big_key.decode()
    for letter in dead:
        assert letter.headers["x-exception-type"] == "ValueError"
        assert "_deep" in letter.headers["x-exception-stacktrace"]


async def test_dead_letter_shrinks_to_fit_or_is_refused_clearly(kafka: KafkaHarness) -> None:
    """Topics made by someone else, all with max.message.bytes 120000: the stack trace of
    a dead letter that would not fit is left out; a record so close to the limit that its
    dead letter cannot fit at all is retried, reported and named, not silently stuck."""
    stream, group = unique("tight"), unique("g")
    limit = 120_000
    names = [stream, f"{stream}.{group}.dlq", f"{stream}.{group}.replay"]
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    config = {"max.message.bytes": str(limit)}
    for future in admin.create_topics([NewTopic(n, 1, 1, config=config) for n in names]).values():
        await asyncio.to_thread(future.result, 30)
    kafka.extra_topics.update(names)
    # created is not yet visible: the bus below (topic creation off) must find them
    await until(
        lambda: set(names) <= set(admin.list_topics(timeout=10).topics),
        what="the new topics in the cluster metadata",
    )

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    bus = kafka.bus(create_topics=False)

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=1))
    async def handle(event: Created) -> None:
        _deep(60)

    fits = _body("fits", 115_000)
    too_big = _body("too-big", limit - 500)
    async with bus:
        await asyncio.to_thread(raw_produce, stream, fits, b"k", typed("fits"))
        [dead] = await wait_dead(bus, stream, group, 1)
        assert bus.health().ok, bus.health()
        await asyncio.to_thread(raw_produce, stream, too_big, b"k", typed("too-big"))
        await until(lambda: not bus.health().ok, what="the unstorable dead letter reported")
        problems = " ".join(bus.health().problems.values())
    assert dead.body == fits
    assert "shortened" in dead.headers["x-exception-stacktrace"]
    assert dead.headers["x-exception-message"].startswith("m" * 100)
    assert "cannot be stored" in problems and "max.message.bytes" in problems, problems


async def test_oversized_key_or_headers_are_refused_at_publish(kafka: KafkaHarness) -> None:
    stream = unique("oversized")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    bus = kafka.bus(partitions=1)
    async with bus:
        with pytest.raises(PublishError) as key_error:
            await bus.publish(Created(order_id="k"), key="k" * 2_000_000)
        with pytest.raises(PublishError) as header_error:
            await bus.publish(Created(order_id="h"), headers={"big": "h" * 2_000_000})
        await bus.publish(Created(order_id="fine"), key="k")  # the producer is unharmed
    assert "too large" in str(key_error.value) and "key 2000000" in str(key_error.value)
    assert "too large" in str(header_error.value) and stream in str(header_error.value)
