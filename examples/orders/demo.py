"""The demo: the whole order system in one process, driven through its HTTP APIs (FastAPI
on uvicorn, called with httpx).

Places orders, drives their lifecycle (with rejected transitions and a concurrent-update
conflict), waits for the projections, prints the read model and the notifications, then
rebuilds the read model by replaying the store and checks it is identical.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter
from typing import Any

import httpx

from eventbus.sourcing import Database, EventStore, SqliteDatabase, Transaction, open_store

from .events import ORDER_EVENTS, NotificationQueued
from .notifications import MAILER
from .read_model import PROJECTIONS
from .services import OrdersSettings, System, load_orders_settings


def client(port: int, host: str = "127.0.0.1") -> httpx.AsyncClient:
    """An HTTP client of a service (keep-alive connections, generous timeouts)."""
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60)


async def drive(
    command: httpx.AsyncClient, orders: int, *, seed: int = 7, parallel: int = 16
) -> Counter[str]:
    """Place `orders` orders and move them along; returns a tally of the outcomes."""
    rng = random.Random(seed)
    tally: Counter[str] = Counter()
    gate = asyncio.Semaphore(parallel)

    async def call(method: str, path: str, body: Any, expect: int) -> Any:
        async with gate:
            response = await command.request(method, path, json=body)
        if response.status_code != expect:
            raise AssertionError(
                f"{method} {path}: expected {expect}, got {response.status_code} {response.text}"
            )
        return response.json()

    async def lifecycle(n: int) -> None:
        customer = f"c{n % 37:03d}"
        total = rng.randint(500, 50_000)
        order = await call(
            "POST", "/orders",
            {"customer_id": customer, "email": f"{customer}@example.com", "total_cents": total},
            201,
        )  # fmt: skip
        oid = order["order_id"]
        tally["created"] += 1
        stage = n % 4  # 0: stays created, 1: paid, 2: shipped, 3: delivered
        if stage == 0:
            err = await call("POST", f"/orders/{oid}/ship", {}, 409)  # not paid yet
            assert err["error"] == "invalid_transition", err
            tally["rejected: ship before pay"] += 1
            return
        if n % 10 == 1:
            err = await call("POST", f"/orders/{oid}/pay", {"amount_cents": total - 1}, 422)
            assert err["error"] == "wrong_amount", err
            tally["rejected: wrong amount"] += 1
        await call("POST", f"/orders/{oid}/pay", {"amount_cents": total}, 200)
        tally["paid"] += 1
        if stage == 1:
            return
        await call("POST", f"/orders/{oid}/ship", {"carrier": rng.choice(["DHL", "UPS"])}, 200)
        tally["shipped"] += 1
        if stage == 2:
            err = await call("POST", f"/orders/{oid}/pay", {"amount_cents": total}, 409)
            assert err["error"] == "invalid_transition", err
            tally["rejected: pay twice"] += 1
            return
        await call("POST", f"/orders/{oid}/deliver", {}, 200)
        tally["delivered"] += 1

    await asyncio.gather(*(lifecycle(n) for n in range(orders)))

    # the concurrent-update conflict: two clerks pay the same order, both at version 1
    order = await call(
        "POST",
        "/orders",
        {"customer_id": "c999", "email": "c999@example.com", "total_cents": 1234},
        201,
    )
    tally["created"] += 1
    racing = await asyncio.gather(
        *(
            command.post(
                f"/orders/{order['order_id']}/pay",
                json={"amount_cents": 1234, "expected_version": 1},
            )
            for _ in range(2)
        )
    )
    statuses = sorted(r.status_code for r in racing)
    if statuses != [200, 409]:
        answers = [(r.status_code, r.text) for r in racing]
        raise AssertionError(f"concurrent pay: expected one 200 and one 409, got {answers}")
    conflict = next(r.json() for r in racing if r.status_code == 409)
    assert conflict["error"] == "concurrency_conflict", conflict
    tally["paid"] += 1
    tally["rejected: concurrent update"] += 1
    return tally


async def settled(store: EventStore, db: Database, timeout: float = 60.0) -> None:
    """Wait until every stored event went through the outbox and every projection, and
    every notification queued reached the mailer."""
    deadline = time.monotonic() + timeout
    while True:
        last = await store.last_position()
        pending = await store.outbox_pending(1)
        async with db.transaction() as tx:
            orders, queued = await stored_counts(tx)
            counts = [await _inbox_count(tx, p.name) for p in PROJECTIONS]
            mailed = await _inbox_count(tx, MAILER)
            checkpoints = [
                (
                    await tx.fetchone(
                        "SELECT position FROM projection_checkpoints WHERE name = ?", (p.name,)
                    )
                    or (0,)
                )[0]
                for p in PROJECTIONS
            ]
        on_bus = not pending and all(c == orders for c in counts) and mailed == queued
        if on_bus or all(c == last for c in checkpoints):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"projections did not catch up: {orders} order events, inbox counts {counts}, "
                f"checkpoints {checkpoints} (of {last}), {mailed} of {queued} notifications "
                f"mailed, outbox {'not ' if pending else ''}empty"
            )
        await asyncio.sleep(0.05)


async def stored_counts(tx: Transaction) -> tuple[int, int]:
    """(order events, notifications queued) in the store."""
    types = [cls.__event_type__ for cls in ORDER_EVENTS]
    row = await tx.fetchone(
        f"SELECT count(*) FROM events WHERE type IN ({', '.join('?' * len(types))})", types
    )
    queued = await tx.fetchone(
        "SELECT count(*) FROM events WHERE type = ?", (NotificationQueued.__event_type__,)
    )
    return int(row[0]) if row else 0, int(queued[0]) if queued else 0


async def _inbox_count(tx: Transaction, group: str) -> int:
    row = await tx.fetchone("SELECT count(*) FROM inbox WHERE consumer_group = ?", (group,))
    return int(row[0]) if row else 0


async def rebuild_and_compare(store: EventStore, db: Database, rebuild_db: Database) -> list[str]:
    """Replay the store into `rebuild_db`; the names of the projections that differ."""
    differ = []
    for projection in PROJECTIONS:
        await projection.rebuild(store, rebuild_db)
        if await projection.dump(db) != await projection.dump(rebuild_db):
            differ.append(projection.name)
    return differ


def _money(cents: int) -> str:
    return f"{cents / 100:>10,.2f}"


async def show(query: httpx.AsyncClient) -> None:
    customers = (await query.get("/customers")).raise_for_status().json()
    print("\nTop customers (read model, via the query API):")
    print(f"  {'customer':<10} {'orders':>6} {'spent EUR':>10}   recent orders")
    for row in customers[:8]:
        summary = (await query.get(f"/customers/{row['customer_id']}")).raise_for_status().json()
        recent = ", ".join(
            f"{o['order_id'][:6]}:{o['status']}" for o in summary["recent_orders"][:3]
        )
        spent = _money(row["total_spent_cents"])
        print(f"  {row['customer_id']:<10} {row['total_orders']:>6} {spent}   {recent}")
    mails = (await query.get("/notifications")).raise_for_status().json()
    print(f"\nNotifications recorded: {len(mails)} e-mails. A few:")
    for mail in mails[:4]:
        print(f"  to {mail['recipient']:<18} {mail['subject']}")


async def run_demo(
    orders: int = 300, bus_url: str = "memory://", store_url: str | None = None
) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eventbus-orders-") as tmp:
        settings: OrdersSettings = load_orders_settings(
            store_url=store_url or f"sqlite:///{tmp}/orders.db"
        )
        print(f"Order system on {bus_url} + {settings.store_url.split('?')[0].rsplit('@', 1)[-1]}")
        async with System(settings, bus_url=bus_url, ephemeral_ports=True) as system:
            assert system.command is not None and system.query is not None
            async with client(system.command.port) as command, client(system.query.port) as query:
                tally = await drive(command, orders)
                print("\nCommands through the HTTP API:")
                for name, count in sorted(tally.items()):
                    print(f"  {name:<28} {count:>5}")
                store = open_store(settings.store_url)
                await store.open()
                try:
                    db = store.database
                    assert db is not None
                    await settled(store, db)
                    events = await store.last_position()
                    async with db.transaction() as tx:
                        orders, queued = await stored_counts(tx)
                    print(
                        f"\n{orders} order events stored, published through the outbox, "
                        f"projected.\n{queued} e-mails queued (NotificationQueued: one per order "
                        "event, committed with its row) and published to the mailer."
                    )
                    await show(query)
                    rebuild_db = SqliteDatabase(f"{tmp}/rebuild.db")
                    await rebuild_db.open()
                    try:
                        differ = await rebuild_and_compare(store, db, rebuild_db)
                    finally:
                        await rebuild_db.close()
                finally:
                    await store.close()
    took = time.monotonic() - started
    if differ:
        print(f"\nFAILED: the replayed read model differs from the live one: {differ}")
        return 1
    print(f"\nRebuilt the read model by replaying {events} events: identical. ({took:.1f} s)")
    return 0
