"""Kafka: eventbus against a raw confluent-kafka Producer/Consumer loop and FastStream
(its confluent-kafka broker), same broker, same pre-created topic (3 partitions).

Every implementation produces with acks=all and idempotence, consumes in a group from the
earliest offset into a typed pydantic handler, and commits explicitly (FastStream: its
default acknowledgement policy).

No `from __future__ import annotations`: handlers are annotated with per-run event classes.
"""

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from typing import Any

from confluent_kafka import KafkaException

from eventbus import Context, EventBus

from .core import Scenario, Stopwatch, metrics_of
from .pacing import broker_scenarios, drive, pause, wait_for_count, warm_up_count
from .servers import KAFKA_BOOTSTRAP
from .targets import EVENTBUS, FASTSTREAM, LEAN, RAW_KAFKA
from .workload import (
    STANDARD,
    TYPE,
    Latencies,
    Load,
    OrderPayload,
    make_event_class,
    payload_fields,
)

PARTITIONS = 3
_TYPE = TYPE.encode()
#: eventbus's `dataschema` of the workload's events (`urn:eventbus:schema:<stream>:<type>`:
#: the stream is a per-run topic name of the same length)
_SCHEMA = f"urn:eventbus:schema:bench{'0' * 8}:{TYPE}".encode()
PRODUCER = {
    "bootstrap.servers": KAFKA_BOOTSTRAP,
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
}


BATCH = 1000
WINDOWS = 8  # batches in flight: the raw producer never waits between records either


def _batch(first: int, count: int) -> range:
    return range(first, min(first + BATCH, count))


async def _windows(count: int, batch: Callable[[int], Awaitable[None]]) -> None:
    """Publish `count` events as batches of BATCH, WINDOWS batches in flight at a time."""
    starts = list(range(0, count, BATCH))
    for i in range(0, len(starts), WINDOWS):
        await asyncio.gather(*(batch(first) for first in starts[i : i + WINDOWS]))


def _topic(partitions: int = PARTITIONS) -> str:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    name = f"bench{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(30)
    return name


def _delete(*topics: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in existing if any(t == x or t.startswith(x + ".") for x in topics)]
    if doomed:
        for future in admin.delete_topics(doomed).values():
            with contextlib.suppress(Exception):  # already gone
                future.result(30)


# --- eventbus ------------------------------------------------------------------------------


async def eventbus_run(
    count: int, rate: float | None, consume: bool, load: Load = STANDARD, **options: Any
) -> dict[str, float]:
    """`load`: the curves' variations; `options`: more EventBus arguments (the telemetry
    variants)."""
    topic = _topic()
    cls = make_event_class(topic, padded=load.pad > 0)
    bus = EventBus(f"kafka://{KAFKA_BOOTSTRAP}", **options)
    latencies = load.latencies()
    pad = load.pad

    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        latencies.append(time.perf_counter_ns() - event.sent_ns)  # type: ignore[attr-defined]

    if consume:
        for index in range(load.groups):
            bus.add_handler(handle, group=load.group(index))

    try:
        async with bus:

            async def batch(first: int) -> None:
                # a generator: each event can go once its message is built, as in a loop
                await bus.publish_many(
                    (cls(**payload_fields(i, pad)), f"k{i % 64}") for i in _batch(first, count)
                )

            async def publish_all() -> None:
                await _windows(count, batch)

            async def send(i: int) -> None:
                await bus.publish(cls(**payload_fields(i, pad)), key=f"k{i % 64}")

            return await drive(count, rate, consume, publish_all, send, latencies, load.groups)
    finally:
        await asyncio.to_thread(_delete, topic)


# --- raw confluent-kafka ------------------------------------------------------------------


