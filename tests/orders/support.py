"""Checks shared by the order tests: the read model against the event store."""

from __future__ import annotations

from collections import Counter, defaultdict

from eventbus.sourcing import Database, EventStore, SqliteDatabase
from examples.orders.commands import order_codec
from examples.orders.demo import rebuild_and_compare
from examples.orders.events import OrderCreated, OrderPaid
from examples.orders.read_model import PROJECTIONS


async def expected_summaries(store: EventStore) -> dict[str, tuple[int, int]]:
    """customer -> (orders, cents spent), computed straight from the store."""
    codec = order_codec()
    owner: dict[str, str] = {}
    orders: Counter[str] = Counter()
    spent: defaultdict[str, int] = defaultdict(int)
    position = 1
    while batch := await store.read_all(position, 1000):
        for stored in batch:
            event = codec.decode(stored)
            if isinstance(event, OrderCreated):
                owner[event.order_id] = event.customer_id
                orders[event.customer_id] += 1
            elif isinstance(event, OrderPaid):
                spent[owner[event.order_id]] += event.amount_cents
        position = batch[-1].position + 1
    return {c: (orders[c], spent[c]) for c in orders}


async def assert_read_model_is_exact(store: EventStore, db: Database, tmp: str) -> None:
    """Every event applied exactly once (inboxes or checkpoints), the summaries match the
    store, and a replay of the store builds an identical read model."""
    last = await store.last_position()
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT customer_id, total_orders, total_spent_cents FROM customer_summaries"
        )
        (mails,) = await tx.fetchone("SELECT count(*) FROM notifications") or (0,)
    assert {r[0]: (int(r[1]), int(r[2])) for r in rows} == await expected_summaries(store)
    assert mails == last, "one e-mail per event: none lost, none sent twice"
    rebuild = SqliteDatabase(f"{tmp}/rebuild.db")
    await rebuild.open()
    try:
        assert await rebuild_and_compare(store, db, rebuild) == []
    finally:
        await rebuild.close()
    assert len(PROJECTIONS) == 2
