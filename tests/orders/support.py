"""Shared by the order tests: services as processes, and the read model checked against
the event store."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter, defaultdict
from pathlib import Path

from eventbus.sourcing import Database, EventStore, SqliteDatabase
from eventbus.sourcing.transactional import output_stream
from examples.orders.commands import order_codec
from examples.orders.demo import rebuild_and_compare, stored_counts
from examples.orders.events import NotificationQueued, OrderCreated, OrderPaid
from examples.orders.notifications import MAILER
from examples.orders.read_model import PROJECTIONS

ROOT = Path(__file__).resolve().parents[2]


async def start(service: str, env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`python -m examples.orders service args...` as a process of its own; returns once
    it says it runs (fails if it exits first)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.orders", service, *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        while not (line := await proc.stdout.readline()).startswith(b"orders: running"):
            assert line, f"{service} exited with {await proc.wait()}"
    return proc


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def stop_all(procs: dict[str, asyncio.subprocess.Process]) -> None:
    """SIGTERM to every service still running; SIGKILL to one not gone within 60 s."""
    for proc in procs.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                await kill(proc)


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


async def assert_read_model_is_exact(
    store: EventStore, db: Database, tmp: str, *, queued: bool = True
) -> None:
    """Every event applied exactly once (inboxes or checkpoints), the summaries match the
    store, and a replay of the store builds an identical read model. `queued`: the
    notification service ran on the bus, so every e-mail's `NotificationQueued` was stored
    exactly once, caused by its order event, and reached the mailer."""
    async with db.transaction() as tx:
        rows = await tx.fetchall(
            "SELECT customer_id, total_orders, total_spent_cents FROM customer_summaries"
        )
        mails = await tx.fetchall("SELECT event_id, order_id FROM notifications")
        orders, _ = await stored_counts(tx)
        notes = await tx.fetchall(
            "SELECT stream_id, version, causation_id, key, event_id FROM events WHERE type = ?",
            (NotificationQueued.__event_type__,),
        )
        mailed = await tx.fetchall("SELECT event_id FROM inbox WHERE consumer_group = ?", (MAILER,))
    assert {r[0]: (int(r[1]), int(r[2])) for r in rows} == await expected_summaries(store)
    assert len(mails) == orders, "one e-mail per order event: none lost, none sent twice"
    expected = [(output_stream("notifications", e), 1, e, o) for e, o in mails] if queued else []
    assert sorted(tuple(n[:4]) for n in notes) == sorted(expected), "each queued once"
    assert sorted(m[0] for m in mailed) == sorted(n[4] for n in notes), "each mailed once"
    rebuild = SqliteDatabase(f"{tmp}/rebuild.db")
    await rebuild.open()
    try:
        assert await rebuild_and_compare(store, db, rebuild) == []
    finally:
        await rebuild.close()
    assert len(PROJECTIONS) == 2
