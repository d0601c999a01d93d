"""The 3-node Kafka cluster of `scripts/kafka-cluster.sh` as the fault tests see it: start
it, crash, hang and restart its nodes, ask it who leads what and whether every replica
is back in sync."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from eventbus.adapters.kafka.topics import ConfigResource, ResourceType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kafka-cluster.sh"
NODES = (1, 2, 3)
BOOTSTRAP = ",".join(f"127.0.0.1:{29091 + n}" for n in NODES)
URL = f"kafka://{BOOTSTRAP}"


def cluster(*args: str, timeout: float = 240.0) -> str:
    """Run `scripts/kafka-cluster.sh args...`; fail loudly with its output if it fails."""
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise AssertionError(
            f"scripts/kafka-cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )
    return done.stdout.strip()


def ensure_cluster() -> None:
    """All three nodes started and serving (idempotent; starts what is down, resumes what
    is paused)."""
    for n in NODES:
        if node_pid(n) is not None:
            cluster("resume-node", str(n))
    cluster("start")


def node_pid(n: int) -> int | None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "pid", str(n)], capture_output=True, text=True, check=False
    )
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def kill(n: int) -> None:
    cluster("kill-node", str(n))


def pause(n: int) -> None:
    cluster("pause-node", str(n))


def resume(n: int) -> None:
    cluster("resume-node", str(n))


def start(n: int) -> None:
    cluster("start-node", str(n))


def stop(n: int) -> None:
    cluster("stop-node", str(n))


def admin(bootstrap: str = BOOTSTRAP) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def _describe(client: AdminClient, topics: Iterable[str]) -> dict[str, Any]:
    futures = client.describe_topics(TopicCollection(list(topics)), request_timeout=15)
    return {name: future.result(timeout=30) for name, future in futures.items()}


def leaders(topics: Iterable[str], client: AdminClient | None = None) -> Counter[int]:
    """Node id -> how many partitions of `topics` it leads."""
    counts: Counter[int] = Counter()
    for description in _describe(client or admin(), topics).values():
        for partition in description.partitions:
            if partition.leader is not None:
                counts[partition.leader.id] += 1
    return counts


def busiest_leader(topics: Iterable[str]) -> int:
    """The node leading the most partitions of `topics` (lowest id on a tie)."""
    counts = leaders(topics)
    return max(sorted(counts), key=lambda n: counts[n])


def out_of_sync(topics: Iterable[str], client: AdminClient | None = None) -> int:
    """Partitions of `topics` (and of the group offsets topic) whose ISR lacks a replica."""
    names = [*topics, "__consumer_offsets"]
    missing = 0
    for description in _describe(client or admin(), names).values():
        for partition in description.partitions:
            if len(partition.isr) < len(partition.replicas) or partition.leader is None:
                missing += 1
    return missing


def wait_in_sync(topics: Iterable[str], timeout: float = 120.0) -> float:
    """Wait until every replica of `topics` is in sync again; -> seconds it took.
    (A blocking poll with a deadline: run it in a thread from async code.)"""
    names = list(topics)
    client = admin()
    started = time.monotonic()
    while True:
        try:
            if out_of_sync(names, client) == 0:
                return time.monotonic() - started
        except Exception:  # a node coming back may refuse a request or two
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"replicas of {names} not in sync after {timeout}s")
        time.sleep(0.2)


def coordinator(group: str) -> int:
    """The node that coordinates consumer group `group`."""
    client = admin()  # alive until the answer is in
    futures = client.describe_consumer_groups([group], request_timeout=15)
    description: Any = futures[group].result(timeout=30)
    return int(description.coordinator.id)


def replica_counts(topic: str, client: AdminClient | None = None) -> set[int]:
    """The distinct replica counts of `topic`'s partitions."""
    description = _describe(client or admin(), [topic])[topic]
    return {len(partition.replicas) for partition in description.partitions}


def topic_config(topic: str, name: str) -> str | None:
    """One config value of `topic` as the cluster reports it (defaults included)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    client = admin()  # alive until the answer is in
    futures = client.describe_configs([resource], request_timeout=15)
    entries: dict[str, Any] = futures[resource].result(timeout=30)
    entry = entries.get(name)
    return None if entry is None else str(entry.value)


def stored_sequences(
    topic: str, bootstrap: str = BOOTSTRAP, timeout: float = 60.0
) -> dict[str, list[int]]:
    """Per key, the `n` of every event stored in `topic` (its JSON body), in log order:
    what a fresh reader of the whole topic sees."""
    client = admin(bootstrap)
    partitions = len(_describe(client, [topic])[topic].partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    found: dict[str, list[int]] = defaultdict(list)
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        ended: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ended) < partitions:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout}s")
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is None:
                    key = (message.key() or b"").decode()
                    found[key].append(int(json.loads(message.value() or b"{}")["n"]))
                elif error.code() == KafkaError._PARTITION_EOF:
                    ended.add(message.partition() or 0)
    finally:
        consumer.close()
    return dict(found)


def delete_named_after(streams: Iterable[str], bootstrap: str = BOOTSTRAP) -> None:
    """Delete every topic named after one of `streams` (`<stream>` and `<stream>.*`)."""
    names = set(streams)
    if not names:
        return
    prefixes = tuple(f"{s}." for s in names)
    client = admin(bootstrap)
    topics = [
        t for t in client.list_topics(timeout=30).topics if t in names or t.startswith(prefixes)
    ]
    if topics:
        for future in client.delete_topics(topics, operation_timeout=30).values():
            future.result()
