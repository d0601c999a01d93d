"""`eventbus run app:bus --workers 2` on Kafka: the two worker processes are members of
one group and share the stream's partitions; every event is handled, by both workers, and
SIGTERM stops them gracefully (exit 0).

No `from __future__ import annotations`: the event class is made per test."""

import signal
from collections import Counter

import pytest

from eventbus import Event
from eventbus.testing.conformance import unique, until

from ..unit.test_cli_workers import Run
from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


async def test_two_workers_share_the_partitions_of_their_group(kafka: KafkaHarness) -> None:
    stream = unique("workers")
    env = {
        "EVENTBUS_URL": kafka.url(),
        "EVENTBUS_KAFKA_PARTITIONS": "4",
        "WORKERS_TEST_STREAM": stream,
    }
    run = Run("--workers", "2", env=env)
    try:
        await until(lambda: len(run.events("bus.started")) == 2, 120, "two workers running")

        class Ping(Event, stream=stream, type="ping"):
            n: int

        publisher = kafka.bus(partitions=4)
        async with publisher:
            await publisher.publish_many([(Ping(n=i), f"k{i}") for i in range(200)])

        def handled() -> set[int]:
            return {r["n"] for r in run.events("test.handled")}

        await until(lambda: handled() == set(range(200)), 120, "every event handled")
        by_worker = Counter(r["worker"] for r in run.events("test.handled"))
        print(f"handled per worker: {dict(by_worker)}")
        assert set(by_worker) == {"0", "1"}, by_worker
        run.proc.send_signal(signal.SIGTERM)
        await until(lambda: run.proc.poll() is not None, 90, "the supervisor's exit")
        assert run.proc.returncode == 0, "".join(run.text)[-3000:]
        assert len(run.events("bus.stopped")) == 2
    finally:
        run.close()
        kafka.extra_topics |= {stream, f"{stream}.workers.dlq", f"{stream}.workers.replay"}
