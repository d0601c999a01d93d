"""What a batch handler buys on Kafka: every order read from a topic is written to a SQLite
table, one transaction per handler call. A handler of one event commits once per event;
a batch handler (`list[...]`, `batch_size` 500) inserts its batch with `executemany` and
commits once per batch.

The orders are produced before the run (not measured); a run is timed from the first
order handled to the last.
"""

import asyncio
import sqlite3
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from eventbus import EventBus

from .core import Scenario, Stopwatch, metrics_of
from .kafka import PARTITIONS, _delete, _raw_produce, _raw_producer, _topic
from .servers import KAFKA_BOOTSTRAP
from .workload import make_event_class

BATCH_SIZE = 500


async def sqlite_run(count: int, batch: bool) -> dict[str, float]:
    topic = _topic()
    order_class = make_event_class(topic)
    producer = await asyncio.to_thread(_raw_producer, topic)
    await asyncio.to_thread(_raw_produce, producer, topic, count - 1, None, "CloudEvents")
    bus = EventBus(f"kafka://{KAFKA_BOOTSTRAP}")
    handled = 0
    first = last = 0.0
    done = asyncio.Event()
    watch = Stopwatch()  # restarted at the first handled event, as the throughput is
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(Path(tmp, "orders.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE orders (order_id TEXT, total REAL)")

        def saw(n: int) -> None:
            nonlocal handled, first, last
            if not handled:
                watch.restart()  # reads the broker's clock first: not inside the stretch
                first = time.perf_counter()
            handled += n
            last = time.perf_counter()
            if handled >= count and not done.is_set():
                watch.stop()
                done.set()

        if batch:

            @bus.subscribe(group="bench-batch", batch_size=BATCH_SIZE)
            async def many(events: list[order_class]) -> None:  # type: ignore[valid-type]
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO orders VALUES (?, ?)",
                    [(e.order_id, e.total) for e in events],  # type: ignore[attr-defined]
                )
                db.execute("COMMIT")
                saw(len(events))

        else:

            @bus.subscribe(group="bench-batch")
            async def one(event: order_class) -> None:  # type: ignore[valid-type]
                db.execute("BEGIN")
                db.execute(
                    "INSERT INTO orders VALUES (?, ?)",
                    (event.order_id, event.total),  # type: ignore[attr-defined]
                )
                db.execute("COMMIT")
                saw(1)

        try:
            async with bus:
                await asyncio.wait_for(done.wait(), 600)
            stored = db.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
            if stored < count:
                raise RuntimeError(f"{stored} of {count} orders stored")
            metrics: dict[str, Any] = metrics_of(count, last - first, watch=watch)
            return metrics
        finally:
            db.close()
            await asyncio.to_thread(_delete, topic)


def scenarios(quick: bool) -> list[Scenario]:
    count = 5_000 if quick else 50_000
    return [
        Scenario(
            "kafka",
            "batch handler",
            f"{count:,} orders -> handler -> SQLite insert, one transaction per call, "
            f"{PARTITIONS} partitions; eventbus = a batch handler (batch_size {BATCH_SIZE})",
            {
                "eventbus": partial(sqlite_run, count, True),
                "eventbus, one event per call": partial(sqlite_run, count, False),
            },
        )
    ]
