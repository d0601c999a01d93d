"""Delayed retries on retry topics: the due time is honoured by pausing the retry topic's
partition, while the stream keeps flowing; the attempt count travels in a header."""

import time

import pytest

from eventbus import Context, Event, RetryPolicy
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


async def test_retry_waits_its_delay_without_blocking_the_stream(kafka: KafkaHarness) -> None:
    stream, group = unique("delayed"), unique("g")

    class Job(Event, stream=stream, type="job"):
        name: str

    tries: list[tuple[str, int, float]] = []
    bus = kafka.bus(partitions=1)
    delay = 1.5

    @bus.subscribe(group=group, retry=RetryPolicy(attempts=2, backoff=delay, delayed=True))
    async def handle(event: Job, ctx: Context) -> None:
        tries.append((event.name, ctx.attempt, time.monotonic()))
        if event.name == "flaky" and ctx.attempt == 1:
            raise RuntimeError("later, please")

    async with bus:
        await bus.publish(Job(name="flaky"), key="k")
        await bus.publish_many([(Job(name=f"next-{i}"), "k") for i in range(20)])
        await until(lambda: len(tries) == 22, timeout=60, what="the retry and the stream")
    first = next(t for n, a, t in tries if n == "flaky" and a == 1)
    second = next(t for n, a, t in tries if n == "flaky" and a == 2)
    assert second - first >= delay * 0.95, "the retry came before it was due"
    order = [n for n, _, _ in tries]
    assert order.index("next-19") < order.index("flaky", 1), "the stream waited for the retry"
    assert [a for n, a, _ in tries if n == "flaky"] == [1, 2]
