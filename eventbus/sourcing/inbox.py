"""The inbox: an idempotent consumer. The event id is recorded per consumer group in the
same transaction as the read-model update, so a redelivered event changes nothing.
`handle_once` is that step, shared by `Inbox.handle`, bus-driven projections
(`Projection.bind`) and transactional handlers (`eventbus.sourcing.transactional`, which
adds the outbox to it). The event stores create the `inbox` table with their own.

    inbox = Inbox(db, group="notifications")

    @bus.subscribe(group="notifications")
    async def on_paid(event: OrderPaid, ctx: Context) -> None:
        async def update(tx: Transaction) -> None:
            await tx.execute("INSERT INTO mails ...", (...))
        await inbox.handle(ctx.envelope.id, update)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from eventbus.log import get_logger

from .database import Database, Transaction, create_schema

T = TypeVar("T")
_log = get_logger()

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS inbox (
        consumer_group TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (consumer_group, event_id)
    )""",
)


class Inbox:
    def __init__(self, db: Database, group: str) -> None:
        self.db = db
        self.group = group

    async def setup(self) -> None:
        await create_schema(self.db, SCHEMA)

    async def handle(self, event_id: str, update: Callable[[Transaction], Awaitable[T]]) -> bool:
        """Run `update(tx)` unless this group handled `event_id` before; returns whether it
        ran. The id is recorded in the same transaction, so both commit or neither does."""
        return await handle_once(self.db, self.group, event_id, update)

    async def seen(self, event_id: str) -> bool:
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT 1 FROM inbox WHERE consumer_group = ? AND event_id = ?",
                (self.group, event_id),
            )
        return row is not None


async def handle_once(
    db: Database, group: str, event_id: str, update: Callable[[Transaction], Awaitable[T]]
) -> bool:
    """In one transaction of `db`: record `event_id` for `group` in the inbox and run
    `update(tx)`; returns whether it ran. An id recorded before runs nothing (logged at info,
    `handler.duplicate`); an `update` that raises rolls back the record too, so a later
    delivery runs it again."""
    async with db.transaction() as tx:
        if not await record(tx, group, event_id):
            _log.info("handler.duplicate", event_id=event_id, group=group)
            return False
        await update(tx)
    return True


async def record(tx: Transaction, group: str, event_id: str) -> bool:
    """Record `event_id` for `group` inside `tx`; False if it was recorded before.

    On PostgreSQL a concurrent duplicate waits on the primary key until the first commits,
    then inserts nothing."""
    inserted = await tx.execute(
        "INSERT INTO inbox (consumer_group, event_id) VALUES (?, ?) "
        "ON CONFLICT (consumer_group, event_id) DO NOTHING",
        (group, event_id),
    )
    return inserted == 1
