"""memory:// against a raw `asyncio.Queue` + pydantic loop (FastStream has no in-memory
broker to compare: its TestBroker is a test double, not a transport).

No `from __future__ import annotations`: handlers are annotated with per-run event classes.
"""

import asyncio
import time
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

from eventbus import Context, EventBus, Reject, RetryPolicy

from .core import Scenario, Stopwatch, metrics_of
from .pacing import paced, wait_for_count, warm_up, warm_up_count
from .workload import STANDARD, TYPE, Load, OrderPayload, make_event_class, payload_fields

#: the raw loop with the CloudEvents attributes beside each body
RAW_CE = "raw asyncio.Queue (CloudEvents attributes)"
#: what eventbus writes as `dataschema` (a stream name as long as the benchmark's)
SCHEMA = f"urn:eventbus:schema:bench{'0' * 8}:{TYPE}"


async def eventbus_e2e(count: int, load: Load = STANDARD, **options: Any) -> dict[str, float]:
    """`load`: the curves' variations; `options`: more EventBus arguments (the telemetry
    variants)."""
    cls = make_event_class(f"bench{uuid.uuid4().hex[:8]}", padded=load.pad > 0)
    bus = EventBus(f"memory://bench-{uuid.uuid4().hex[:8]}", **options)
    latencies = load.latencies()
    deliveries = count * load.groups
    done = asyncio.Event()

    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        latencies.append(time.perf_counter_ns() - event.sent_ns)  # type: ignore[attr-defined]
        if len(latencies) == deliveries:
            done.set()

    for index in range(load.groups):
        bus.add_handler(handle, group=load.group(index))
    async with bus:
        with Stopwatch() as watch:
            for i in range(count):
                await bus.publish(cls(**payload_fields(i, load.pad)))
            await asyncio.wait_for(done.wait(), 300)
    return metrics_of(deliveries, watch.wall, latencies, watch)


async def raw_e2e(count: int, load: Load = STANDARD) -> dict[str, float]:
    """One `asyncio.Queue` and consumer task per group, every body put on each."""
    queues: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(load.groups)]
    latencies = load.latencies()
    model = load.model()

    async def handle(event: OrderPayload) -> None:
        latencies.append(time.perf_counter_ns() - event.sent_ns)

    async def consume(queue: asyncio.Queue[bytes]) -> None:
        for _ in range(count):
            body = await queue.get()
            await handle(model.model_validate_json(body))

    consumers = [asyncio.create_task(consume(queue)) for queue in queues]
    with Stopwatch() as watch:
        for i in range(count):
            body = model(**payload_fields(i, load.pad)).model_dump_json().encode()
            for queue in queues:
                await queue.put(body)
        await asyncio.gather(*consumers)
    return metrics_of(count * load.groups, watch.wall, latencies, watch)


