"""Transactional handlers (issue #15, "Every broker: the transactional handler"): the inbox
entry, the handler's writes and the events it publishes commit in one database transaction
(SQLite, PostgreSQL), on memory://, RabbitMQ and Kafka alike; the outbox relay publishes
the events; a redelivered event changes nothing and publishes nothing again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog

from eventbus import Context, Envelope, Event, EventBus, RetryPolicy
from eventbus.errors import ConcurrencyError, ConfigurationError, SubscriptionError
from eventbus.sourcing import (
    NO_STREAM,
    EventCodec,
    EventStore,
    MemoryEventStore,
    OutboxRelay,
    SqliteEventStore,
    Transaction,
    transactional,
)
from eventbus.sourcing.database import Database
from eventbus.sourcing.transactional import output_stream
from eventbus.testing.conformance import Harness, unique, until, wait_dead

from .conftest import POSTGRES_DSN
from .support import make_store, new_event, unique_schema

FAST = RetryPolicy(attempts=3, backoff=0.0)
GROUP = "billing"


class Paid(Event, stream="tx-in", type="tx.paid"):
    order_id: str
    cents: int = 100


class Invoiced(Event, stream="tx-out", type="tx.invoiced"):
    order_id: str
    attempt: int
    line: int = 1


CODEC = EventCodec([Paid, Invoiced])

SCHEMA = (
    # no unique key: a handler that ran twice for one event would leave two rows
    "CREATE TABLE IF NOT EXISTS invoices (event_id TEXT NOT NULL, order_id TEXT NOT NULL, "
    "attempt INTEGER NOT NULL)",
)


@pytest.fixture(autouse=True)
def fresh_streams() -> Iterator[None]:
    """Every test on fresh streams: brokers are shared between runs."""
    Paid.__stream__, Invoiced.__stream__ = unique("txin"), unique("txout")
    yield
    Paid.__stream__, Invoiced.__stream__ = "tx-in", "tx-out"


@pytest.fixture(autouse=True)
def every_log_level() -> Iterator[None]:
    """`handler.duplicate` is an info line: log every level, whatever an earlier bus set."""
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(**previous)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "sqlite":
        s = make_store(("sqlite", f"{tmp_path}/billing.db"))
    else:
        s = make_store(("postgresql", POSTGRES_DSN, unique_schema()))
    await s.open()
    assert s.database is not None
    async with s.database.transaction() as tx:
        for statement in SCHEMA:
            await tx.execute(statement)
    try:
        yield s
    finally:
        if request.param == "postgresql":
            await s.database.drop_schema()  # type: ignore[attr-defined]
        await s.close()


def _harness(name: str) -> Harness:
    if name == "memory":
        from tests.memory.harness import MemoryHarness

        return MemoryHarness()
    if name == "rabbitmq":
        from tests.rabbitmq.harness import RabbitMQHarness

        return RabbitMQHarness()
    from tests.kafka.harness import KafkaHarness

    return KafkaHarness()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ]
)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Buses on one broker; what they declared is deleted afterwards."""
    h = _harness(request.param)
    await h.setup()
    try:
        yield h
    finally:
        await h.teardown()


class Rig:
    """A bus with the billing handler under test, a downstream group reading what billing
    publishes, and the outbox relay of the store, running while `running()` is open."""

    def __init__(self, harness: Harness, store: EventStore) -> None:
        self.store = store
        db = store.database
        assert db is not None
        self.db: Database = db
        self.bus: EventBus = harness.bus()
        self.relay = OutboxRelay(store, self.bus, CODEC)
        #: what the downstream group received, in order
        self.downstream: list[tuple[Invoiced, Envelope]] = []

        @self.bus.subscribe(group="shipping")
        async def ship(event: Invoiced, ctx: Context) -> None:
            self.downstream.append((event, ctx.envelope))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Rig]:
        stop = asyncio.Event()
        async with self.bus:
            task = asyncio.create_task(self.relay.run(stop))
            try:
                yield self
            finally:
                stop.set()
                await task

    async def received(self, count: int, timeout: float = 60.0) -> list[tuple[Invoiced, Envelope]]:
        """Wait until the downstream group has `count` events; returns them."""
        await until(
            lambda: len(self.downstream) >= count,
            timeout,
            f"{count} events downstream (got {len(self.downstream)})",
        )
        return list(self.downstream)

    async def drained(self) -> None:
        """Wait until the outbox is empty (the relay published everything queued)."""
        deadline = asyncio.get_running_loop().time() + 60
        while await self.store.outbox_pending(1):
            assert asyncio.get_running_loop().time() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.01)

    async def rows(self) -> list[tuple[Any, ...]]:
        async with self.db.transaction() as tx:
            rows = await tx.fetchall("SELECT event_id, order_id, attempt FROM invoices")
        return sorted((r[0], r[1], int(r[2])) for r in rows)

    async def inbox(self) -> list[str]:
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT event_id FROM inbox WHERE consumer_group = ?", (GROUP,)
            )
        return sorted(r[0] for r in rows)

    async def outputs(self) -> int:
        """How many events billing's handlings appended to the store."""
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT count(*) FROM events WHERE stream_id LIKE ?", (f"{GROUP}/%",)
            )
        return int(row[0]) if row else 0