class _RawConsumer(threading.Thread):
    """The raw consumer done well: batch consume, read the headers its producer wrote,
    validate, explicit async commits.

    Before it validates, it reads what any consumer of its records must: the type ("type
    only": the least a consumer needs to know what it got), or the type and the id
    ("CloudEvents", as the memory loop with the CloudEvents attributes does).

    `load`: its group is the load's `group(index)`; the latencies go to `latencies`
    (shared by the consumers of every group: appending is atomic under the GIL)."""

    def __init__(
        self,
        topic: str,
        count: int,
        load: Load = STANDARD,
        index: int = 0,
        latencies: Latencies | None = None,
        headers: str = "type only",
    ) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.count = count
        self.with_id = headers == "CloudEvents"
        self.model = load.model()
        self.latencies = latencies if latencies is not None else load.latencies()
        self.handled = 0
        self.assigned = threading.Event()
        self.stop = threading.Event()
        #: what stopped the thread early (a record that is not the benchmark's, a bad body)
        self.failure: BaseException | None = None
        self.consumer = Consumer(
            {
                "bootstrap.servers": KAFKA_BOOTSTRAP,
                "group.id": f"{topic}.raw.{load.group(index)}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe([topic], on_assign=lambda c, p: self.assigned.set())

    def run(self) -> None:
        consumer = self.consumer
        model = self.model
        latencies = self.latencies
        with_id = self.with_id
        try:
            while not self.stop.is_set() and self.handled < self.count:
                first = consumer.poll(0.1)  # low latency: block for one, then take what's there
                if first is None:
                    continue
                batch = [first, *consumer.consume(499, 0)]
                for record in batch:
                    if record.error():
                        continue
                    headers = dict(record.headers() or ())
                    if headers.get("ce_type") != _TYPE or (with_id and not headers.get("ce_id")):
                        raise AssertionError("not the benchmark's event")
                    event = model.model_validate_json(record.value() or b"")
                    latencies.append(time.perf_counter_ns() - event.sent_ns)
                    self.handled += 1
                consumer.commit(asynchronous=True)
            with contextlib.suppress(KafkaException):  # nothing new to commit is fine
                consumer.commit(asynchronous=False)
        except BaseException as exc:
            self.failure = exc
        finally:
            consumer.close()


def _raw_producer(topic: str, load: Load = STANDARD, headers: str = "type only") -> Any:
    """A producer that has delivered the warm-up record (an event of the `load`, with the
    run's `headers`)."""
    from confluent_kafka import Producer

    producer = Producer(PRODUCER)
    _raw_send(producer, topic, 0, None, headers, pad=load.pad, model=load.model())
    producer.flush(30)
    return producer


def _minimal_headers() -> list[tuple[str, bytes]]:
    return [("ce_type", _TYPE)]


def _cloudevents_headers() -> list[tuple[str, bytes]]:
    """What eventbus puts on the wire, written by hand: CloudEvents binary mode."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        ("ce_id", str(uuid.uuid4()).encode()),
        ("ce_source", b"bench"),
        ("ce_specversion", b"1.0"),
        ("ce_type", _TYPE),
        ("ce_time", now.encode()),
        ("content-type", b"application/json"),
        ("ce_dataschema", _SCHEMA),
    ]


#: the raw loop's headers: the type only (the least a consumer needs), or the same
#: CloudEvents headers eventbus writes (the same bytes on the wire)
_HEADERS = {"type only": _minimal_headers, "CloudEvents": _cloudevents_headers}


def _raw_send(
    producer: Any,
    topic: str,
    i: int,
    report: Any,
    headers: str = "type only",
    pad: int = 0,
    model: type[OrderPayload] = OrderPayload,
) -> None:
    body = model(**payload_fields(i, pad)).model_dump_json().encode()
    record_headers = _HEADERS[headers]()
    while True:
        try:
            producer.produce(
                topic, body, key=f"k{i % 64}", headers=record_headers, on_delivery=report
            )
            return
        except BufferError:
            producer.poll(0.01)


def _raw_produce(
    producer: Any,
    topic: str,
    count: int,
    rate: float | None,
    headers: str = "type only",
    load: Load = STANDARD,
) -> float:
    delivered = 0
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1
        else:
            failed.append(str(err))

    pad, model = load.pad, load.model()
    start = time.perf_counter()
    for i in range(count):
        if rate is not None:
            wait = pause(start + i / rate - time.perf_counter())
            if wait:
                time.sleep(wait)
        _raw_send(producer, topic, i, report, headers, pad, model)
        producer.poll(0)
    producer.flush(60)
    if failed or delivered != count:
        raise RuntimeError(f"raw producer: {delivered}/{count} delivered, errors {failed[:3]}")
    return time.perf_counter() - start


def _received(consumers: list[_RawConsumer], latencies: Latencies) -> int:
    """Records the consumers of a run handled (their shared `latencies`); raises what
    stopped one of them."""
    for consumer in consumers:
        if consumer.failure is not None:
            raise RuntimeError("the raw consumer failed") from consumer.failure
    return len(latencies)


async def raw_run(
    count: int,
    rate: float | None,
    consume: bool,
    headers: str = "type only",
    load: Load = STANDARD,
) -> dict[str, float]:
    """`load`: the curves' variations (a consumer thread per group)."""
    topic = _topic()
    latencies = load.latencies()
    # warm-up, as for every implementation (`pacing.drive`), unmeasured: one event through
    # the whole path (the producer's first record), then for a run at a rate the rest of
    # the warm-up at that rate
    warm = warm_up_count(rate)
    consumers = (
        [_RawConsumer(topic, warm + count, load, i, latencies, headers) for i in range(load.groups)]
        if consume
        else []
    )
    deliveries = count * load.groups
    try:
        for consumer in consumers:
            consumer.start()
            await asyncio.to_thread(consumer.assigned.wait, 60)
        producer = await asyncio.to_thread(_raw_producer, topic, load, headers)
        if not consumers:
            with Stopwatch() as watch:
                published = await asyncio.to_thread(
                    _raw_produce, producer, topic, count, rate, headers, load
                )
            return metrics_of(count, published, watch=watch)
        if rate is not None and warm > 1:
            await asyncio.to_thread(_raw_produce, producer, topic, warm - 1, rate, headers, load)
        await wait_for_count(lambda: _received(consumers, latencies), warm * load.groups, 60)
        latencies.clear()
        for consumer in consumers:
            consumer.handled = 0
            consumer.count = count
        with Stopwatch() as watch:
            published = await asyncio.to_thread(
                _raw_produce, producer, topic, count, rate, headers, load
            )
            await wait_for_count(lambda: _received(consumers, latencies), deliveries, 300)
        return metrics_of(deliveries, published if rate else watch.wall, latencies, watch)
    finally:
        for consumer in consumers:
            consumer.stop.set()
        for consumer in consumers:
            await asyncio.to_thread(consumer.join, 30)
        await asyncio.to_thread(_delete, topic)


# --- FastStream ------------------------------------------------------------------------------


async def faststream_run(count: int, rate: float | None, consume: bool) -> dict[str, float]:
    from faststream.confluent import KafkaBroker

    topic = _topic()
    latencies: list[int] = []
    assigned = asyncio.Event()
    loop = asyncio.get_running_loop()
    broker = KafkaBroker(KAFKA_BOOTSTRAP, acks="all", enable_idempotence=True, logger=None)

    if consume:

        def on_assign(*_: Any) -> None:
            loop.call_soon_threadsafe(assigned.set)

        @broker.subscriber(
            topic,
            group_id=f"{topic}.faststream",
            auto_offset_reset="earliest",
            on_assign=on_assign,
        )
        async def handle(event: OrderPayload) -> None:
            latencies.append(time.perf_counter_ns() - event.sent_ns)

    await broker.start()
    try:
        if consume:
            await asyncio.wait_for(assigned.wait(), 60)

        async def send(i: int) -> None:
            await broker.publish(
                OrderPayload(**payload_fields(i)),
                topic=topic,
                key=f"k{i % 64}",
            )

        async def batch(first: int) -> None:
            await broker.publish_batch(
                *(OrderPayload(**payload_fields(i)) for i in _batch(first, count)),
                topic=topic,
            )

        async def publish_all() -> None:
            await _windows(count, batch)

        return await drive(count, rate, consume, publish_all, send, latencies)
    finally:
        await broker.stop()
        await asyncio.to_thread(_delete, topic)


def scenarios(quick: bool) -> list[Scenario]:
    from .batches import scenarios as batch_scenarios
    from .transform import scenarios as transform_scenarios
    from .workers import scenarios as worker_scenarios

    return (
        broker_scenarios(
            "kafka",
            {
                EVENTBUS: eventbus_run,
                LEAN: partial(eventbus_run, optional_attributes=False),
                RAW_KAFKA: raw_run,
                f"{RAW_KAFKA} (CloudEvents headers)": partial(raw_run, headers="CloudEvents"),
                f"{FASTSTREAM} {version('faststream')}": faststream_run,
            },
            5_000 if quick else 50_000,
            {1_000: 1_000 if quick else 5_000, 10_000: 3_000 if quick else 20_000},
            "produce with acks=all + idempotence, delivery confirmed",
            "produce acks=all -> typed handler -> explicit commit, 3 partitions",
        )
        + transform_scenarios(quick)
        + batch_scenarios(quick)
        + worker_scenarios(quick)
    )
