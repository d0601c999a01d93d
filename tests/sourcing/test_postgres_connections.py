"""The PostgreSQL store when the server ends its connections (a restart, a failover,
`pg_terminate_backend`): the next calls succeed, and an append whose connection died
around its commit is stored exactly once.

Backends are terminated from a separate admin connection, chosen by the store's
`application_name` (unique per test). `pg_terminate_backend(pid, timeout)` returns once
the backend is gone, so no test waits on a clock for it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Literal, cast

import psycopg
import pytest
import pytest_asyncio
import structlog

from eventbus import Envelope, Event, EventBus
from eventbus.errors import ConcurrencyError
from eventbus.sourcing import NO_STREAM, EventCodec, NewEvent, OutboxRelay, StoredEvent
from eventbus.sourcing.postgres import PostgresDatabase, PostgresEventStore
from eventbus.sourcing.postgres_pool import Connection

from .conftest import POSTGRES_DSN
from .support import new_event, unique_schema

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def every_log_level() -> Iterator[None]:
    """Info lines are part of what these tests assert: log every level here, whatever
    level an earlier bus configured for the run (CI runs at EVENTBUS_LOG_LEVEL=WARNING)."""
    previous = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        yield
    finally:
        structlog.configure(**previous)


#: what a test sees of the store's pool: `connection()` patched per test
Checkout = Callable[[], AbstractAsyncContextManager[Connection]]


def with_application_name(dsn: str, name: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


@pytest_asyncio.fixture
async def admin() -> AsyncIterator[Connection]:
    conn = await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def app_name() -> str:
    return f"eventbus-test-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def store(app_name: str) -> AsyncIterator[PostgresEventStore]:
    schema = unique_schema()
    store = PostgresEventStore(with_application_name(POSTGRES_DSN, app_name), schema=schema)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await drop(schema)


async def drop(schema: str) -> None:
    db = PostgresDatabase(POSTGRES_DSN, schema=schema)
    try:
        await db.drop_schema()
    finally:
        await db.close()


async def backends(admin: Connection, app_name: str) -> list[int]:
    cur = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
        (app_name,),
    )
    return [int(row[0]) for row in await cur.fetchall()]


async def terminate(admin: Connection, pids: list[int]) -> None:
    """End these backends and return once they are gone (each call waits up to 10 s for
    its backend to exit)."""
    for pid in pids:
        await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
    cur = await admin.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
    assert await cur.fetchall() == [], "a backend outlived pg_terminate_backend"


async def terminate_all(admin: Connection, app_name: str) -> list[int]:
    """End every backend of the store; returns their pids (at least one)."""
    pids = await backends(admin, app_name)
    assert pids, f"no backend with application_name {app_name!r}"
    await terminate(admin, pids)
    return pids


def assert_each_once(everything: list[StoredEvent], appended: list[StoredEvent]) -> None:
    """The store holds exactly the appended events, each once, at gap-free positions."""
    assert [e.position for e in everything] == list(range(1, len(everything) + 1))
    assert sorted(e.id for e in everything) == sorted(e.id for e in appended)
    assert len({e.id for e in everything}) == len(everything)


async def test_after_every_connection_is_terminated_the_next_calls_succeed(
    store: PostgresEventStore, admin: Connection, app_name: str
) -> None:
    """Every kind of call, each the first after all of the store's backends ended."""
    batches = await asyncio.gather(
        *(store.append(f"s-{n}", [new_event(n), new_event(n)], NO_STREAM) for n in range(4))
    )
    appended = sorted((e for batch in batches for e in batch), key=lambda e: e.position)
    assert await store.read_all() == appended
    async with AsyncExitStack() as held:  # three connections open, idle when killed
        for _ in range(3):
            await held.enter_async_context(store.database.pool.connection())

    killed = await terminate_all(admin, app_name)
    assert len(killed) >= 3
    appended += await store.append("s-0", [new_event(9)], 2, publish=True)
    await terminate_all(admin, app_name)
    everything = await store.read_all()
    assert_each_once(everything, appended)
    await terminate_all(admin, app_name)
    assert await store.last_position() == len(appended) == 9
    await terminate_all(admin, app_name)
    assert [e.version for e in await store.read("s-0")] == [1, 2, 3]
    await terminate_all(admin, app_name)
    assert await store.stream_version("s-1") == 2
    await terminate_all(admin, app_name)
    assert [e.position for e in await store.outbox_pending()] == [9]
    await terminate_all(admin, app_name)
    await store.outbox_mark_sent([9])
    assert await store.outbox_pending() == []

    assert not set(killed) & set(await backends(admin, app_name)), "new backends serve it"
    assert_each_once(await store.read_all(), appended)


