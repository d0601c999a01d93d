"""A projection survives events its read model cannot apply (issue #9, "poison-proof"):
from the store they are retried, then parked with the reason while every later event
still applies; from the bus the bus's retry and dead-letter policy takes them; and a
projection task never ends silently."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import structlog

from eventbus import EventBus, RetryPolicy
from eventbus.log import configure
from eventbus.retry import Reject
from eventbus.sourcing import (
    EventStore,
    MemoryEventStore,
    Projection,
    SqliteDatabase,
    StoredEvent,
    Transaction,
)
from eventbus.sourcing.database import Database
from eventbus.sourcing.projection import ProjectionConflict
from examples.orders.commands import CreateOrder, build_commands, order_codec, order_repository
from examples.orders.read_model import GetOrder, build_queries, order_views

from .conftest import POSTGRES_DSN
from .support import Deposited, make_store, new_event, unique_schema

FAST = RetryPolicy(attempts=3, backoff=0.0)


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Wait until `condition()` holds (polling), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


# --- the order system's read model, on real stores --------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def order_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "sqlite":
        store = make_store(("sqlite", f"{tmp_path}/orders.db"))
    else:
        store = make_store(("postgresql", POSTGRES_DSN, unique_schema()))
    await store.open()
    try:
        yield store
    finally:
        if request.param == "postgresql":
            await store.database.drop_schema()  # type: ignore[union-attr]
        await store.close()


async def test_an_order_the_read_model_refuses_is_parked_and_later_orders_still_apply(
    order_store: EventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """The order system accepts `total_cents = 2**63`; neither SQLite (OverflowError) nor
    PostgreSQL (bigint out of range) can store it in the read model."""
    db = order_store.database
    assert db is not None
    await order_views.setup(db)
    commands = build_commands(order_repository(order_store))

    async def create(order_id: str, total_cents: int) -> None:
        command = CreateOrder(
            order_id=order_id, customer_id="c", email="c@x.io", total_cents=total_cents
        )
        await commands.dispatch(command)

    for n in range(3):
        await create(f"before{n}", 100 + n)
    await create("huge", 2**63)
    for n in range(3):
        await create(f"after{n}", 200 + n)
    last = await order_store.last_position()

    configure("json", "INFO", force=True)
    stop = asyncio.Event()
    task = asyncio.create_task(
        order_views.run(order_store, db, order_codec(), stop=stop, poll_interval=0.01, retry=FAST)
    )
    try:
        await until(lambda: _checkpoint_is(db, last))
        assert not task.done()  # still following the store
        queries = build_queries(db)
        for order_id in [*(f"before{n}" for n in range(3)), *(f"after{n}" for n in range(3))]:
            assert (await queries.ask(GetOrder(order_id=order_id)))["status"] == "created"
        [failed] = await order_views.failures(db)
        assert failed.position == 4 and failed.type == "order.created"
        assert failed.stream_id == "order-huge" and failed.attempts == FAST.attempts
        assert "OverflowError" in failed.error or "out of range" in failed.error
        assert "Traceback" in failed.traceback

        # later orders keep flowing into the read model
        await create("later", 7)
        await until(lambda: _checkpoint_is(db, last + 1))
        assert (await queries.ask(GetOrder(order_id="later")))["total_cents"] == 7
    finally:
        stop.set()
        await task
        structlog.reset_defaults()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    [parked] = [line for line in lines if line["event"] == "projection.event_parked"]
    assert parked["level"] == "error" and parked["projection"] == "order-views"
    assert parked["event_id"] == failed.event_id and parked["position"] == 4
    retries = [line for line in lines if line["event"] == "projection.apply_failed"]
    assert [r["attempt"] for r in retries] == [1, 2]


async def _checkpoint_is(db: Database, position: int) -> bool:
    return await order_views.checkpoint(db) == position


# --- projection logic (memory store, SQLite read model) -----------------------------------


class Flaky:
    """A read model of deposits whose handler fails as told: `fail[amount]` = how many
    times the deposit of that amount raises `errors[amount]` before it applies."""

    def __init__(self, retry: RetryPolicy = FAST) -> None:
        self.fail: dict[int, int] = {}
        self.errors: dict[int, Exception] = {}
        self.calls: list[int] = []
        self.projection = Projection(
            "deposits",
            schema=["CREATE TABLE IF NOT EXISTS deposits (amount INTEGER PRIMARY KEY)"],
            tables=["deposits"],
            retry=retry,
        )

        @self.projection.on
        async def deposited(event: Deposited, tx: Transaction) -> None:
            self.calls.append(event.amount)
            await tx.execute("INSERT INTO deposits (amount) VALUES (?)", (event.amount,))
            if self.fail.get(event.amount, 0) > 0:
                self.fail[event.amount] -= 1
                raise self.errors.get(event.amount, ValueError(f"cannot apply {event.amount}"))

    async def rows(self, db: Database) -> list[int]:
        picture = await self.projection.dump(db)
        return sorted(row[0] for row in picture["deposits"])


@pytest.fixture
async def db() -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(":memory:")
    await database.open()
    yield database
    await database.close()


async def deposits(store: EventStore, *amounts: int) -> None:
    for amount in amounts:
        await store.append("acc", [new_event(amount)], None)


async def test_a_failing_event_is_retried_and_applies_in_order_when_it_recovers(
    db: SqliteDatabase,
) -> None:
    store, model = MemoryEventStore(), Flaky()
    await model.projection.setup(db)
    await deposits(store, 1, 2, 3, 4)
    model.fail[3] = 2  # fails twice, then applies on the third attempt
    assert await model.projection.catch_up(store, db) == 4
    assert await model.rows(db) == [1, 2, 3, 4]
    assert await model.projection.failures(db) == []
    # the batch fails at 3 (attempt 1); 1 and 2 commit on their own; 3 is retried alone
    # (attempt 2 fails, attempt 3 applies); then 4
    assert model.calls == [1, 2, 3, 1, 2, 3, 3, 4]


async def test_events_after_a_parked_one_in_the_same_batch_apply(db: SqliteDatabase) -> None:
    store, model = MemoryEventStore(), Flaky()
    await model.projection.setup(db)
    await deposits(store, *range(1, 11))
    model.fail[5] = 99
    assert await model.projection.catch_up(store, db, batch_size=500) == 10
    assert await model.rows(db) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    [failed] = await model.projection.failures(db)
    assert (failed.position, failed.attempts) == (5, 3)
    assert failed.error == "ValueError: cannot apply 5"
    assert await model.projection.checkpoint(db) == 10


async def test_reject_or_an_exception_the_policy_does_not_retry_parks_at_once(
    db: SqliteDatabase,
) -> None:
    store = MemoryEventStore()
    model = Flaky(RetryPolicy(attempts=5, backoff=0.0, on=(LookupError,)))
    await model.projection.setup(db)
    await deposits(store, 1, 2, 3)
    model.fail.update({1: 99, 2: 99})
    model.errors[1] = Reject("amount 1 is not for this read model")
    model.errors[2] = ValueError("not retried: the policy retries LookupError only")
    await model.projection.catch_up(store, db)
    assert await model.rows(db) == [3]
    failures = await model.projection.failures(db)
    assert [(f.position, f.attempts) for f in failures] == [(1, 1), (2, 1)]
    assert failures[0].error == "Reject: amount 1 is not for this read model"


async def test_a_connection_error_is_never_blamed_on_the_event(db: SqliteDatabase) -> None:
    store, model = MemoryEventStore(), Flaky()
    await model.projection.setup(db)
    await deposits(store, 1, 2)
    model.fail[2] = 99
    model.errors[2] = ConnectionRefusedError("the read model's service is down")
    with pytest.raises(ConnectionRefusedError):
        await model.projection.catch_up(store, db)
    assert await model.projection.failures(db) == []
    assert await model.projection.checkpoint(db) == 1
    model.fail[2] = 0
    assert await model.projection.catch_up(store, db) == 1  # it recovered: event 2 applies
    assert await model.rows(db) == [1, 2]


async def test_parked_events_replay_once_the_cause_is_fixed(db: SqliteDatabase) -> None:
    store, model = MemoryEventStore(), Flaky()
    await model.projection.setup(db)
    await deposits(store, 1, 2, 3)
    model.fail[2] = 3 + 1  # three attempts, then once more in the first replay
    await model.projection.catch_up(store, db)
    assert await model.projection.replay_failures(store, db) == 0
    [failed] = await model.projection.failures(db)
    assert failed.attempts == 4
    assert await model.projection.replay_failures(store, db) == 1
    assert await model.projection.failures(db) == []
    assert await model.rows(db) == [1, 2, 3]


async def test_rebuild_forgets_old_failures_and_parks_what_still_fails(
    db: SqliteDatabase,
) -> None:
    store, model = MemoryEventStore(), Flaky()
    await model.projection.setup(db)
    await deposits(store, 1, 2)
    model.fail[1] = 3
    await model.projection.catch_up(store, db)
    assert [f.position for f in await model.projection.failures(db)] == [1]
    assert await model.projection.rebuild(store, db) == 2  # 1 applies now
    assert await model.projection.failures(db) == []
    assert await model.rows(db) == [1, 2]


# --- the run task never ends silently --------------------------------------------------------


class BrokenStore(MemoryEventStore):
    """A store whose reads fail `failures` times before they work again."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("the store is down")
        return await super().read_all(from_position, limit)


