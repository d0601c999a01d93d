"""The exactly-once proof on Kafka: orders -> transform process -> invoices, 20k orders
with keys, the transform process SIGKILLed at 10 random moments and restarted. With
`exactly_once=True` every order has exactly one committed invoice, in key order; the same
run without it shows the duplicates it prevents."""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from eventbus import Event
from eventbus.testing.conformance import unique

from ..crashes import activity_of, kill_repeatedly, outputs_of, progress_of
from .harness import KafkaHarness
from .support import committed_offsets
from .test_exactly_once import read_all

pytestmark = [pytest.mark.kafka, pytest.mark.soak, pytest.mark.timeout(900)]

TOTAL = 20_000
KILLS = 10
PARTITIONS = 6
KEYS = 97


async def crash_run(kafka: KafkaHarness, tmp_path: Path, mode: str, seed: int) -> dict[str, Any]:
    stream, out, group = unique("eos-orders"), unique("eos-invoices"), unique("g")
    kafka.extra_topics |= {out, f"{stream}.{group}.dlq", f"{stream}.{group}.replay"}

    class Order(Event, stream=stream, type="order"):
        key: str
        n: int

    async with kafka.bus(partitions=PARTITIONS) as publisher:
        await publisher.publish_many(
            [(Order(key=f"k{n % KEYS}", n=n), f"k{n % KEYS}") for n in range(TOTAL)]
        )
    progress_file = tmp_path / f"{mode}.progress"
    progress_file.touch()
    progress = progress_of(progress_file)

    last_check = [0.0]

    def finished() -> bool:
        if progress() < TOTAL or time.monotonic() - last_check[0] < 0.5:
            return False
        last_check[0] = time.monotonic()
        offsets = committed_offsets(group, stream, PARTITIONS)
        return sum(max(o, 0) for o in offsets.values()) == TOTAL

    run = await kill_repeatedly(
        "tests.kafka.transform_process",
        [mode, stream, out, group, str(progress_file)],
        progress,
        activity_of(progress_file),
        finished,
        total=TOTAL,
        kills=KILLS,
        seed=seed,
    )
    records = await asyncio.to_thread(read_all, out, TOTAL, timeout=120)
    outputs = (  # per partition in log order; a key lives on one partition
        (r.key().decode(), int(r.value().decode().split('"n":')[1].rstrip("}"))) for r in records
    )
    figures: dict[str, Any] = {
        "mode": mode,
        "orders": TOTAL,
        "kills": len(run.kills),
        **outputs_of(outputs, TOTAL),
        "handled (with re-runs)": len(progress_file.read_text().splitlines()),
    }
    print(f"\nKafka exactly-once proof ({mode}): {figures}; {run.summary()}")
    return figures


async def test_exactly_once_outputs_survive_ten_kills_of_the_transform(
    kafka: KafkaHarness, tmp_path: Path
) -> None:
    figures = await crash_run(kafka, tmp_path, "eos", seed=15)
    assert figures["kills"] == KILLS
    assert figures["missing"] == 0
    assert figures["duplicates"] == 0
    assert figures["out of key order"] == 0
    assert figures["outputs"] == TOTAL
    # the kills did strike mid-stream: orders ran again, yet were committed once
    assert figures["handled (with re-runs)"] > TOTAL


async def test_without_exactly_once_the_same_kills_duplicate_invoices(
    kafka: KafkaHarness, tmp_path: Path
) -> None:
    """The baseline: at-least-once (nothing missing, key order of first occurrences
    kept); the duplicates it prints are what `exactly_once=True` prevents."""
    figures = await crash_run(kafka, tmp_path, "plain", seed=15)
    assert figures["kills"] == KILLS
    assert figures["missing"] == 0
    assert figures["out of key order"] == 0
