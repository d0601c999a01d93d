"""SIGKILL in the middle of a stream: nothing is lost, and duplicates come only from after
the last commit (the commit never passes a record that was not handled)."""

import asyncio
import os
import signal
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from eventbus import Context, Event
from eventbus.testing.conformance import unique, until

from .harness import KafkaHarness
from .support import committed_offsets

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6


def handled(path: Path) -> list[tuple[int, int, int]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # a line cut by the kill is not a handled event
            rows.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return rows


async def crash_and_restart(kafka: KafkaHarness, tmp_path: Path, total: int, kills: int) -> None:
    stream, group = unique("crash"), unique("g")
    kafka.extra_topics |= {f"{stream}.{group}.dlq", f"{stream}.{group}.replay"}

    class Tick(Event, stream=stream, type="tick"):
        n: int

    publisher = kafka.bus(partitions=PARTITIONS)
    async with publisher:
        await publisher.publish_many([(Tick(n=i), f"k{i % 97}") for i in range(total)])

    out = tmp_path / "handled.txt"
    out.touch()
    first: list[tuple[int, int, int]] = []
    committed: dict[int, int] = {}
    for kill in range(kills):
        target = total * (kill + 1) // (kills + 2)  # mid-way through what is left
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.kafka.crash_consumer",
            stream,
            group,
            str(out),
            cwd=ROOT,
            env={**os.environ, "EVENTBUS_LOG_LEVEL": "WARNING"},
        )
        try:

            def reached(t: int = target, p: asyncio.subprocess.Process = proc) -> bool:
                return len(handled(out)) >= t or p.returncode is not None

            await until(
                reached,
                timeout=180,
                what=f"{target} events handled by the consumer process",
            )
            assert proc.returncode is None, f"consumer process exited early: {proc.returncode}"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        first = handled(out)
        committed = await asyncio.to_thread(committed_offsets, group, stream, PARTITIONS)
        by_partition: dict[int, set[int]] = defaultdict(set)
        for partition, offset, _n in first:
            by_partition[partition].add(offset)
        for partition, point in committed.items():
            missing = set(range(max(point, 0))) - by_partition[partition]
            assert not missing, (
                f"committed {point} on partition {partition} past unhandled {missing}"
            )
    assert len({n for _, _, n in first}) < total, "the kill came too late to test anything"
    assert sum(max(c, 0) for c in committed.values()) > 0, "nothing was committed before the kill"

    second: list[tuple[int, int, int]] = []
    restarted = kafka.bus()

    @restarted.subscribe(group=group, concurrency=4)
    async def handle(event: Tick, ctx: Context) -> None:
        second.append((ctx.partition, ctx.offset, event.n))  # type: ignore[arg-type]

    everything = set(range(total))
    async with restarted:
        await until(
            lambda: {n for *_, n in first} | {n for *_, n in second} == everything,
            timeout=180,
            what="every event handled at least once",
        )
    for partition, offset, n in second:
        assert offset >= max(committed[partition], 0), (
            f"event {n} at {partition}/{offset} redelivered from before the commit point "
            f"{committed[partition]}"
        )
    duplicates = {n for *_, n in first} & {n for *_, n in second}
    after_commit = {n for p, o, n in first if o >= max(committed[p], 0)}
    assert duplicates <= after_commit, "a record before the commit point was handled again"


async def test_sigkill_mid_stream_every_event_handled(kafka: KafkaHarness, tmp_path: Path) -> None:
    await crash_and_restart(kafka, tmp_path, total=20_000, kills=1)


@pytest.mark.soak
async def test_repeated_sigkills_soak(kafka: KafkaHarness, tmp_path: Path) -> None:
    await crash_and_restart(kafka, tmp_path, total=100_000, kills=3)
