"""Aggregates, repositories with snapshots, upcasting, the command bus, the inbox and
projections (catch-up exactly once, rebuild equals live)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventbus.cqrs import CommandBus, InvalidTransition, NotFound
from eventbus.errors import ConcurrencyError
from eventbus.sourcing import (
    EventCodec,
    Inbox,
    NewEvent,
    Repository,
    SqliteEventStore,
    Transaction,
)
from examples.orders.aggregate import Order
from examples.orders.commands import CreateOrder, build_commands, order_codec
from examples.orders.events import OrderCreated, upcasters
from examples.orders.read_model import order_views


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteEventStore]:
    s = SqliteEventStore(f"{tmp_path}/e.db")
    await s.open()
    yield s
    await s.close()


def test_state_changes_only_through_events() -> None:
    order = Order("o1")
    order.create("c1", "c1@example.com", 500)
    order.pay(500)
    assert (order.status, order.version, len(order.pending)) == ("paid", 2, 2)
    with pytest.raises(InvalidTransition, match="cannot deliver order o1: it is paid"):
        order.deliver()
    assert order.version == 2 and len(order.pending) == 2
    assert Order.rehydrate("o1", order.pending) == order


async def test_repository_snapshots_and_concurrency(store: SqliteEventStore) -> None:
    repo = Repository(store, Order, order_codec(), snapshot_every=2)
    order = Order("o1")
    order.create("c1", "c1@example.com", 500)
    order.pay(500)
    await repo.save(order)
    snapshot = await store.load_snapshot("order-o1")
    assert snapshot is not None and snapshot.version == 2
    first, second = await repo.get("o1"), await repo.get("o1")
    assert first == order
    first.ship("DHL")
    second.ship("UPS")
    await repo.save(first)
    with pytest.raises(ConcurrencyError):
        await repo.save(second)
    assert (await repo.get("o1")).status == "shipped"
    with pytest.raises(NotFound):
        await repo.get("missing")


async def test_old_event_versions_are_upcast_on_read(store: SqliteEventStore) -> None:
    await store.append(
        "order-o1",
        [NewEvent(type="order.created", schema_version=1, stream="orders", key="o1",
                  data=b'{"order_id":"o1","customer":"c9","total":12.5,"placed_at":"t"}')],
        0,
    )  # fmt: skip
    (stored,) = await store.read("order-o1")
    event = EventCodec([OrderCreated], upcasters=upcasters).decode(stored)
    assert event == OrderCreated(
        order_id="o1", customer_id="c9", email="c9@example.com", total_cents=1250, placed_at="t"
    )
    assert stored.data.startswith(b'{"order_id":"o1","customer"')  # never rewritten


async def test_command_bus_one_handler_per_type(store: SqliteEventStore) -> None:
    commands = build_commands(Repository(store, Order, order_codec()))
    result = await commands.dispatch(CreateOrder(customer_id="c", email="c@x", total_cents=9))
    assert result.status == "created" and result.version == 1
    with pytest.raises(ValueError, match="one handler"):
        commands.register(CreateOrder, lambda c: None)
    with pytest.raises(LookupError, match="no command handler"):
        await CommandBus().dispatch(CreateOrder(customer_id="c", email="c@x", total_cents=9))


async def test_inbox_dedupes_in_the_update_transaction(store: SqliteEventStore) -> None:
    db = store.database
    inbox = Inbox(db, "g")
    await inbox.setup()
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE counter (n INTEGER)")
        await tx.execute("INSERT INTO counter VALUES (0)")

    async def bump(tx: Transaction) -> None:
        await tx.execute("UPDATE counter SET n = n + 1")

    async def bump_then_fail(tx: Transaction) -> None:
        await bump(tx)
        raise RuntimeError("crash mid-update")

    with pytest.raises(RuntimeError):
        await inbox.handle("e1", bump_then_fail)  # rolled back: id not recorded either
    assert not await inbox.seen("e1")
    assert await inbox.handle("e1", bump) is True
    assert await inbox.handle("e1", bump) is False
    assert await Inbox(db, "other").handle("e1", bump) is True
    async with db.transaction() as tx:
        assert await tx.fetchone("SELECT n FROM counter") == (2,)


async def test_projection_catch_up_is_exactly_once_and_rebuild_equals_it(
    store: SqliteEventStore, tmp_path: Path
) -> None:
    commands = build_commands(Repository(store, Order, order_codec()))
    for n in range(20):
        await commands.dispatch(
            CreateOrder(order_id=f"o{n}", customer_id=f"c{n % 3}", email="e@x", total_cents=100 + n)
        )
    db = store.database
    await order_views.setup(db)
    assert await order_views.catch_up(store, db, order_codec(), batch_size=7) == 20
    assert await order_views.catch_up(store, db, order_codec()) == 0  # checkpoint holds
    assert await order_views.checkpoint(db) == 20
    live = await order_views.dump(db)
    assert len(live["order_details"]) == 20
    other = SqliteEventStore(f"{tmp_path}/rebuild.db")
    await other.open()
    try:
        assert await order_views.rebuild(store, other.database, order_codec()) == 20
        assert await order_views.dump(other.database) == live
    finally:
        await other.close()


async def test_second_relay_stands_by_and_takes_over(tmp_path: Path) -> None:
    """Two relays on one store (two stores on one file: two processes, really): only the
    lease holder publishes; when it stops, the standby takes over and nothing is lost."""
    import asyncio

    from eventbus import EventBus
    from eventbus.sourcing import OutboxRelay

    first_store = SqliteEventStore(f"{tmp_path}/r.db")
    second_store = SqliteEventStore(f"{tmp_path}/r.db")
    await first_store.open()
    await second_store.open()
    codec = order_codec()
    repo = Repository(first_store, Order, codec)
    seen: list[str] = []
    bus = EventBus("memory://relay-lease")

    @bus.subscribe(group="g")
    async def on_created(event: OrderCreated) -> None:
        seen.append(event.order_id)

    async def place(n: int) -> None:
        order = await repo.load(f"o{n}")
        order.create(f"c{n}", f"c{n}@example.com", 100 + n)
        await repo.save(order)

    async with bus:
        first = OutboxRelay(first_store, bus, codec, poll_interval=0.01)
        second = OutboxRelay(second_store, bus, codec, poll_interval=0.01, standby_interval=0.05)
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        running_first = asyncio.create_task(first.run(stop_first))
        for _ in range(3000):  # the first relay holds the lease before the second starts
            if await first_store.relay_lease_held():
                break
            await asyncio.sleep(0.01)
        running_second = asyncio.create_task(second.run(stop_second))
        for n in range(5):
            await place(n)
        for _ in range(3000):  # handled, and counted by the relay after publish returned
            if len(seen) == 5 and first.published == 5:
                break
            await asyncio.sleep(0.01)
        assert first.published == 5 and second.published == 0  # the standby stayed idle
        stop_first.set()
        await running_first  # the lease is released: the standby takes over
        for n in range(5, 8):
            await place(n)
        for _ in range(3000):
            if len(seen) == 8 and second.published == 3:
                break
            await asyncio.sleep(0.01)
        stop_second.set()
        await running_second
    assert sorted(seen) == sorted(f"o{n}" for n in range(8))
    assert second.published == 3
    await first_store.close()
    await second_store.close()
