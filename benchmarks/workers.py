"""Worker processes on Kafka: `eventbus run benchmarks.worker_app:bus --workers N` consumes
orders produced once every worker joined the group, with a handler that spends about
0.1 ms of CPU per order. One worker is bound by its one core; two share the topic's 4
partitions.

Timed from the first offsets the group committed to the moment it committed every order
(commits come every 500 ms: runs are long enough for that not to matter). CPU per event
is the supervisor's and the workers' user + system time (`RUSAGE_CHILDREN`).
"""

import asyncio
import os
import resource
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from .core import CPU, SERVER_CPU, Scenario, Stopwatch
from .kafka import _delete, _raw_produce, _raw_producer, _topic
from .servers import KAFKA_BOOTSTRAP

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
GROUP = "bench-workers"


def _committed(topic: str) -> int:
    """Offsets the group has committed on the topic, summed over its partitions."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    request = ConsumerGroupTopicPartitions(
        GROUP, [TopicPartition(topic, p) for p in range(PARTITIONS)]
    )
    result = admin.list_consumer_group_offsets([request])[GROUP].result(10)
    return sum(max(tp.offset, 0) for tp in result.topic_partitions)


def _members_with_partitions(topic: str) -> int:
    """Members of the group that hold partitions of `topic`, once the group is stable
    (0 while it rebalances)."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    group = admin.describe_consumer_groups([GROUP])[GROUP].result(10)
    if group.state != ConsumerGroupState.STABLE:
        return 0
    return sum(
        any(tp.topic == topic for tp in member.assignment.topic_partitions)
        for member in group.members
        if member.assignment is not None
    )


async def workers_run(count: int, workers: int) -> dict[str, Any]:
    """The workers join the group first; the orders are produced once every worker holds
    partitions, so that no run is timed across the rebalance of a late joiner (that pause
    made 2-worker runs swing between 12k/s and 22k/s)."""
    topic = _topic(PARTITIONS)
    producer = await asyncio.to_thread(_raw_producer, topic)  # produces one record
    env = {
        **os.environ,
        "EVENTBUS_URL": f"kafka://{KAFKA_BOOTSTRAP}",
        "EVENTBUS_BENCH_WORKERS_TOPIC": topic,
        "EVENTBUS_LOG_LEVEL": "ERROR",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    watch = Stopwatch()  # for the broker's CPU (the workers' is their rusage)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventbus", "run", "benchmarks.worker_app:bus",
        "--workers", str(workers), cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while await asyncio.to_thread(_members_with_partitions, topic) < workers:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {workers} workers did not all join; supervisor exit {proc.returncode}"
                )
            await asyncio.sleep(0.1)  # a poll of the group's state, not a sync
        await asyncio.to_thread(_raw_produce, producer, topic, count - 1, None, "CloudEvents")
        first_at = first = 0.0
        committed = 0
        deadline = time.monotonic() + 600
        while committed < count:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{committed} of {count} committed; supervisor exit {proc.returncode}"
                )
            await asyncio.sleep(0.1)  # a poll of the group's offsets, not a sync
            committed = await asyncio.to_thread(_committed, topic)
            if committed and not first_at:
                first_at, first = time.perf_counter(), committed
        seconds = time.perf_counter() - first_at
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.to_thread(_delete, topic)
    watch.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    metrics = {"throughput": (count - first) / seconds if seconds > 0 else 0.0}
    metrics[CPU] = cpu * 1e6 / count  # the workers' and their supervisor's
    if watch.server_cpu is not None:
        metrics[SERVER_CPU] = watch.server_cpu * 1e6 / count
    return metrics


def scenarios(quick: bool) -> list[Scenario]:
    count = 10_000 if quick else 100_000
    return [
        Scenario(
            "kafka",
            "worker processes",
            f"{count:,} orders, produced once the workers joined -> `eventbus run --workers N` "
            f"-> a handler with ~0.1 ms of CPU per order, {PARTITIONS} partitions; "
            "eventbus = 2 workers",
            {
                "eventbus": partial(workers_run, count, 2),
                "eventbus, 1 worker": partial(workers_run, count, 1),
            },
        )
    ]
