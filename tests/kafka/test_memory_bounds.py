"""Memory stays bounded: a stuck handler cannot make a subscription hold more fetched
bytes than `partition_buffer_bytes`, `publish_many` holds no message while it awaits the
confirmations, a single publish holds no record of its own while it awaits its
confirmation, and the dead-letter listing streams (it never reads the whole topic before
yielding) and gives up within `admin_timeout` when it cannot read."""

import asyncio
import gc
import sys
import time
import zlib
from typing import Any

import pytest
from confluent_kafka import Producer

from eventbus import Context, Event, EventBus, Message, PublishNext
from eventbus.adapters.kafka import KafkaBroker, KafkaSubscription
from eventbus.adapters.kafka.dlq import BATCH, DeadLetterReader
from eventbus.adapters.kafka.producer import Record
from eventbus.testing.conformance import unique, until

from .harness import BOOTSTRAP, KafkaHarness

pytestmark = pytest.mark.kafka


def _keys_on_distinct_lanes(count: int, lanes: int) -> list[str]:
    """Keys that the dispatcher puts on `count` different lanes (so each runs at once)."""
    keys: dict[int, str] = {}
    n = 0
    while len(keys) < count:
        key = f"key-{n}"
        keys.setdefault(zlib.crc32(key.encode()) % lanes, key)
        n += 1
    return list(keys.values())


async def test_partition_buffer_bytes_bounds_what_a_stuck_subscription_holds(
    kafka: KafkaHarness,
) -> None:
    stream, group = unique("bytes"), unique("g")
    count, size = 40, 50_000
    budget = 400_000  # two assigned partitions (the stream's and the replay topic's)
    share = budget // 2

    class Blob(Event, stream=stream, type="blob"):
        n: int
        pad: str

    started: list[int] = []
    release = asyncio.Event()
    bus = kafka.bus(partitions=1, partition_buffer_bytes=budget)

    @bus.subscribe(group=group, concurrency=count)
    async def handle(event: Blob, ctx: Context) -> None:
        started.append(event.n)
        await release.wait()

    keys = _keys_on_distinct_lanes(count, count)
    async with bus:
        [detaching] = bus._consumers
        assert isinstance(detaching, KafkaSubscription)
        consumer = detaching.consumer
        await bus.publish_many([(Blob(n=i, pad="x" * size), keys[i]) for i in range(count)])
        part = consumer._parts[(stream, 0)]
        await until(
            lambda: part.paused and bool(started) and len(started) == part.tracker.unfinished,
            what="the partition to pause with every record it holds started",
        )
        held = len(started)
        assert 1 <= held <= share // size + 1, f"{held} records of {size} bytes held"
        assert part.tracker.bytes < share + size + 1024
        release.set()
        await until(lambda: len(started) == count, what="every record after the release")
    assert sorted(started) == list(range(count)), "each record handled once, none skipped"


async def test_publish_many_frees_its_messages_while_it_awaits_the_confirmations(
    kafka: KafkaHarness,
) -> None:
    """Thousands of messages kept alive until their batch is confirmed would all reach the
    collector's oldest generation, whose full passes then cost every event."""
    stream, count = unique("freed"), 2_000

    class Tick(Event, stream=stream, type="tick"):
        n: int

    built: list[Message] = []

    async def keep(message: Message, call_next: PublishNext) -> None:
        built.append(message)
        await call_next(message)

    def held_by_others() -> int:
        # references of a message only `built` holds: the list, `m` and the argument
        return sum(1 for m in built if sys.getrefcount(m) > 3)

    bus = kafka.bus(partitions=1, publish_middleware=[keep])
    held_while_waiting: list[int] = []
    async with bus:
        await bus.publish(Tick(n=-1))  # the topic exists: the pipelined path
        built.clear()
        publishing = asyncio.create_task(bus.publish_many(Tick(n=i) for i in range(count)))
        while not publishing.done():
            if len(built) == count:
                held_while_waiting.append(held_by_others())
            await asyncio.sleep(0)
        ids = await publishing
    assert len(ids) == count and len(set(ids)) == count
    assert held_while_waiting, "publish_many returned before it had to wait"
    assert min(held_while_waiting) == 0, (
        f"{min(held_while_waiting)} messages held until every confirmation came back"
    )


