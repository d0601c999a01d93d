"""A poison event is dead-lettered after `attempts` tries, with the partition and offset it
had in the stream, while the events behind it in its partition keep flowing."""

import asyncio
import json

import pytest

from eventbus import Context, Event, RetryPolicy
from eventbus.metrics import BAD_INPUT, RETRIED
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness
from .support import committed_offsets

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("delayed", [False, True], ids=["in-process", "retry-topics"])
async def test_poison_event_is_dead_lettered_and_its_partition_flows(
    kafka: KafkaHarness, delayed: bool
) -> None:
    stream, group = unique("poison"), unique("g")

    class Charge(Event, stream=stream, type="charge"):
        order: str

    tries: list[int] = []
    good: list[str] = []
    bus = kafka.bus(partitions=1)  # one partition: everything queues behind the poison

    policy = RetryPolicy(attempts=3, backoff=0.05, multiplier=1.0, delayed=delayed)

    @bus.subscribe(group=group, retry=policy)
    async def charge(event: Charge, ctx: Context) -> None:
        if event.order == "poison":
            tries.append(ctx.attempt)
            raise ValueError("cannot charge the poison order")
        good.append(event.order)

    async with bus:
        await bus.publish(Charge(order="before"), key="x")
        poison = await bus.publish(Charge(order="poison"), key="x")
        await bus.publish_many([(Charge(order=f"after-{i}"), "x") for i in range(50)])
        await until(lambda: len(good) == 51, timeout=60, what="the events around the poison")
        dead: list[object] = []

        async def dead_lettered() -> bool:
            dead[:] = [d async for d in bus.dead_letters(stream, group)]
            return bool(dead)

        for _ in range(600):
            if await dead_lettered():
                break
            await asyncio.sleep(0.05)
    assert tries == [1, 2, 3]
    assert good == ["before", *(f"after-{i}" for i in range(50))], "order kept around the poison"
    [letter] = dead
    headers = letter.headers  # type: ignore[attr-defined]
    assert headers["x-original-partition"] == "0"
    assert headers["x-original-offset"] == "1", "the offset the poison had in the stream"
    assert headers["x-attempts"] == "3"
    assert headers["x-exception-type"] == "ValueError"
    assert letter.body == poison.body  # type: ignore[attr-defined]
    assert headers["ce_id"] == poison.id
    offsets = await asyncio.to_thread(committed_offsets, group, stream, 1)
    assert offsets == {0: 52}, "the group committed past the dead-lettered event"


async def test_copies_are_not_held_for_the_publishing_linger(kafka: KafkaHarness) -> None:
    """Retry and dead-letter copies go out at once. A subscription settles its records in
    order, so a copy that lingered for a batch would hold every record behind it for the
    whole linger: here the publishing producer lingers a minute, and three bad records
    and a delayed retry are all stored within seconds."""
    stream, group = unique("linger"), unique("g")

    class Job(Event, stream=stream, type="job"):
        name: str

    tries: list[tuple[str, int]] = []
    bus = kafka.bus(partitions=1, linger_ms=60_000)
    metrics = bus.enable_metrics()

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=2, backoff=0.01, delayed=True))
    async def handle(event: Job, ctx: Context) -> None:
        tries.append((event.name, ctx.attempt))
        if event.name == "flaky" and ctx.attempt == 1:
            raise RuntimeError("later, please")

    def failed(outcome: str) -> int:
        return sum(n for key, n in metrics.failed.items() if key[3] == outcome)

    async with bus:
        for _ in range(3):
            await kafka.inject_raw(stream, "job", b"\xff{not json", key="k")
        await kafka.inject_raw(stream, "job", json.dumps({"name": "flaky"}).encode(), key="k")
        await until(
            lambda: ("flaky", 2) in tries and failed(BAD_INPUT) == 3,
            timeout=30,
            what="three dead letters and a retry, each far sooner than the linger",
        )
    assert failed(RETRIED) == 1
    assert tries == [("flaky", 1), ("flaky", 2)]
