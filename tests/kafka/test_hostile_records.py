"""Records a foreign producer writes that confluent-kafka or a naive consumer chokes on: a
header name that is not UTF-8, no event id, forged eventbus bookkeeping headers. Each is
handled or dead-lettered with its reason, and the partition behind it keeps flowing."""

import asyncio

import pytest

from eventbus import Context, Event, Reject, RetryPolicy
from eventbus.deadletter import DEAD_LETTER_HEADERS
from eventbus.testing.conformance import unique, until, wait_dead
from eventbus.wire import derived_id

from .harness import KafkaHarness, kcat_produce, raw_produce

pytestmark = pytest.mark.kafka

TYPED: tuple[str | bytes, bytes] = ("ce_type", b"order.created")


async def test_undecodable_header_name_is_dead_lettered_and_the_partition_flows(
    kafka: KafkaHarness,
) -> None:
    """confluent-kafka cannot decode a header name that is not UTF-8 (`headers()` raises,
    then hands out a list holding a NULL): on the stream (read by the pump) and on the
    group's retry topic (read first by the poll thread, for the due time), such a record
    becomes a dead letter without the unreadable header; nothing dies."""
    stream, group = unique("hdrname"), unique("g")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    got: list[str] = []
    bus = kafka.bus(partitions=1)

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=2, backoff=0.01, delayed=True))
    async def handle(event: Created) -> None:
        got.append(event.order_id)

    body = b'{"order_id": "bad-name"}'
    async with bus:
        # warm up: CPython specialises the pump's calls in a hot loop (see records.py)
        await bus.publish_many([(Created(order_id="warm"), "k") for _ in range(100)])
        await until(lambda: len(got) == 100, what="the warm-up events")
        got.clear()
        headers = [(b"\xffbad", b"v"), TYPED, ("tenant", b"acme")]
        await asyncio.to_thread(kcat_produce, stream, body, b"k", headers)
        retry = f"{stream}.{group}.retry.0"
        await asyncio.to_thread(kcat_produce, retry, body, b"k", [(b"\xfebad", b"v"), TYPED])
        await bus.publish(Created(order_id="after"), key="k")
        dead = await wait_dead(bus, stream, group, 2)
        await until(lambda: got == ["after"], what="the event behind the bad records")
        assert bus.health().ok, bus.health()
        await bus.publish(Created(order_id="later"), key="k")
        await until(lambda: got == ["after", "later"], what="the consumer to go on")
    reasons = sorted(d.headers["x-exception-message"] for d in dead)
    assert "b'\\xfebad'" in reasons[0] and "b'\\xffbad'" in reasons[1]
    for letter in dead:
        assert letter.body == body
        assert letter.headers["x-exception-type"] == "eventbus.DecodeError"
        assert "not valid UTF-8" in letter.headers["x-exception-message"]
        assert "missing from this copy" in letter.headers["x-exception-message"]
        assert letter.headers["ce_type"] == "order.created", "the readable headers are kept"
    assert {d.headers.get("tenant") for d in dead} == {"acme", None}


async def test_id_less_records_get_one_stable_id_each(kafka: KafkaHarness) -> None:
    """Records without `ce_id` (kcat with just a type) or with an empty one: each gets the
    id derived from its position in the stream, on every attempt (a delayed retry comes
    back through the retry topic), in the dead-letter listing, and after a replay."""
    stream, group = unique("idless"), unique("g")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    seen: list[tuple[str, str, int, int | None]] = []
    bus = kafka.bus(partitions=1)

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=2, backoff=0.05, delayed=True))
    async def handle(event: Created, ctx: Context) -> None:
        seen.append((event.order_id, ctx.envelope.id, ctx.attempt, ctx.offset))
        if event.order_id == "reject":
            raise Reject("dead-letter me")
        if ctx.attempt == 1:
            raise RuntimeError("once")

    same = b'{"order_id": "same"}'
    async with bus:
        await asyncio.to_thread(kcat_produce, stream, same, None, [TYPED])
        await asyncio.to_thread(kcat_produce, stream, same, None, [TYPED])
        await asyncio.to_thread(raw_produce, stream, same, None, [TYPED, ("ce_id", b"")])
        await asyncio.to_thread(raw_produce, stream, b'{"order_id": "reject"}', None, [TYPED])
        await until(lambda: len(seen) == 7, what="two tries of three records, one of the last")
        [dead] = await wait_dead(bus, stream, group, 1)
        assert await bus.replay_dead_letters(stream, group) == 1
        await until(lambda: len(seen) == 8, what="the replayed record")
    ids = [derived_id("kafka", stream, 0, offset) for offset in range(4)]
    assert len(set(ids)) == 4
    for offset, event_id in enumerate(ids[:3]):
        assert sorted((a, o) for _, i, a, o in seen if i == event_id) == [(1, offset), (2, offset)]
    assert [(i, o) for name, i, _, o in seen if name == "reject"] == [(ids[3], 3)] * 2
    assert dead.envelope.id == ids[3], "the listing shows the id the handler saw"


async def test_foreign_bookkeeping_headers_are_not_trusted(kafka: KafkaHarness) -> None:
    """On the stream, `x-eventbus-attempt`, `x-eventbus-origin-*` and every dead-letter
    header come from whoever wrote the record: the whole retry policy runs from attempt 1
    at the record's real position, and the dead letter carries only what the
    dead-lettering side wrote."""
    stream, group = unique("forged"), unique("g")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    tries: list[tuple[int, str, int | None, int | None]] = []
    bus = kafka.bus(partitions=1)

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=3, backoff=0.01, delayed=True))
    async def handle(event: Created, ctx: Context) -> None:
        tries.append((ctx.attempt, ctx.envelope.id, ctx.partition, ctx.offset))
        raise RuntimeError("always")

    forged = [
        ("x-eventbus-attempt", b"99"),
        ("x-eventbus-origin-partition", b"7"),
        ("x-eventbus-origin-offset", b"4242"),
        ("X-Exception-Type", b"forged"),
        *[(name, b"forged") for name in DEAD_LETTER_HEADERS],
    ]
    body = b'{"order_id": "forged"}'
    async with bus:
        headers = [TYPED, ("ce_id", b"forged-1"), *forged]
        await asyncio.to_thread(raw_produce, stream, body, b"k", headers)
        [dead] = await wait_dead(bus, stream, group, 1)
    assert [attempt for attempt, *_ in tries] == [1, 2, 3]
    assert {(i, p, o) for _, i, p, o in tries} == {("forged-1", 0, 0)}
    headers = dead.headers
    assert headers["x-attempts"] == "3"
    assert (headers["x-original-partition"], headers["x-original-offset"]) == ("0", "0")
    assert headers["x-original-stream"] == stream and headers["x-original-group"] == group
    assert headers["x-exception-type"] == "RuntimeError"
    assert "forged" not in headers.values(), headers
    assert "x-eventbus-origin-offset" not in headers
