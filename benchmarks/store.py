"""Event-store append (batched) and replay rates, SQLite and PostgreSQL.

Append: `batch` events per `append` call (one transaction each), one stream per batch.
Replay: `read_all` pages of 5,000 over everything appended, rows turned into StoredEvent.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from eventbus.sourcing import EventStore, NewEvent, SqliteEventStore

from .core import Scenario

PG_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus"
)
BODY = b'{"order_id":"o-123456","customer_id":"c-42","email":"c42@example.com","total_cents":1999}'
BATCH = 100


@asynccontextmanager
async def open_backend(backend: str) -> AsyncIterator[EventStore]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store: EventStore = SqliteEventStore(f"{tmp}/bench.db")
            await store.open()
            try:
                yield store
            finally:
                await store.close()
    else:
        from eventbus.sourcing.postgres import PostgresEventStore

        pg = PostgresEventStore(PG_URL, schema=f"bench_{uuid.uuid4().hex[:8]}")
        await pg.open()
        try:
            yield pg
        finally:
            await pg.database.drop_schema()
            await pg.close()


async def measure(backend: str, events: int, which: str) -> dict[str, float]:
    async with open_backend(backend) as store:
        batches = [
            [
                NewEvent(type="order.created", data=BODY, stream="orders", key=f"o-{b}")
                for _ in range(BATCH)
            ]
            for b in range(events // BATCH)
        ]
        started = time.perf_counter()
        for n, chunk in enumerate(batches):
            await store.append(f"order-{n}", chunk, 0)
        append_s = time.perf_counter() - started
        started = time.perf_counter()
        position, replayed = 1, 0
        while page := await store.read_all(position, 5000):
            replayed += len(page)
            position = page[-1].position + 1
        replay_s = time.perf_counter() - started
    stored = len(batches) * BATCH
    if replayed != stored:
        raise AssertionError(f"replayed {replayed} of {stored} events")
    seconds = append_s if which == "append" else replay_s
    return {"throughput": stored / seconds}


def scenarios(quick: bool) -> list[Scenario]:
    n = 20_000 if quick else 200_000
    result = []
    for backend in ("sqlite", "postgresql"):
        result.append(
            Scenario(
                backend,
                "append (batched)",
                f"append {BATCH} events per call, one transaction each",
                {"eventbus": partial(measure, backend, n, "append")},
            )
        )
        result.append(
            Scenario(
                backend,
                "replay",
                "read_all in pages of 5,000, in global order",
                {"eventbus": partial(measure, backend, n, "replay")},
            )
        )
    return result
