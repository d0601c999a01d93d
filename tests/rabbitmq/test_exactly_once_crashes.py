"""The exactly-once proof on RabbitMQ with PostgreSQL: orders -> transform process ->
an `invoices` table, 20k orders with keys, the transform process SIGKILLed at 10 random
moments and restarted. With the transactional handler every order has exactly one row
(and one stored invoice event), in key order; the same run with a plain handler shows the
duplicate rows it prevents."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from eventbus import Event
from eventbus.sourcing import Database, open_store
from eventbus.sourcing.postgres import PostgresDatabase
from eventbus.testing.conformance import unique

from ..crashes import activity_of, kill_repeatedly, outputs_of, progress_of
from ..sourcing.conftest import POSTGRES_DSN
from ..sourcing.support import unique_schema
from .harness import RabbitMQHarness
from .support import delete_topology

pytestmark = [
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
    pytest.mark.soak,
    pytest.mark.timeout(900),
]

TOTAL = 20_000
KILLS = 10
KEYS = 97


async def rows(db: Database, sql: str) -> list[Any]:
    async with db.transaction() as tx:
        return await tx.fetchall(sql)


async def crash_run(tmp_path: Path, mode: str, seed: int) -> dict[str, Any]:
    stream, out, group = unique("eos-orders"), unique("eos-invoices"), unique("g")
    schema = unique_schema()
    store_url = f"{POSTGRES_DSN}?schema={schema}"
    harness = RabbitMQHarness()

    class Order(Event, stream=stream, type="order"):
        key: str
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        key: str
        n: int

    store = open_store(store_url)
    await store.open()  # events, outbox and inbox tables
    db = store.database
    assert db is not None
    async with db.transaction() as tx:
        await tx.execute(  # no unique key: a duplicate would be a second row
            "CREATE TABLE invoices (id BIGSERIAL PRIMARY KEY, n INTEGER NOT NULL, "
            "key TEXT NOT NULL)"
        )
    try:
        # the group's queue and the invoices' stream exist before the orders are sent
        declare = harness.bus()

        @declare.subscribe(group=group)
        async def nothing(event: Order) -> None:
            raise AssertionError("the declaring bus never runs a handler")

        @declare.subscribe(group="sink")
        async def sink(event: Invoice) -> None: ...

        await declare.start()
        await declare.stop()
        async with harness.bus() as publisher:
            await publisher.publish_many(
                [(Order(key=f"k{n % KEYS}", n=n), f"k{n % KEYS}") for n in range(TOTAL)]
            )
        progress_file = tmp_path / f"{mode}.progress"
        progress_file.touch()
        progress = progress_of(progress_file)

        def finished() -> bool:
            return progress() >= TOTAL

        run = await kill_repeatedly(
            "tests.rabbitmq.transform_process",
            [mode, stream, out, group, str(progress_file), store_url],
            progress,
            activity_of(progress_file),
            finished,
            total=TOTAL,
            kills=KILLS,
            seed=seed,
        )
        found = await rows(db, "SELECT n, key FROM invoices ORDER BY id")
        stored = await rows(db, "SELECT count(*) FROM events WHERE type = 'invoice'")
        inbox = await rows(db, "SELECT count(*) FROM inbox")
    finally:
        await store.close()
        cleanup = PostgresDatabase(POSTGRES_DSN, schema=schema)
        try:
            await cleanup.drop_schema()
        finally:
            await cleanup.close()
        await asyncio.to_thread(delete_topology, [stream, out])
    figures: dict[str, Any] = {
        "mode": mode,
        "orders": TOTAL,
        "kills": len(run.kills),
        **outputs_of(((key, int(n)) for n, key in found), TOTAL),
        "stored invoice events": int(stored[0][0]),
        "inbox entries": int(inbox[0][0]),
        "handled (with re-runs)": len(progress_file.read_text().splitlines()),
    }
    print(f"\nRabbitMQ + PostgreSQL exactly-once proof ({mode}): {figures}; {run.summary()}")
    return figures


async def test_transactional_handler_effects_survive_ten_kills(tmp_path: Path) -> None:
    figures = await crash_run(tmp_path, "txn", seed=15)
    assert figures["kills"] == KILLS
    assert figures["missing"] == 0
    assert figures["duplicates"] == 0
    assert figures["out of key order"] == 0
    assert figures["outputs"] == TOTAL
    assert figures["stored invoice events"] == TOTAL  # queued once each for the relay
    assert figures["inbox entries"] == TOTAL


async def test_without_the_transactional_handler_the_same_kills_duplicate_rows(
    tmp_path: Path,
) -> None:
    """The baseline: at-least-once (nothing missing); the duplicate rows it prints are
    what the transactional handler prevents."""
    figures = await crash_run(tmp_path, "plain", seed=15)
    assert figures["kills"] == KILLS
    assert figures["missing"] == 0