async def write_and_publish(event: Paid, ctx: Context, tx: Transaction, lines: int = 1) -> None:
    await tx.execute(
        "INSERT INTO invoices (event_id, order_id, attempt) VALUES (?, ?, ?)",
        (ctx.envelope.id, event.order_id, ctx.attempt),
    )
    for line in range(1, lines + 1):
        await ctx.publish(
            Invoiced(order_id=event.order_id, attempt=ctx.attempt, line=line), key=event.order_id
        )


# --- (1) writes + ctx.publish: one transaction, published by the relay ----------------------


async def test_writes_and_published_events_commit_together_and_reach_downstream_once(
    harness: Harness, store: EventStore
) -> None:
    rig = Rig(harness, store)
    returned: list[Envelope] = []

    @rig.bus.subscribe(group=GROUP, retry=FAST)
    @transactional(store, codec=CODEC)
    async def bill(event: Paid, ctx: Context, tx: Transaction) -> None:
        await tx.execute(
            "INSERT INTO invoices (event_id, order_id, attempt) VALUES (?, ?, ?)",
            (ctx.envelope.id, event.order_id, ctx.attempt),
        )
        for line in (1, 2):
            returned.append(
                await ctx.publish(
                    Invoiced(order_id=event.order_id, attempt=ctx.attempt, line=line),
                    key=event.order_id,
                    headers={"tenant": "acme"},
                )
            )

    [sub] = [s for s in rig.bus.subscriptions if s.group == GROUP]
    assert (sub.stream, sub.patterns, sub.wants_context) == (Paid.__stream__, ("tx.paid",), True)
    async with rig.running():
        first = await rig.bus.publish(Paid(order_id="o-1"), key="o-1", correlation_id="chk-1")
        await rig.received(2)
        # a second event of the same key: its outputs come after any copy of the first's
        second = await rig.bus.publish(Paid(order_id="o-1"), key="o-1")
        got = await rig.received(4)
        await rig.drained()

    assert [(e.line, env.causation_id) for e, env in got] == [
        (1, first.id), (2, first.id), (1, second.id), (2, second.id),
    ]  # fmt: skip
    stored = await store.read(output_stream(GROUP, first.id))
    assert [(s.version, s.id, s.type, s.key) for s in stored] == [
        (1, got[0][1].id, "tx.invoiced", "o-1"), (2, got[1][1].id, "tx.invoiced", "o-1"),
    ]  # fmt: skip
    for _, envelope in got[:2]:
        assert (envelope.correlation_id, envelope.causation_id) == ("chk-1", first.id)
        assert envelope.key == "o-1" and envelope.headers == {"tenant": "acme"}
    # a chain without a correlation id starts one: the first event's id
    assert {env.correlation_id for _, env in got[2:]} == {second.id}
    # what ctx.publish returned is what travelled
    assert [(r.id, r.correlation_id, r.causation_id, r.time) for r in returned] == [
        (env.id, env.correlation_id, env.causation_id, env.time) for _, env in got
    ]
    assert await rig.rows() == sorted([(first.id, "o-1", 1), (second.id, "o-1", 1)])
    assert await rig.inbox() == sorted([first.id, second.id])
    assert rig.relay.published == 4 and await rig.outputs() == 4


# --- (2) the same event delivered twice -------------------------------------------------------