async def test_the_database_face_gets_a_live_connection_after_a_kill(
    store: PostgresEventStore, admin: Connection, app_name: str
) -> None:
    """Read-model transactions (`store.database`) are checked too, not retried."""
    db = store.database
    async with db.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY)")
    await terminate_all(admin, app_name)
    async with db.transaction() as tx:
        assert await tx.execute("INSERT INTO seen (id) VALUES (?)", ("a",)) == 1
    async with db.transaction() as tx:
        assert await tx.fetchall("SELECT id FROM seen") == [("a",)]


def fail_next_checkouts(
    monkeypatch: pytest.MonkeyPatch,
    store: PostgresEventStore,
    admin: Connection,
    times: int,
    wrap: Callable[[Connection], Connection] | None = None,
) -> None:
    """The store's next `times` connections: terminated right after the pool checked
    them (`wrap` None), or handed over wrapped to die at a chosen moment."""
    pool = store.database.pool
    original: Checkout = pool.connection
    left = [times]

    @asynccontextmanager
    async def connection() -> AsyncIterator[Connection]:
        async with original() as conn:
            if left[0] <= 0:
                yield conn
                return
            left[0] -= 1
            if wrap is None:
                await terminate(admin, [conn.info.backend_pid])
                yield conn
            else:
                yield wrap(conn)

    monkeypatch.setattr(pool, "connection", connection)