def cloudevents_attributes() -> dict[str, str]:
    """What eventbus sends beside a body, written by hand: a new id and time, and the
    constant attributes."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": str(uuid.uuid4()),
        "source": "bench",
        "specversion": "1.0",
        "type": TYPE,
        "time": now,
        "datacontenttype": "application/json",
        "dataschema": SCHEMA,
    }


async def raw_cloudevents(count: int, rate: float | None = None) -> dict[str, float]:
    """The raw loop carrying what eventbus carries (the memory analog of Kafka's
    same-headers loop): each body travels with its CloudEvents attributes, and the
    consumer reads the type and the id before it validates, as any consumer of
    CloudEvents does. `rate`: paced, for the latency scenarios (None: as fast as it goes)."""
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    latencies: list[int] = []
    warm = 0 if rate is None else warm_up_count(rate)

    async def handle(event: OrderPayload) -> None:
        latencies.append(time.perf_counter_ns() - event.sent_ns)

    async def consume() -> None:
        for _ in range(warm + count):
            body, attributes = await queue.get()
            if attributes["type"] != TYPE or not attributes["id"]:
                raise AssertionError("not the benchmark's event")
            await handle(OrderPayload.model_validate_json(body))

    async def send(i: int) -> None:
        body = OrderPayload(**payload_fields(i)).model_dump_json().encode()
        await queue.put((body, cloudevents_attributes()))

    consumer = asyncio.create_task(consume())
    if rate is not None:
        await warm_up(warm, rate, send, latencies)
    with Stopwatch() as watch:
        if rate is None:
            for i in range(count):
                await send(i)
        else:
            paced_for = await paced(count, rate, send)
        await consumer
    return metrics_of(count, watch.wall if rate is None else paced_for, latencies, watch)


async def eventbus_latency(count: int, rate: float) -> dict[str, float]:
    cls = make_event_class(f"bench{uuid.uuid4().hex[:8]}")
    bus = EventBus(f"memory://bench-{uuid.uuid4().hex[:8]}")
    latencies: list[int] = []

    @bus.subscribe(group="bench")
    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        latencies.append(time.perf_counter_ns() - event.sent_ns)  # type: ignore[attr-defined]

    async with bus:

        async def send(i: int) -> None:
            await bus.publish(cls(**payload_fields(i)))

        await warm_up(warm_up_count(rate), rate, send, latencies)
        with Stopwatch() as watch:
            elapsed = await paced(count, rate, send)
            await wait_for_count(lambda: len(latencies), count, 60)
    return metrics_of(count, elapsed, latencies, watch)


async def raw_latency(count: int, rate: float) -> dict[str, float]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    latencies: list[int] = []
    warm = warm_up_count(rate)

    async def consume() -> None:
        for _ in range(warm + count):
            event = OrderPayload.model_validate_json(await queue.get())
            latencies.append(time.perf_counter_ns() - event.sent_ns)

    consumer = asyncio.create_task(consume())

    async def send(i: int) -> None:
        await queue.put(OrderPayload(**payload_fields(i)).model_dump_json().encode())

    await warm_up(warm, rate, send, latencies)
    with Stopwatch() as watch:
        elapsed = await paced(count, rate, send)
        await consumer
    return metrics_of(count, elapsed, latencies, watch)


async def eventbus_failure_paths(count: int) -> dict[str, float]:
    """Every event fails once and succeeds on the in-process retry; every tenth is
    rejected to the dead-letter list: the cost of the failure machinery."""
    cls = make_event_class(f"bench{uuid.uuid4().hex[:8]}")
    bus = EventBus(f"memory://bench-{uuid.uuid4().hex[:8]}", log_level="ERROR")
    settled = 0
    done = asyncio.Event()

    @bus.subscribe(group="bench", retry=RetryPolicy(attempts=2, backoff=0.0))
    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        nonlocal settled
        if ctx.attempt == 1:
            raise RuntimeError("transient")
        settled += 1
        if settled == count:
            done.set()
        if event.order_id.endswith("0"):  # type: ignore[attr-defined]
            raise Reject("every tenth order is invalid")

    async with bus:
        with Stopwatch() as watch:
            for i in range(count):
                await bus.publish(cls(**payload_fields(i)))
            await asyncio.wait_for(done.wait(), 120)
    return metrics_of(count, watch.wall, watch=watch)


def scenarios(quick: bool) -> list[Scenario]:
    n = 5_000 if quick else 100_000
    lat_n = {1_000: 500 if quick else 5_000, 10_000: 2_000 if quick else 20_000}
    result = [
        Scenario(
            "memory",
            "end-to-end",
            "publish -> typed pydantic handler, in-process",
            {
                "eventbus": lambda: eventbus_e2e(n),
                "raw asyncio.Queue": lambda: raw_e2e(n),
                RAW_CE: lambda: raw_cloudevents(n),
            },
        )
    ]
    for rate, count in lat_n.items():
        result.append(
            Scenario(
                "memory",
                f"latency@{rate // 1000}k/s",
                f"publish -> handler latency at {rate} events/s",
                {
                    "eventbus": partial(eventbus_latency, count, rate),
                    "raw asyncio.Queue": partial(raw_latency, count, rate),
                    RAW_CE: partial(raw_cloudevents, count, rate),
                },
                metric="p99_ms",
                higher_is_better=False,
            )
        )
    result.append(
        Scenario(
            "memory",
            "retry+dead-letter",
            "every event retried once, every tenth dead-lettered (eventbus only)",
            {"eventbus": lambda: eventbus_failure_paths(n // 5)},
        )
    )
    return result