async def test_a_publish_in_flight_keeps_no_record_or_header_list(kafka: KafkaHarness) -> None:
    """An awaited publish in flight holds its message, its report callback and its future,
    not a record and its list of headers too: a busy service's concurrent publishes live
    long enough to be promoted, and each object they hold makes the collector's full
    passes come sooner (see `AsyncProducer.send_message`)."""
    stream, count = unique("inflight"), 500

    class Tick(Event, stream=stream, type="tick"):
        n: int

    def ours(header: object) -> bool:
        """A header of this test's records (`ce_dataschema` names the stream)."""
        if type(header) is not tuple or len(header) != 2:
            return False
        value = header[1]
        if isinstance(value, bytes):
            return stream.encode() in value
        return isinstance(value, str) and stream in value

    def held() -> tuple[int, int]:
        # only this stream's: other tests' objects may still wait for the collector
        objects = gc.get_objects()
        records = sum(1 for o in objects if type(o) is Record and o.topic == stream)
        header_lists = sum(
            1
            for o in objects
            if type(o) is list and o and type(o[0]) is tuple and any(ours(h) for h in o)
        )
        return records, header_lists

    bus = kafka.bus(partitions=1)
    async with bus:
        await bus.publish(Tick(n=-1))  # the topic exists: the direct path
        publishing = [asyncio.create_task(bus.publish(Tick(n=i))) for i in range(count)]
        await asyncio.sleep(0)  # each publish produced its record and awaits its report
        waiting = sum(1 for task in publishing if not task.done())
        records, header_lists = held()
        await asyncio.gather(*publishing)
    assert waiting > count // 2, f"only {waiting} of {count} publishes were in flight"
    assert (records, header_lists) == (0, 0), (
        f"{records} records and {header_lists} header lists held by {waiting} publishes"
    )


async def test_dead_letter_listing_streams(
    kafka: KafkaHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first dead letter is yielded while most of the topic is still unread."""
    stream, group = unique("listing"), unique("g")
    total = 6 * BATCH
    bus = kafka.bus(partitions=1)

    @bus.subscribe(stream, "#", group=group)
    async def handle(envelope: Any) -> None:
        pass

    readers: list[DeadLetterReader] = []
    made = KafkaBroker._reader

    def recorded(self: KafkaBroker, stream: str, group: str) -> DeadLetterReader:
        readers.append(made(self, stream, group))
        return readers[-1]

    monkeypatch.setattr(KafkaBroker, "_reader", recorded)

    def fill_dead_letter_topic() -> None:
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20})
        for n in range(total):
            headers: list[tuple[str, str | bytes | None]] = [
                ("ce_type", b"t"),
                ("ce_id", f"id-{n}".encode()),
            ]
            producer.produce(f"{stream}.{group}.dlq", b"x" * 1000, None, headers=headers)
            producer.poll(0)
        assert producer.flush(30) == 0

    async with bus:
        await asyncio.to_thread(fill_dead_letter_topic)
        letters = bus.dead_letters(stream, group)
        first = await anext(letters)
        read_when_first = readers[0].read
        rest = [letter async for letter in letters]
    assert read_when_first < total, "everything was read before the first letter was yielded"
    ids = [first.attributes["id"], *(letter.attributes["id"] for letter in rest)]
    assert ids == [f"id-{n}" for n in range(total)], "each letter once, oldest first"


@pytest.mark.parametrize("what", ["list", "replay"])
async def test_dead_letters_fail_clearly_within_admin_timeout(what: str) -> None:
    bus = EventBus("kafka://127.0.0.1:1", admin_timeout=1)  # nothing listens on port 1
    broker = bus.broker
    assert isinstance(broker, KafkaBroker)
    started = time.monotonic()
    with pytest.raises((ConnectionError, TimeoutError)) as info:
        if what == "list":
            [letter async for letter in broker.dead_letters("s", "g")]
        else:
            await broker.replay_dead_letters("s", "g")
    assert time.monotonic() - started < 15
    assert "EVENTBUS_KAFKA_ADMIN_TIMEOUT" in str(info.value)
    assert "s.g.dlq" in str(info.value)


async def test_dead_letters_of_several_partitions_are_merged_oldest_first(
    kafka: KafkaHarness,
) -> None:
    """Two dead-letter partitions, read as they come: listed (and replayed) in timestamp
    order, each letter once; a replayed letter is not listed again."""
    stream, group = unique("merge"), unique("g")
    total = 5 * BATCH
    bus = kafka.bus(partitions=1, dlq_partitions=2)
    replayed: list[str] = []

    @bus.subscribe(stream, "#", group=group)
    async def handle(envelope: Any) -> None:
        replayed.append(envelope.id)

    def fill_dead_letter_topic() -> None:
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 20})
        base = int(time.time() * 1000) - total
        for n in range(total):
            headers: list[tuple[str, str | bytes | None]] = [
                ("ce_type", b"t"),
                ("ce_id", f"id-{n}".encode()),
            ]
            producer.produce(
                f"{stream}.{group}.dlq",
                b"{}",
                None,
                partition=1 if n % 3 == 0 else 0,
                timestamp=base + n,
                headers=headers,
            )
            producer.poll(0)
        assert producer.flush(30) == 0

    expected = [f"id-{n}" for n in range(total)]
    async with bus:
        await asyncio.to_thread(fill_dead_letter_topic)
        listed = [letter.attributes["id"] async for letter in bus.dead_letters(stream, group)]
        assert listed == expected
        assert await bus.replay_dead_letters(stream, group) == total
        await until(lambda: len(replayed) == total, what="every replayed letter")
        assert [letter async for letter in bus.dead_letters(stream, group)] == []
    assert sorted(replayed) == sorted(expected)