async def test_run_rides_out_a_failing_store_and_logs_it(
    db: SqliteDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    store, model = BrokenStore(failures=3), Flaky()
    await model.projection.setup(db)
    await deposits(store, 1, 2)
    configure("json", "INFO", force=True)
    stop = asyncio.Event()
    task = asyncio.create_task(model.projection.run(store, db, stop=stop, poll_interval=0.001))
    try:
        await until(lambda: _rows_are(model, db, [1, 2]))
    finally:
        stop.set()
        await task
        structlog.reset_defaults()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    stalled = [line for line in lines if line["event"] == "projection.stalled"]
    assert len(stalled) == 3 and all(s["level"] == "error" for s in stalled)
    assert stalled[0]["projection"] == "deposits" and "the store is down" in stalled[0]["error"]
    assert any(line["event"] == "projection.recovered" for line in lines)


async def _rows_are(model: Flaky, db: Database, rows: list[int]) -> bool:
    return await model.rows(db) == rows


class RacingStore(MemoryEventStore):
    """A store whose next read lets another runner of the projection take the batch read
    (it moves the checkpoint to the batch's end first)."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self.race = False

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        events = await super().read_all(from_position, limit)
        if self.race and events:
            self.race = False
            async with self.db.transaction() as tx:
                await tx.execute(
                    "UPDATE projection_checkpoints SET position = ?", (events[-1].position,)
                )
        return events


async def test_run_follows_the_checkpoint_when_another_runner_takes_a_batch(
    db: SqliteDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """Losing a batch to another runner is no error: the batch rolls back before any
    handler runs, and the runner goes on from the other runner's checkpoint."""
    store, model = RacingStore(db), Flaky()
    await model.projection.setup(db)
    await deposits(store, 1)
    assert await model.projection.catch_up(store, db) == 1
    await deposits(store, 2, 3)
    store.race = True

    async def at(position: int) -> bool:
        return await model.projection.checkpoint(db) == position

    configure("json", "DEBUG", force=True)
    stop = asyncio.Event()
    task = asyncio.create_task(model.projection.run(store, db, stop=stop, poll_interval=0.01))
    try:
        await until(lambda: at(3))
        await deposits(store, 4)
        await until(lambda: at(4))
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        structlog.reset_defaults()
    assert model.calls == [1, 4]  # the batch another runner took was not applied here
    assert await model.rows(db) == [1, 4]
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    [moved] = [line for line in lines if line["event"] == "projection.checkpoint_moved"]
    assert (moved["level"], moved["expected"], moved["current"]) == ("debug", 1, 3)
    assert not [line for line in lines if line["event"] == "projection.died"]


async def test_a_checkpoint_moved_under_a_batch_raises_and_rolls_the_batch_back(
    db: SqliteDatabase,
) -> None:
    """The lost race itself, below `catch_up`: the conditional move of the checkpoint
    matches no row, and nothing the transaction did stays."""
    model = Flaky()
    await model.projection.setup(db)
    store = MemoryEventStore()
    await deposits(store, 1, 2)
    [first, second] = await store.read_all()
    assert await model.projection.catch_up(store, db) == 2
    with pytest.raises(ProjectionConflict, match="moved from 1 to 2") as info:
        await model.projection._commit(db, model.projection.codec(), [second], 1)
    assert (info.value.expected, info.value.current) == (1, 2)
    with pytest.raises(ProjectionConflict, match="moved from 0 to 2"):  # the seeded row
        await model.projection._commit(db, model.projection.codec(), [first], 0)
    assert model.calls == [1, 2] and await model.rows(db) == [1, 2]
    assert await model.projection.checkpoint(db) == 2


# --- from the bus: the bus's retry and dead-letter policy applies ------------------------------


async def test_bus_driven_projection_errors_reach_the_bus_dead_letter_queue(
    db: SqliteDatabase,
) -> None:
    model = Flaky()
    await model.projection.setup(db)
    model.fail[2] = 99
    bus = EventBus("memory://projection-errors")
    model.projection.bind(bus, db, retry=RetryPolicy(attempts=2, backoff=0.0))
    async with bus:
        for amount in (1, 2, 3):
            await bus.publish(Deposited(account_id="a", amount=amount), key="a")
        await until(lambda: _rows_are(model, db, [1, 3]))

        async def dead_lettered() -> bool:
            return len([d async for d in bus.dead_letters("accounts", "deposits")]) == 1

        await until(dead_lettered)
        [dead] = [d async for d in bus.dead_letters("accounts", "deposits")]
    assert b'"amount":2' in dead.body and "cannot apply 2" in dead.reason
    assert model.calls.count(2) == 2  # the bus's policy: two attempts
    assert await model.projection.failures(db) == []  # not parked by the projection