async def test_a_read_whose_connection_dies_after_the_check_is_retried_once(
    store: PostgresEventStore, admin: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    appended = await store.append("s-1", [new_event(1), new_event(2)], NO_STREAM)
    fail_next_checkouts(monkeypatch, store, admin, 1)
    with structlog.testing.capture_logs() as logs:
        assert await store.read_all() == appended
    lost = [entry for entry in logs if entry["event"] == "postgres.connection_lost"]
    assert [entry["operation"] for entry in lost] == ["read_all"]


async def test_a_second_lost_connection_is_raised(
    store: PostgresEventStore, admin: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_next_checkouts(monkeypatch, store, admin, 2)
    with pytest.raises(psycopg.OperationalError):
        await store.append("s-1", [new_event(1)], NO_STREAM)
    assert await store.last_position() == 0


class DiesAtCommit:
    """A pooled connection whose server goes away at the commit of its next transaction:
    just before it (the transaction rolls back) or just after it (the commit stands, but
    the client only learns that the connection is gone, as when the reply is lost).
    `meanwhile` runs once the backend is gone, before the client notices."""

    def __init__(
        self,
        conn: Connection,
        admin: Connection,
        when: Literal["before", "after"],
        meanwhile: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._conn = conn
        self._admin = admin
        self._when = when
        self._meanwhile = meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def _server_goes_away(self) -> None:
        await terminate(self._admin, [self._conn.info.backend_pid])
        if self._meanwhile is not None:
            await self._meanwhile()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[object]:
        async with self._conn.transaction() as tx:
            yield tx
            if self._when == "before":
                await self._server_goes_away()  # the COMMIT then fails
        if self._when == "after":
            await self._server_goes_away()
            await self._conn.execute("SELECT 1")  # raises: the connection is gone


def dies_at_commit(
    admin: Connection,
    when: Literal["before", "after"],
    meanwhile: Callable[[], Awaitable[object]] | None = None,
) -> Callable[[Connection], Connection]:
    def wrap(conn: Connection) -> Connection:
        # duck-typed: the store uses execute, cursor, transaction and closed
        return cast(Connection, DiesAtCommit(conn, admin, when, meanwhile))

    return wrap


@pytest.mark.parametrize("publish", [False, True])
async def test_an_append_committed_before_its_connection_died_is_not_repeated(
    store: PostgresEventStore,
    admin: Connection,
    monkeypatch: pytest.MonkeyPatch,
    publish: bool,
) -> None:
    """The retry finds the events it wrote, at the positions it gave them: success, not
    a duplicate and not a `ConcurrencyError` against its own commit."""
    first = await store.append("s-0", [new_event(0)], NO_STREAM)
    events = [new_event(1), new_event(2)]
    fail_next_checkouts(monkeypatch, store, admin, 1, dies_at_commit(admin, "after"))
    with structlog.testing.capture_logs() as logs:
        stored = await store.append("s-1", events, NO_STREAM, publish=publish)
    assert [(e.id, e.version, e.position) for e in stored] == [
        (events[0].id, 1, 2), (events[1].id, 2, 3),
    ]  # fmt: skip
    assert await store.read("s-1") == stored
    assert_each_once(await store.read_all(), first + stored)
    assert await store.outbox_pending() == (stored if publish else [])
    assert [entry["event"] for entry in logs if entry["event"].startswith("postgres.")] == [
        "postgres.connection_lost",
        "postgres.append_recovered",
    ]
    # the stream continues where the recovered append left it
    assert (await store.append("s-1", [new_event(3)], 2))[0].version == 3


async def test_an_append_rolled_back_with_its_connection_runs_again(
    store: PostgresEventStore, admin: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [new_event(1), new_event(2)]
    fail_next_checkouts(monkeypatch, store, admin, 1, dies_at_commit(admin, "before"))
    with structlog.testing.capture_logs() as logs:
        stored = await store.append("s-1", events, NO_STREAM, publish=True)
    assert [e.id for e in stored] == [e.id for e in events]
    assert await store.read("s-1") == stored
    assert await store.outbox_pending() == stored
    assert_each_once(await store.read_all(), stored)
    assert "postgres.append_recovered" not in [entry["event"] for entry in logs]


@pytest.mark.parametrize("other", ["same stream", "same event id"])
async def test_after_a_lost_connection_a_real_conflict_is_still_raised(
    store: PostgresEventStore,
    admin: Connection,
    monkeypatch: pytest.MonkeyPatch,
    other: str,
) -> None:
    """The lost attempt did not commit, and another writer took the version (or stored
    the same event id elsewhere) meanwhile: the retry raises `ConcurrencyError`."""
    event = new_event(1)
    theirs = [new_event(2)] if other == "same stream" else [NewEvent(**vars_of(event))]

    async def another_writer() -> None:
        await store.append("s-1" if other == "same stream" else "s-2", theirs, NO_STREAM)

    fail_next_checkouts(
        monkeypatch, store, admin, 1, dies_at_commit(admin, "before", another_writer)
    )
    with pytest.raises(ConcurrencyError):
        await store.append("s-1", [event], NO_STREAM)
    everything = await store.read_all()
    assert [(e.id, e.position) for e in everything] == [(theirs[0].id, 1)]


def vars_of(event: NewEvent) -> dict[str, Any]:
    """The fields of a `NewEvent` (it has slots: no `vars()`), for a copy with its id."""
    return {name: getattr(event, name) for name in NewEvent.__dataclass_fields__}


async def test_connections_are_named_and_closed_with_the_store() -> None:
    """Without an `application_name` in the URL the store's connections, the relay
    lease's too, say `eventbus`; `close()` closes all of them and the store."""
    schema = unique_schema()
    store = PostgresEventStore(POSTGRES_DSN, schema=schema, pool_size=2)
    await store.open()
    try:
        assert await store.try_acquire_relay()
        relay = store._relay_conn
        assert relay is not None
        async with store.database.pool.connection() as a, store.database.pool.connection() as b:
            used = [a, b, relay]
            for conn in used:
                cur = await conn.execute("SELECT current_setting('application_name')")
                assert await cur.fetchone() == ("eventbus",)
    finally:
        await store.close()
        await drop(schema)
    assert all(conn.closed for conn in used)
    assert store.database.pool.stats == {}
    with pytest.raises(RuntimeError, match="closed"):
        await store.read_all()


async def test_the_relay_lease_lives_exactly_as_long_as_its_own_connection(
    store: PostgresEventStore, admin: Connection, app_name: str
) -> None:
    """The lease is a session lock on a connection outside the pool: the pool's
    connections ending (and being replaced) leave it held; its own connection ending
    frees it for another relay."""
    other = PostgresEventStore(POSTGRES_DSN, schema=store.database.schema)
    await other.open()
    try:
        assert await store.try_acquire_relay()
        cur = await admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
            (app_name,),
        )
        lease = [int(row[0]) for row in await cur.fetchall()]
        assert len(lease) == 1
        pooled = [pid for pid in await backends(admin, app_name) if pid not in lease]
        assert pooled
        await terminate(admin, pooled)
        await store.append("s-1", [new_event(1)], NO_STREAM)
        assert not await other.try_acquire_relay()

        await terminate(admin, lease)
        assert await other.try_acquire_relay()
        assert await store.last_position() == 1
    finally:
        await other.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Poll an async condition (a store's lease is asked, not notified)."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # noqa: ASYNC110 - polling the store is the point
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def test_a_relay_that_lost_its_lease_notices_before_publishing_again(
    store: PostgresEventStore, admin: Connection, app_name: str
) -> None:
    """The server ends the lease holder's connection, so its lock is free at once and
    another relay may take it: the first relay asks before each batch, notices, and goes
    back to competing for the lease instead of publishing beside the new holder (per-key
    order assumes one publisher). Whoever holds the lease then publishes, once."""
    codec = EventCodec([Deposited])
    other = PostgresEventStore(POSTGRES_DSN, schema=store.database.schema)
    await other.open()
    bus = EventBus(f"memory://lease-{uuid.uuid4().hex[:8]}")
    seen: list[int] = []

    @bus.subscribe("accounts", "account.#", group="audit")
    async def audit(envelope: Envelope) -> None:
        seen.append(envelope.data["amount"])

    async def published(expected: list[int]) -> bool:
        """Handled, and counted by the relays (which count after the publish returned)."""
        return seen == expected and first.published + second.published == len(expected)

    async def one_holds() -> bool:
        return await store.relay_lease_held() != await other.relay_lease_held()

    try:
        async with bus:
            first = OutboxRelay(store, bus, codec, poll_interval=0.01, standby_interval=0.05)
            second = OutboxRelay(other, bus, codec, poll_interval=0.01, standby_interval=0.05)
            stop = asyncio.Event()
            running = [asyncio.create_task(first.run(stop))]
            await eventually(store.relay_lease_held, "the first relay holds the lease")
            running.append(asyncio.create_task(second.run(stop)))
            await store.append("s-1", [new_event(1)], NO_STREAM, publish=True)
            await eventually(lambda: published([1]), "the first event")
            assert (first.published, second.published) == (1, 0)

            cur = await admin.execute(
                "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
                (app_name,),
            )
            with structlog.testing.capture_logs() as logs:
                await terminate(admin, [int(row[0]) for row in await cur.fetchall()])
                await store.append("s-1", [new_event(2)], 1, publish=True)
                await eventually(lambda: published([1, 2]), "the second event, once")
                await eventually(one_holds, "exactly one relay holding the lease")
            assert any(line["event"] == "outbox.relay_lease_lost" for line in logs), logs
            stop.set()
            await asyncio.gather(*running)
        assert seen == [1, 2]
    finally:
        await other.close()


class Deposited(Event, stream="accounts", type="account.deposited"):
    account_id: str
    amount: int
