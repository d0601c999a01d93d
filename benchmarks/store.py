"""Event-store append (batched) and replay rates, SQLite and PostgreSQL, beside the
`eventsourcing` library (PyPI) storing the same events with its own recorders.

Append: `batch` events per `append` call (one transaction each), one stream per batch.
Replay: `read_all` pages of 5,000 over everything appended, rows turned into StoredEvent.
The peer: `SQLiteApplicationRecorder` / `PostgresApplicationRecorder`, `insert_events`
of the same batches (one aggregate per batch, versions 1..100), replayed with
`select_notifications` in pages of 5,000 (its global order). Its API is synchronous: it
runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from functools import partial
from importlib.metadata import version
from typing import Any
from urllib.parse import unquote, urlsplit

from eventbus.sourcing import EventStore, NewEvent, SqliteEventStore

from .core import Scenario, Stopwatch, metrics_of
from .servers import POSTGRES_URL

BODY = b'{"order_id":"o-123456","customer_id":"c-42","email":"c42@example.com","total_cents":1999}'
BATCH = 100
#: the peer baseline's name in the reports
PEER = f"eventsourcing {version('eventsourcing')}"
#: the peer called as eventbus's async store is: one trip to a database thread per append
PEER_PER_CALL = f"{PEER} (a thread trip per append)"


@asynccontextmanager
async def open_backend(backend: str) -> AsyncIterator[EventStore]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store: EventStore = SqliteEventStore(f"{tmp}/bench.db")
            await store.open()
            try:
                yield store
            finally:
                await store.close()
    else:
        from eventbus.sourcing.postgres import PostgresEventStore

        pg = PostgresEventStore(POSTGRES_URL, schema=f"bench_{uuid.uuid4().hex[:8]}")
        await pg.open()
        try:
            yield pg
        finally:
            await pg.database.drop_schema()
            await pg.close()


async def measure(backend: str, events: int, which: str) -> dict[str, float]:
    async with open_backend(backend) as store:
        batches = [
            [
                NewEvent(type="order.created", data=BODY, stream="orders", key=f"o-{b}")
                for _ in range(BATCH)
            ]
            for b in range(events // BATCH)
        ]
        with Stopwatch() as append:
            for n, chunk in enumerate(batches):
                await store.append(f"order-{n}", chunk, 0)
        stored = len(batches) * BATCH
        del batches  # a replaying process does not hold what was appended (nor the peer's)
        with Stopwatch() as replay:
            position, replayed = 1, 0
            while page := await store.read_all(position, 5000):
                replayed += len(page)
                position = page[-1].position + 1
    if replayed != stored:
        raise AssertionError(f"replayed {replayed} of {stored} events")
    watch = append if which == "append" else replay
    return metrics_of(stored, watch.wall, watch=watch)


def peer_measure(backend: str, events: int, which: str) -> dict[str, float]:
    """The same batches through the `eventsourcing` library's application recorder."""
    from eventsourcing.persistence import StoredEvent

    batches = []
    for _ in range(events // BATCH):  # one aggregate per batch, versions 1..BATCH
        owner = uuid.uuid4()
        batches.append(
            [StoredEvent(owner, v + 1, "bench:OrderCreated", BODY) for v in range(BATCH)]
        )
    with _peer_recorder(backend) as recorder:
        with Stopwatch() as append:
            for chunk in batches:
                recorder.insert_events(chunk)
        stored = len(batches) * BATCH
        del batches
        with Stopwatch() as replay:
            position, replayed = 1, 0
            while page := recorder.select_notifications(start=position, limit=5000):
                replayed += len(page)
                position = page[-1].id + 1
    if replayed != stored:
        raise AssertionError(f"eventsourcing replayed {replayed} of {stored} events")
    watch = append if which == "append" else replay
    return metrics_of(stored, watch.wall, watch=watch)


def _peer_recorder(backend: str) -> AbstractContextManager[Any]:
    return _sqlite_peer() if backend == "sqlite" else _postgres_peer()


@contextmanager
def _sqlite_peer() -> Iterator[Any]:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    with tempfile.TemporaryDirectory() as tmp:
        datastore = SQLiteDatastore(f"{tmp}/peer.db")
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        try:
            yield recorder
        finally:
            datastore.close()


@contextmanager
def _postgres_peer() -> Iterator[Any]:
    import psycopg
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    from psycopg import sql

    schema = f"bench_es_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(POSTGRES_URL)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    datastore = PostgresDatastore(
        (parts.path or "/eventbus").lstrip("/"),
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        unquote(parts.username or "eventbus"),
        unquote(parts.password or ""),
        schema=schema,
    )
    try:
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        yield recorder
    finally:
        datastore.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


async def peer_run(backend: str, events: int, which: str) -> dict[str, float]:
    return await asyncio.to_thread(peer_measure, backend, events, which)


async def peer_append_per_call(events: int) -> dict[str, float]:
    """The peer's SQLite appends made the way eventbus's async store makes them: the event
    loop hands each `insert_events` to one database thread and awaits it (the peer alone
    runs its whole loop in one thread, without a trip per call)."""
    from eventsourcing.persistence import StoredEvent

    loop = asyncio.get_running_loop()
    batches = [
        [StoredEvent(owner, v + 1, "bench:OrderCreated", BODY) for v in range(BATCH)]
        for owner in (uuid.uuid4() for _ in range(events // BATCH))
    ]
    peer = _sqlite_peer()
    with ThreadPoolExecutor(1) as thread:  # the recorder is made and used in that thread
        recorder = await loop.run_in_executor(thread, peer.__enter__)
        try:
            with Stopwatch() as append:
                for chunk in batches:
                    await loop.run_in_executor(thread, recorder.insert_events, chunk)
        finally:
            await loop.run_in_executor(thread, peer.__exit__, None, None, None)
    return metrics_of(len(batches) * BATCH, append.wall, watch=append)


def scenarios(quick: bool) -> list[Scenario]:
    n = 20_000 if quick else 200_000
    result = []
    for backend in ("sqlite", "postgresql"):
        result.append(
            Scenario(
                backend,
                "append (batched)",
                f"append {BATCH} events per call, one transaction each",
                {
                    "eventbus": partial(measure, backend, n, "append"),
                    PEER: partial(peer_run, backend, n, "append"),
                    **(
                        {PEER_PER_CALL: partial(peer_append_per_call, n)}
                        if backend == "sqlite"
                        else {}
                    ),
                },
            )
        )
        result.append(
            Scenario(
                backend,
                "replay",
                "read_all in pages of 5,000, in global order",
                {
                    "eventbus": partial(measure, backend, n, "replay"),
                    PEER: partial(peer_run, backend, n, "replay"),
                },
            )
        )
    return result