async def test_a_redelivered_event_changes_nothing_and_publishes_nothing_again(
    harness: Harness, store: EventStore
) -> None:
    rig = Rig(harness, store)
    calls: list[str] = []

    @rig.bus.subscribe(group=GROUP, retry=FAST)
    @transactional(store, codec=CODEC)
    async def bill(event: Paid, ctx: Context, tx: Transaction) -> None:
        calls.append(ctx.envelope.id)
        await write_and_publish(event, ctx, tx)

    with structlog.testing.capture_logs() as logs:
        async with rig.running():
            first = await rig.bus.publish(Paid(order_id="o-1"), key="o-1")
            again = await rig.bus.publish(Paid(order_id="o-1"), key="o-1", id=first.id)
            assert again.id == first.id
            # behind both copies in the group's order for the key: when its output is
            # downstream, the copy was handled (and dropped) before it
            later = await rig.bus.publish(Paid(order_id="o-1"), key="o-1")
            got = await rig.received(2)
            await rig.drained()

    assert calls == [first.id, later.id]
    assert [env.causation_id for _, env in got] == [first.id, later.id]
    assert await rig.rows() == sorted([(first.id, "o-1", 1), (later.id, "o-1", 1)])
    assert await rig.inbox() == sorted([first.id, later.id])
    assert len(await store.read(output_stream(GROUP, first.id))) == 1
    assert rig.relay.published == 2 and await rig.outputs() == 2
    duplicates = [e for e in logs if e["event"] == "handler.duplicate"]
    assert [(e["event_id"], e["group"], e["log_level"]) for e in duplicates] == [
        (first.id, GROUP, "info")
    ]


# --- (3) failures: nothing of a failed attempt commits --------------------------------------


async def test_a_failed_attempt_commits_nothing_and_the_retry_commits_once(
    harness: Harness, store: EventStore
) -> None:
    rig = Rig(harness, store)

    @rig.bus.subscribe(group=GROUP, retry=FAST)
    @transactional(store, codec=CODEC)
    async def bill(event: Paid, ctx: Context, tx: Transaction) -> None:
        await write_and_publish(event, ctx, tx, lines=2)
        if ctx.attempt < 3:
            raise RuntimeError(f"the payment service is down (attempt {ctx.attempt})")

    async with rig.running():
        paid = await rig.bus.publish(Paid(order_id="o-1"), key="o-1")
        later = await rig.bus.publish(Paid(order_id="o-2"), key="o-1")
        got = await rig.received(4)
        await rig.drained()

    # only the third attempt of each event committed: its row, its two events
    assert await rig.rows() == sorted([(paid.id, "o-1", 3), (later.id, "o-2", 3)])
    assert sorted((e.order_id, e.attempt, e.line) for e, _ in got) == [
        ("o-1", 3, 1), ("o-1", 3, 2), ("o-2", 3, 1), ("o-2", 3, 2),
    ]  # fmt: skip
    assert [s.version for s in await store.read(output_stream(GROUP, paid.id))] == [1, 2]
    assert rig.relay.published == 4 and await rig.outputs() == 4
    assert await rig.inbox() == sorted([paid.id, later.id])


async def test_a_dead_lettered_event_leaves_nothing_behind_and_its_replay_commits_once(
    harness: Harness, store: EventStore
) -> None:
    rig = Rig(harness, store)
    broken = True

    @rig.bus.subscribe(group=GROUP, retry=RetryPolicy(attempts=2, backoff=0.0))
    @transactional(store, codec=CODEC)
    async def bill(event: Paid, ctx: Context, tx: Transaction) -> None:
        await write_and_publish(event, ctx, tx)
        if broken:
            raise RuntimeError("no invoice template for this country")

    async with rig.running():
        paid = await rig.bus.publish(Paid(order_id="o-1"), key="o-1")
        [dead] = await wait_dead(rig.bus, Paid.__stream__, GROUP, 1, timeout=60)
        assert dead.envelope.id == paid.id
        assert await rig.rows() == [] and await rig.inbox() == []
        assert await rig.outputs() == 0 and await store.outbox_pending() == []
        assert await store.read(output_stream(GROUP, paid.id)) == []

        broken = False  # fixed: replay the dead letter (same event id)
        assert await rig.bus.replay_dead_letters(Paid.__stream__, GROUP) == 1
        [(event, envelope)] = await rig.received(1)
        await rig.drained()

    assert (event.attempt, envelope.causation_id) == (1, paid.id)
    assert await rig.rows() == [(paid.id, "o-1", 1)]
    assert rig.relay.published == 1 and await rig.outputs() == 1


# --- (4) stores without a database, handlers of the wrong shape -----------------------------


def test_the_memory_store_is_refused_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match=r"needs an SQL event store \(SQLite or Postgre"):
        transactional(MemoryEventStore())


def test_handlers_of_the_wrong_shape_are_refused_clearly(tmp_path: Path) -> None:
    decorate = transactional(SqliteEventStore(f"{tmp_path}/x.db"))

    async def two(event: Paid, ctx: Context) -> None: ...

    def blocking(event: Paid, ctx: Context, tx: Transaction) -> None: ...

    for fn in (two, blocking):
        with pytest.raises(TypeError, match=r"must be `async def \(event, ctx, tx\)`"):
            decorate(fn)  # type: ignore[arg-type]

    async def bare(event: Paid, ctx: Context, tx: Transaction) -> None: ...

    bus = EventBus("memory://")
    with pytest.raises(SubscriptionError, match=r"needs `@transactional\(store\)`"):
        bus.subscribe(group=GROUP)(bare)


# --- (5) concurrency ----------------------------------------------------------------------------


async def test_concurrent_handlers_commit_each_event_once(
    harness: Harness, store: EventStore
) -> None:
    rig = Rig(harness, store)
    total, keys = 120, 12

    @rig.bus.subscribe(group=GROUP, retry=FAST, concurrency=4)
    @transactional(store, codec=CODEC)
    async def bill(event: Paid, ctx: Context, tx: Transaction) -> None:
        await write_and_publish(event, ctx, tx)

    async with rig.running():
        published = [
            await rig.bus.publish(Paid(order_id=f"o-{n % keys}", cents=n), key=f"o-{n % keys}")
            for n in range(total)
        ]
        got = await rig.received(total, timeout=120)
        await rig.drained()

    ids = sorted(p.id for p in published)
    assert sorted(env.causation_id or "" for _, env in got) == ids, "each output once"
    assert len({env.id for _, env in got}) == total
    assert await rig.inbox() == ids
    assert [row[0] for row in await rig.rows()] == ids
    assert rig.relay.published == total and await rig.outputs() == total
    # the transactional appends kept the store's global order gap-free
    assert [e.position for e in await store.read_all(1, 10 * total)] == list(range(1, total + 1))


# --- untyped handlers ---------------------------------------------------------------------------


async def test_an_untyped_handler_is_transactional_too(tmp_path: Path) -> None:
    store = SqliteEventStore(f"{tmp_path}/untyped.db")
    await store.open()
    db = store.database
    bus = EventBus(f"memory://{unique('untyped')}")
    seen: list[tuple[str, Any]] = []

    @bus.subscribe(Paid.__stream__, "tx.#", group="audit")
    @transactional(store)
    async def audit(envelope: Envelope, ctx: Context, tx: Transaction) -> None:
        await tx.execute(
            "INSERT INTO audit (event_id, type) VALUES (?, ?)", (envelope.id, envelope.type)
        )
        seen.append((envelope.type, envelope.data))

    [sub] = bus.subscriptions
    assert (sub.types, sub.patterns) == (None, ("tx.#",))
    try:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE audit (event_id TEXT, type TEXT)")
        async with bus:
            sent = await bus.publish(Paid(order_id="o-9"), key="o-9")
            await bus.publish(Paid(order_id="o-9"), key="o-9", id=sent.id)
            # order per key: once the marker is handled, the copy was dropped before it
            marker = await bus.publish(Paid(order_id="o-9"), key="o-9")
            await until(lambda: len(seen) == 2, 10, "the event and the marker")
        async with db.transaction() as tx:
            rows = await tx.fetchall("SELECT event_id FROM audit ORDER BY rowid")
        assert [r[0] for r in rows] == [sent.id, marker.id]
        assert seen[0] == ("tx.paid", {"order_id": "o-9", "cents": 100})
    finally:
        await store.close()


async def test_a_header_the_bus_cannot_carry_fails_the_attempt_not_the_relay(
    tmp_path: Path,
) -> None:
    """Refused inside the handler (rolled back, the bus's policy applies), rather than
    committed and then parked by the relay as unpublishable. After the handler, the
    context publishes to the bus again."""
    store = SqliteEventStore(f"{tmp_path}/headers.db")
    await store.open()
    bus = EventBus(f"memory://{unique('headers')}")
    contexts: list[Context] = []

    @bus.subscribe(group=GROUP, retry=RetryPolicy(attempts=1))
    @transactional(store)
    async def bill(event: Paid, ctx: Context, tx: Transaction) -> None:
        contexts.append(ctx)
        await ctx.publish(Invoiced(order_id=event.order_id, attempt=1), headers={"Bad-Name": "x"})

    try:
        async with bus:
            paid = await bus.publish(Paid(order_id="o-1"), key="o-1")
            [dead] = await wait_dead(bus, Paid.__stream__, GROUP, 1)
            assert "invalid header 'Bad-Name'" in dead.headers["x-exception-message"]
            assert await store.outbox_pending() == [] and await store.last_position() == 0
            assert contexts[0].sink is None
            direct = await contexts[0].publish(Invoiced(order_id="o-1", attempt=2))
            assert direct.causation_id == paid.id and await store.last_position() == 0
    finally:
        await store.close()


# --- the stores' append inside a caller's transaction ------------------------------------------


async def test_append_in_commits_and_rolls_back_with_the_callers_transaction(
    store: EventStore,
) -> None:
    db = store.database
    assert db is not None
    with pytest.raises(RuntimeError, match="the handler failed"):
        async with db.transaction() as tx:
            await store.append_in(tx, "s-1", [new_event(1)], NO_STREAM, publish=True)
            await tx.execute("INSERT INTO invoices VALUES ('e', 'o', 1)")
            raise RuntimeError("the handler failed")
    assert await store.read("s-1") == [] and await store.outbox_pending() == []

    async with db.transaction() as tx:
        stored = await store.append_in(tx, "s-1", [new_event(1), new_event(2)], NO_STREAM)
        await tx.execute("INSERT INTO invoices VALUES ('e', 'o', 1)")
    assert await store.read("s-1") == stored and [e.position for e in stored] == [1, 2]
    assert await store.outbox_pending() == []  # publish=False: not queued

    with pytest.raises(ConcurrencyError, match="'s-1' is at version 2"):
        async with db.transaction() as tx:
            await store.append_in(tx, "s-1", [new_event(3)], NO_STREAM, publish=True)
    with pytest.raises(ConcurrencyError, match="already taken"):  # the same event id
        async with db.transaction() as tx:
            await store.append_in(tx, "s-2", [new_event(3, id=stored[0].id)], NO_STREAM)
    assert await store.last_position() == 2


async def test_append_in_refuses_a_transaction_of_another_database(
    store: EventStore, tmp_path: Path
) -> None:
    other = SqliteEventStore(f"{tmp_path}/other.db")
    await other.open()
    try:
        async with other.database.transaction() as tx:
            with pytest.raises(ValueError, match="a transaction of this store's database"):
                await store.append_in(tx, "s-1", [new_event(1)], NO_STREAM)
    finally:
        await other.close()


@pytest.mark.postgres
async def test_postgres_append_in_holds_the_append_lock_to_commit() -> None:
    """A plain append waits for an open transaction that appended, and gets the next
    position: positions are assigned in commit order, so a tailing reader never skips one."""
    store = make_store(("postgresql", POSTGRES_DSN, unique_schema()))
    await store.open()
    db = store.database
    assert db is not None
    try:
        async with db.transaction() as tx:
            [mine] = await store.append_in(tx, "handled", [new_event(1)], NO_STREAM)
            plain = asyncio.create_task(store.append("plain", [new_event(2)], NO_STREAM))

            async def waiting() -> bool:
                async with db.transaction() as probe:
                    row = await probe.fetchone(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                return bool(row and row[0])

            deadline = asyncio.get_running_loop().time() + 30
            while not await waiting():
                assert asyncio.get_running_loop().time() < deadline, "the append never waited"
                await asyncio.sleep(0.01)
            assert not plain.done()
        [theirs] = await plain
        assert (mine.position, theirs.position) == (1, 2)
        assert [e.id for e in await store.read_all()] == [mine.id, theirs.id]
    finally:
        await db.drop_schema()  # type: ignore[attr-defined]
        await store.close()


async def test_sqlite_refuses_a_store_call_inside_a_transaction_of_the_same_task(
    tmp_path: Path,
) -> None:
    """It would wait for the transaction that waits for it: a clear error, not a hang."""
    store = SqliteEventStore(f"{tmp_path}/guard.db")
    await store.open()
    gate = asyncio.Event()

    async def after_the_transaction() -> int:
        await gate.wait()
        return await store.last_position()

    try:
        async with store.database.transaction() as tx:
            with pytest.raises(RuntimeError, match="would wait for that transaction"):
                await store.read("s-1")
            with pytest.raises(RuntimeError, match="would wait for that transaction"):
                await asyncio.create_task(store.last_position())  # a task started inside
            # started inside too, but calling once the transaction ended: allowed
            later = asyncio.create_task(after_the_transaction())
            await store.append_in(tx, "s-1", [new_event(1)], NO_STREAM)
        gate.set()
        assert await later == 1
        assert len(await store.read("s-1")) == 1
    finally:
        await store.close()
