"""The transform process of the RabbitMQ exactly-once proof
(`python -m tests.rabbitmq.transform_process MODE STREAM OUT GROUP PROGRESS STORE_URL`):
reads `order` events and writes one `invoices` row per order to PostgreSQL, appending the
order's number to PROGRESS after each handled order. MODE `txn`: a transactional handler
(inbox, the row and the `invoice` event it publishes in one transaction); `plain`: the
row in its own transaction, the invoice published at once (at-least-once: the baseline)."""

import asyncio
import os
import sys

from eventbus import Context, Event, EventBus
from eventbus.sourcing import Transaction, open_store, transactional

from .support import URL


def main(mode: str, stream: str, out: str, group: str, progress: str, store_url: str) -> None:
    class Order(Event, stream=stream, type="order"):
        key: str
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        key: str
        n: int

    store = open_store(store_url)
    bus = EventBus(URL)
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    insert = "INSERT INTO invoices (n, key) VALUES (?, ?)"

    if mode == "txn":

        @bus.subscribe(group=group, concurrency=4)
        @transactional(store)
        async def transform(event: Order, ctx: Context, tx: Transaction) -> None:
            await tx.execute(insert, (event.n, event.key))
            await ctx.publish(Invoice(key=event.key, n=event.n), key=event.key)
            os.write(fd, f"{event.n}\n".encode())

    else:
        db = store.database
        assert db is not None

        @bus.subscribe(group=group, concurrency=4)
        async def plain(event: Order, ctx: Context) -> None:
            async with db.transaction() as tx:
                await tx.execute(insert, (event.n, event.key))
            await ctx.publish(Invoice(key=event.key, n=event.n), key=event.key)
            os.write(fd, f"{event.n}\n".encode())

    async def run() -> None:
        await store.open()
        try:
            await bus.run()
        finally:
            await store.close()

    asyncio.run(run())


if __name__ == "__main__":
    main(*sys.argv[1:7])
