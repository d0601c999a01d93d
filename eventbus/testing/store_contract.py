"""The event-store contract, shipped: every backend, ours and third parties', subclasses
`StoreContract` (`PersistentContract` if its data outlives an instance,
`MultiProcessContract` if several processes can share it), in the spirit of the
`eventsourcing` library's recorder test cases::

    class TestAcmeStore(MultiProcessContract):
        def store_factory(self) -> Callable[[], EventStore]:
            return functools.partial(AcmeEventStore, "acme://test")  # picklable

A store that lives in a SQL `Database` (`store.database`) also proves that projections
kept there are safe with several runners at once (each event applied exactly once); a
store without one (the memory store) sets `has_database = False` and those tests are
skipped, saying so.

Needs pytest and pytest-asyncio (`pip install 'eventbus[testing]'`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import pytest
import pytest_asyncio

from ..errors import ConcurrencyError
from ..event import Event
from ..sourcing import (
    NO_STREAM,
    Database,
    EventMeta,
    EventStore,
    NewEvent,
    Projection,
    Snapshot,
    StoredEvent,
    Transaction,
)

STREAM = "account-a"
#: the projection the multi-runner tests run, and its read model: one row per application
PROJECTION = "contract-applications"
APPLICATIONS = "contract_applications"
#: how many events the multi-runner tests project, and in batches of how many
PROJECTED_EVENTS, PROJECTION_BATCH = 200, 20

#: opens a new store instance on the data under test (picklable for MultiProcessContract)
StoreFactory = Callable[[], EventStore]


def new_event(n: int = 0, **overrides: Any) -> NewEvent:
    """An `account.deposited` event of `amount` n; fields overridable."""
    values: dict[str, Any] = {
        "type": "account.deposited",
        "data": f'{{"account_id":"a","amount":{n}}}'.encode(),
        "stream": "accounts",
        "key": "a",
    }
    values.update(overrides)
    return NewEvent(**values)


class StoreContract:
    """Subclasses implement `store_factory()` (how to open an instance of the store under
    test, on this test's data) and may override `cleanup()`; `shared_instances` says
    whether two instances of one factory see the same data (false for memory)."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]
    shared_instances = True
    #: whether the store lives in a SQL `Database` (`store.database`), where projections
    #: keep their read model and checkpoint; False skips the projection tests (with the
    #: reason), True fails them if `store.database` is None
    has_database = True

    def store_factory(self) -> StoreFactory:
        raise NotImplementedError

    async def test_one_relay_lease_at_a_time(self, store: EventStore) -> None:
        other = self._factory() if self.shared_instances else store
        if other is not store:
            await other.open()
        try:
            assert await store.try_acquire_relay()
            assert not await other.try_acquire_relay()
            await store.release_relay()
            assert await other.try_acquire_relay()
            assert not await store.try_acquire_relay()
            await other.release_relay()
        finally:
            if other is not store:
                await other.close()

    async def cleanup(self) -> None:
        return None

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[EventStore]:
        self._factory = self.store_factory()
        store = self._factory()
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            await self.cleanup()

    async def another(self, store: EventStore) -> EventStore:
        """A second instance on the same data (its own connection)."""
        if not self.shared_instances:
            return store
        other = self._factory()
        await other.open()
        return other

    def database_of(self, store: EventStore) -> Database:
        """`store.database`, or a skip if the store has none (`has_database = False`)."""
        if not self.has_database:
            pytest.skip(
                "the store has no Database (has_database = False): a projection of it keeps "
                "its checkpoint in a database of its own, tested with SQLite and PostgreSQL"
            )
        db = store.database
        assert db is not None, "store.database is None: set has_database = False"
        return db

    # --- append and read -------------------------------------------------------------------

    async def test_append_then_read_keeps_every_field(self, store: EventStore) -> None:
        first = new_event(
            1,
            correlation_id="corr-1",
            causation_id="cause-1",
            headers={"tenant": "acme"},
            schema_version=3,
            time="2024-05-01T12:00:00.123456Z",
        )
        second = new_event(2, data='{"note":"h\u00e9llo \u2603"}'.encode())
        stored = await store.append(STREAM, [first, second], NO_STREAM)
        assert [(e.version, e.position) for e in stored] == [(1, 1), (2, 2)]
        read = await store.read(STREAM)
        assert read == stored
        e = read[0]
        assert (e.id, e.type, e.data, e.stream, e.key) == (
            first.id, first.type, first.data, "accounts", "a",
        )  # fmt: skip
        assert (e.correlation_id, e.causation_id, e.headers) == (
            "corr-1",
            "cause-1",
            {"tenant": "acme"},
        )
        assert (e.schema_version, e.time, e.stream_id) == (3, "2024-05-01T12:00:00.123456Z", STREAM)
        assert read[1].data == second.data
        assert read[1].correlation_id is None and read[1].headers == {}

    async def test_a_large_batch_keeps_every_field(self, store: EventStore) -> None:
        """Sizes a backend may write differently (PostgreSQL: COPY from 10 events on;
        SQLite: multi-row INSERTs of 64, 32, ... rows from 8 on), with the characters a
        bulk format must escape, in every kind of field."""
        awkward = "tab\tnew\nline\\back\rslash \u00e9\u2603 \\N"
        for size in (1, 3, 10, 64, 100):
            batch = [
                new_event(
                    i,
                    data=b'{"raw":"\x00\x01\\\t\n\xff"}' if i % 2 else b"{}",
                    key=None if i % 3 == 0 else f"{awkward}-{i}",
                    correlation_id=awkward if i % 2 else None,
                    causation_id=None,
                    headers={"note": awkward} if i % 2 else {},
                    time=f"2024-05-01T12:00:00.{i:03d}Z",
                    type=f"account.deposited.{i}",
                    stream="accounts",
                )
                for i in range(size)
            ]
            stream_id = f"batch-{size}-{awkward}"
            stored = await store.append(stream_id, batch, NO_STREAM, publish=size > 3)
            assert [e.version for e in stored] == list(range(1, size + 1))
            read = await store.read(stream_id)
            assert read == stored
            for new, got in zip(batch, read, strict=True):
                assert (got.id, got.type, got.data, got.stream, got.key, got.time) == (
                    new.id, new.type, new.data, new.stream, new.key, new.time,
                )  # fmt: skip
                assert (got.correlation_id, got.causation_id, got.headers) == (
                    new.correlation_id, new.causation_id, new.headers,
                )  # fmt: skip
        assert [e.stream_id for e in await store.outbox_pending()] == (
            [f"batch-{size}-{awkward}" for size in (10, 64, 100) for _ in range(size)]
        )

    async def test_a_large_batch_is_all_or_nothing(self, store: EventStore) -> None:
        """A taken event id or version anywhere in a large batch refuses all of it."""
        first = await store.append(STREAM, [new_event(i) for i in range(20)], NO_STREAM)
        taken = [new_event(i) for i in range(20)]
        taken[17] = new_event(17, id=first[3].id)
        with pytest.raises(ConcurrencyError):
            await store.append("account-b", taken, NO_STREAM, publish=True)
        with pytest.raises(ConcurrencyError):
            await store.append(STREAM, [new_event(i) for i in range(20)], 3, publish=True)
        assert await store.last_position() == 20
        assert await store.read("account-b") == []
        assert await store.outbox_pending() == []

    async def test_versions_continue_across_appends(self, store: EventStore) -> None:
        await store.append(STREAM, [new_event(1)], NO_STREAM)
        stored = await store.append(STREAM, [new_event(2), new_event(3)], 1)
        assert [e.version for e in stored] == [2, 3]
        assert await store.stream_version(STREAM) == 3
        assert await store.stream_version("account-none") == 0

    async def test_read_a_version_range(self, store: EventStore) -> None:
        await store.append(STREAM, [new_event(i) for i in range(1, 6)], NO_STREAM)
        assert [e.version for e in await store.read(STREAM, 2)] == [2, 3, 4, 5]
        assert [e.version for e in await store.read(STREAM, 2, 4)] == [2, 3, 4]
        assert await store.read(STREAM, 6) == []
        assert await store.read("account-none") == []

    async def test_big_event_round_trips(self, store: EventStore) -> None:
        data = b'{"blob":"' + b"x" * 300_000 + b'"}'
        await store.append(STREAM, [new_event(data=data)], NO_STREAM)
        assert (await store.read(STREAM))[0].data == data

    # --- optimistic concurrency --------------------------------------------------------------

    async def test_wrong_expected_version_raises_and_writes_nothing(
        self, store: EventStore
    ) -> None:
        await store.append(STREAM, [new_event(1)], NO_STREAM)
        with pytest.raises(ConcurrencyError, match="version 1"):
            await store.append(STREAM, [new_event(2), new_event(3)], NO_STREAM)
        with pytest.raises(ConcurrencyError):
            await store.append(STREAM, [new_event(2)], 5)
        assert [e.version for e in await store.read(STREAM)] == [1]
        assert await store.last_position() == 1

    async def test_any_version_appends_without_check(self, store: EventStore) -> None:
        await store.append(STREAM, [new_event(1)], None)
        stored = await store.append(STREAM, [new_event(2)], None)
        assert stored[0].version == 2

    async def test_duplicate_event_id_is_refused(self, store: EventStore) -> None:
        event = new_event(1)
        await store.append(STREAM, [event], NO_STREAM)
        with pytest.raises(ConcurrencyError):
            await store.append("account-b", [new_event(2, id=event.id)], NO_STREAM)
        assert await store.last_position() == 1

    async def test_empty_append_is_an_error(self, store: EventStore) -> None:
        with pytest.raises(ValueError, match="at least one"):
            await store.append(STREAM, [], NO_STREAM)

    # --- global order --------------------------------------------------------------------

    async def test_read_all_in_global_order_with_limit(self, store: EventStore) -> None:
        await store.append("s-1", [new_event(1), new_event(2)], NO_STREAM)
        await store.append("s-2", [new_event(3)], NO_STREAM)
        await store.append("s-1", [new_event(4)], 2)
        everything = await store.read_all()
        assert [(e.position, e.stream_id, e.version) for e in everything] == [
            (1, "s-1", 1), (2, "s-1", 2), (3, "s-2", 1), (4, "s-1", 3),
        ]  # fmt: skip
        assert [e.position for e in await store.read_all(2, limit=2)] == [2, 3]
        assert await store.read_all(5) == []
        assert await store.last_position() == 4

    async def test_tailing_reader_never_skips_an_event(self, store: EventStore) -> None:
        """Writers on many streams race; a reader that only ever asks for "after the last
        position I saw" must still end up with every event, once, in order."""
        writers, per_writer = 6, 25
        stores = [await self.another(store) for _ in range(writers)]
        seen: list[StoredEvent] = []
        done = asyncio.Event()

        async def write(n: int) -> None:
            s = stores[n]
            for i in range(per_writer):
                await s.append(f"s-{n}", [new_event(i), new_event(i)], None)

        async def tail() -> None:
            while True:
                finished = done.is_set()
                batch = await store.read_all((seen[-1].position + 1) if seen else 1, 7)
                seen.extend(batch)
                if finished and not batch:
                    return
                if not batch:
                    await asyncio.sleep(0)

        reader = asyncio.create_task(tail())
        try:
            await asyncio.gather(*(write(n) for n in range(writers)))
        finally:
            done.set()
            await reader
            for s in stores:
                if s is not store:
                    await s.close()
        everything = await store.read_all(1, 10_000)
        assert len(everything) == writers * per_writer * 2
        assert [e.position for e in everything] == list(range(1, len(everything) + 1))
        assert [e.id for e in seen] == [e.id for e in everything]

    # --- concurrent writers: exactly one wins each version ----------------------------------

    async def _race(self, stores: list[EventStore], versions: int) -> None:
        wins: list[tuple[int, str]] = []

        async def writer(s: EventStore) -> None:
            for version in range(1, versions + 1):
                event = new_event(version)
                try:
                    await s.append(STREAM, [event], version - 1)
                except ConcurrencyError:
                    continue
                wins.append((version, event.id))

        await asyncio.gather(*(writer(s) for s in stores))
        assert_one_winner_per_version(sorted(wins), await stores[0].read(STREAM), versions)

    async def test_concurrent_tasks_on_one_instance(self, store: EventStore) -> None:
        await self._race([store] * 8, 30)

    async def test_concurrent_tasks_on_separate_connections(self, store: EventStore) -> None:
        stores = [store] + [await self.another(store) for _ in range(5)]
        try:
            await self._race(stores, 30)
        finally:
            for s in stores[1:]:
                if s is not store:
                    await s.close()

    # --- snapshots ---------------------------------------------------------------------------

    async def test_snapshots_keep_the_newest(self, store: EventStore) -> None:
        assert await store.load_snapshot(STREAM) is None
        await store.save_snapshot(Snapshot(STREAM, 10, b'{"n":10}', 1, "t1"))
        await store.save_snapshot(Snapshot(STREAM, 20, b'{"n":20}', 2, "t2"))
        await store.save_snapshot(Snapshot(STREAM, 15, b'{"n":15}', 1, "t3"))  # older: ignored
        assert await store.load_snapshot(STREAM) == Snapshot(STREAM, 20, b'{"n":20}', 2, "t2")
        assert await store.load_snapshot("account-b") is None

    # --- outbox ------------------------------------------------------------------------------

    async def test_outbox_queues_in_the_append_transaction(self, store: EventStore) -> None:
        await store.append("s-1", [new_event(1), new_event(2)], NO_STREAM, publish=True)
        await store.append("s-2", [new_event(3)], NO_STREAM)  # not published
        await store.append("s-2", [new_event(4)], 1, publish=True)
        with pytest.raises(ConcurrencyError):
            await store.append("s-2", [new_event(5)], 0, publish=True)  # rolled back
        pending = await store.outbox_pending()
        assert [(e.position, e.stream_id) for e in pending] == [(1, "s-1"), (2, "s-1"), (4, "s-2")]
        assert pending == [e for e in await store.read_all() if e.position in (1, 2, 4)]
        assert [e.position for e in await store.outbox_pending(limit=2)] == [1, 2]
        await store.outbox_mark_sent([1, 2])
        await store.outbox_mark_sent([1])  # idempotent
        assert [e.position for e in await store.outbox_pending()] == [4]
        await store.outbox_mark_sent([4])
        assert await store.outbox_pending() == []

    # --- projections: several runners, each event applied once ------------------------------

    async def test_two_projection_runners_catching_up_apply_each_event_once(
        self, store: EventStore
    ) -> None:
        """Two runners of one projection, each on its own store instance (its own
        connection), catch up from the same store at the same time: every event is applied
        by exactly one of them, the checkpoint ends at the last position, and the loser of
        a batch is no error (it follows the checkpoint)."""
        db = self.database_of(store)
        if not self.shared_instances:
            pytest.skip("two runners need two instances on the same data")
        await append_deposits(store, PROJECTED_EVENTS)
        await applications_projection().setup(db)
        other = await self.another(store)
        try:
            other_db = self.database_of(other)
            outcomes = await asyncio.gather(
                applications_projection().catch_up(store, db, batch_size=PROJECTION_BATCH),
                applications_projection().catch_up(other, other_db, batch_size=PROJECTION_BATCH),
                return_exceptions=True,
            )
        finally:
            await other.close()
        await assert_each_event_applied_once(store, db)
        assert_runners_counted(store_events=PROJECTED_EVENTS, outcomes=list(outcomes))

    async def test_two_projection_runners_following_the_store_apply_each_event_once(
        self, store: EventStore
    ) -> None:
        """Two `run` tasks of one projection, on two store instances, follow the store while
        a writer appends: both keep running (the one that loses a batch follows the
        checkpoint) and every event is applied exactly once; when one is stopped, the
        other carries on alone."""
        db = self.database_of(store)
        if not self.shared_instances:
            pytest.skip("two runners need two instances on the same data")
        await applications_projection().setup(db)
        other = await self.another(store)
        stops = [asyncio.Event(), asyncio.Event()]
        runners = [
            asyncio.create_task(
                applications_projection().run(
                    s, self.database_of(s), stop=stop, poll_interval=0.005
                )
            )
            for s, stop in zip((store, other), stops, strict=True)
        ]
        projection = applications_projection()

        async def caught_up(running: list[asyncio.Task[None]]) -> None:
            last = await store.last_position()

            async def done() -> bool:
                if all(r.done() for r in running):
                    return True  # they ended: the asserts below say how
                return await projection.checkpoint(db) == last

            await until(done, 120)

        try:
            await append_deposits(store, PROJECTED_EVENTS, per_append=5)
            await caught_up(runners)
            ended = [r.done() for r in runners]
            if ended == [False, False]:
                stops[0].set()
                await runners[0]
                await append_deposits(store, PROJECTION_BATCH, per_append=5)
                await caught_up(runners[1:])
                ended[1] = runners[1].done()
        finally:
            for stop in stops:
                stop.set()
            results = await asyncio.gather(*runners, return_exceptions=True)
            await other.close()
        await assert_each_event_applied_once(store, db)
        assert ended == [False, False], f"a runner ended before it was stopped: {results!r}"
        assert results == [None, None]


class PersistentContract(StoreContract):
    async def test_events_survive_reopening(self, store: EventStore) -> None:
        stored = await store.append(STREAM, [new_event(1)], NO_STREAM, publish=True)
        await store.close()
        reopened = self._factory()
        await reopened.open()
        try:
            assert await reopened.read(STREAM) == stored
            assert await reopened.outbox_pending() == stored
        finally:
            await reopened.close()


class MultiProcessContract(PersistentContract):
    async def test_concurrent_processes_exactly_one_wins_each_version(
        self, store: EventStore
    ) -> None:
        processes, versions = 4, 40
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        results: Any = ctx.Queue()
        workers = [
            ctx.Process(target=append_worker, args=(self._factory, versions, go, results))
            for _ in range(processes)
        ]
        for w in workers:
            w.start()
        try:
            ready = [await asyncio.to_thread(results.get, True, 120) for _ in workers]
            assert ready == ["ready"] * processes
            go.set()
            outcomes = [await asyncio.to_thread(results.get, True, 240) for _ in workers]
        finally:
            for w in workers:
                await asyncio.to_thread(w.join, 60)
                if w.is_alive():
                    w.kill()
        errors = [o for o in outcomes if isinstance(o, str)]
        assert not errors, errors
        wins = sorted(win for outcome in outcomes for win in outcome)
        assert_one_winner_per_version(wins, await store.read(STREAM), versions)
        assert all(w.exitcode == 0 for w in workers)

    async def test_two_projection_runner_processes_apply_each_event_once(
        self, store: EventStore
    ) -> None:
        """Two OS processes run one projection, catching up from the same store at the same
        time: every event is applied by exactly one of them."""
        db = self.database_of(store)
        await append_deposits(store, PROJECTED_EVENTS)
        await applications_projection().setup(db)
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        results: Any = ctx.Queue()
        workers = [
            ctx.Process(target=projection_worker, args=(self._factory, go, results))
            for _ in range(2)
        ]
        for w in workers:
            w.start()
        try:
            ready = [await asyncio.to_thread(results.get, True, 120) for _ in workers]
            assert ready == ["ready"] * len(workers)
            go.set()
            outcomes = [await asyncio.to_thread(results.get, True, 240) for _ in workers]
        finally:
            for w in workers:
                await asyncio.to_thread(w.join, 60)
                if w.is_alive():
                    w.kill()
        await assert_each_event_applied_once(store, db)
        assert_runners_counted(store_events=PROJECTED_EVENTS, outcomes=outcomes)
        assert all(w.exitcode == 0 for w in workers)


def assert_one_winner_per_version(
    wins: list[tuple[int, str]], stored: list[StoredEvent], versions: int
) -> None:
    assert [v for v, _ in wins] == list(range(1, versions + 1)), "each version: one winner"
    assert [(e.version, e.id) for e in stored] == wins


def append_worker(factory: StoreFactory, versions: int, go: Any, results: Any) -> None:
    """One OS process racing for every version of one stream."""

    async def main() -> list[tuple[int, str]]:
        store = factory()
        await store.open()
        wins: list[tuple[int, str]] = []
        try:
            results.put("ready")
            await asyncio.to_thread(go.wait, 120)
            for version in range(1, versions + 1):
                event = NewEvent(type="account.deposited", data=b"{}", stream="accounts", key="a")
                try:
                    await store.append(STREAM, [event], version - 1)
                except ConcurrencyError:
                    continue
                wins.append((version, event.id))
        finally:
            await store.close()
        return wins

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise


# --- projections ---------------------------------------------------------------------------


def applications_projection() -> Projection:
    """The projection the multi-runner tests run: its read model gets one row per event
    it applies, with no unique key, so an event applied twice shows as two rows. Its event
    class is made here, so no declared class outlives it (`eventbus asyncapi`)."""

    class Deposited(Event, stream="accounts", type="account.deposited"):
        account_id: str
        amount: int

    async def applied(event: Deposited, tx: Transaction, meta: EventMeta) -> None:
        await tx.execute(
            f"INSERT INTO {APPLICATIONS} (position, amount) VALUES (?, ?)",
            (meta.position, event.amount),
        )

    applied.__annotations__["event"] = Deposited  # a local class: not found by its name
    projection = Projection(
        PROJECTION,
        schema=[
            f"CREATE TABLE IF NOT EXISTS {APPLICATIONS} "
            "(position BIGINT NOT NULL, amount BIGINT NOT NULL)"
        ],
        tables=[APPLICATIONS],
    )
    projection.on(applied)
    return projection


async def append_deposits(store: EventStore, count: int, *, per_append: int = 10) -> None:
    """`count` deposit events, `per_append` to a call, over several streams."""
    for start in range(0, count, per_append):
        events = [new_event(n) for n in range(start, min(start + per_append, count))]
        await store.append(f"account-{start // per_append % 7}", events, None)


async def assert_each_event_applied_once(store: EventStore, db: Database) -> None:
    """Every stored event has exactly one row in the read model, and the checkpoint is at
    the last position."""
    positions = [e.position for e in await store.read_all(1, 100_000)]
    async with db.transaction() as tx:
        rows = await tx.fetchall(f"SELECT position FROM {APPLICATIONS}")
    applied = sorted(int(p) for (p,) in rows)
    assert len(applied) == len(positions), f"{len(applied)} applications of {len(positions)} events"
    assert applied == positions, "each event applied exactly once"
    assert await applications_projection().checkpoint(db) == positions[-1]


def assert_runners_counted(*, store_events: int, outcomes: list[Any]) -> None:
    """No runner failed (`outcomes`: what each `catch_up` returned, or its exception or
    its error text), and each counted only what it applied: together, every event once."""
    errors = [o for o in outcomes if not isinstance(o, int)]
    assert not errors, f"a runner that loses a batch must follow the checkpoint: {errors!r}"
    assert sum(outcomes) == store_events, f"the runners counted {outcomes}"


async def until(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Wait until `condition()` holds (polling), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def projection_worker(factory: StoreFactory, go: Any, results: Any) -> None:
    """One OS process catching the projection up from the store, racing another."""

    async def main() -> int:
        store = factory()
        await store.open()
        try:
            db = store.database
            assert db is not None
            results.put("ready")
            await asyncio.to_thread(go.wait, 120)
            return await applications_projection().catch_up(store, db, batch_size=PROJECTION_BATCH)
        finally:
            await store.close()

    try:
        results.put(asyncio.run(main()))
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise
