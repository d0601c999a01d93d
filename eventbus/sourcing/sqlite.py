"""The SQLite event store (the embedded default) and the SQLite `Database`.

One connection per store, used from one dedicated thread, so the event loop never blocks
on SQLite. WAL mode; every write transaction starts with `BEGIN IMMEDIATE`, which takes
SQLite's write lock up front: writers in this and in other processes are serialized, and
positions (max + 1 inside that lock) are committed in order, so `read_all` has no gaps.
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import IO, Literal, TypeVar

from eventbus.errors import ConcurrencyError

from .database import Params, Row
from .records import NewEvent, Snapshot, StoredEvent
from .store import EventStore, check_events, check_version, encode_headers
from .table import COLUMNS, E_COLUMNS, event_store_schema, rows_to_events

T = TypeVar("T")

SCHEMA = event_store_schema("INTEGER", "BLOB")


class SqliteDatabase:
    """One SQLite connection behind a dedicated thread; transactions are serialized."""

    dialect: Literal["sqlite", "postgresql"] = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 60.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="eventbus-sqlite")
        self._conn = await self._call(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise RuntimeError(f"SQLite database {self.path!r} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"SQLite database {self.path!r} is not open")
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run `fn(connection)` in the database thread, in one transaction if `write`."""
        async with self._lock:
            conn = self.conn
            if not write:
                return await self._call(lambda: fn(conn))

            def transaction() -> T:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result

            return await self._call(transaction)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self._lock:
            conn = self.conn
            await self._call(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                yield SqliteTransaction(self, conn)
            except BaseException:
                await asyncio.shield(self._call(lambda: conn.execute("ROLLBACK")))
                raise
            await self._call(lambda: conn.execute("COMMIT"))


class SqliteTransaction:
    __slots__ = ("_conn", "_db")

    def __init__(self, db: SqliteDatabase, conn: sqlite3.Connection) -> None:
        self._db = db
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        conn = self._conn
        return await self._db._call(lambda: conn.execute(sql, params).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        conn = self._conn
        await self._db._call(lambda: conn.executemany(sql, rows))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        conn = self._conn
        row: Row | None = await self._db._call(lambda: conn.execute(sql, params).fetchone())
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        conn = self._conn
        rows: list[Row] = await self._db._call(lambda: conn.execute(sql, params).fetchall())
        return rows


class SqliteEventStore(EventStore):
    backend = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 60.0) -> None:
        self.path = path
        self._db = SqliteDatabase(path, busy_timeout=busy_timeout)
        self._relay_file: IO[str] | None = None

    @property
    def database(self) -> SqliteDatabase:
        return self._db

    async def open(self) -> None:
        await self._db.open()

        def create(conn: sqlite3.Connection) -> None:
            for statement in SCHEMA:
                conn.execute(statement)

        await self._db.run(create, write=True)

    async def close(self) -> None:
        await self.release_relay()
        await self._db.close()

    async def try_acquire_relay(self) -> bool:
        """An exclusive `flock` on `<db>.relay.lock`, released by the OS if we die."""
        if self._relay_file is not None:
            return False
        handle = await asyncio.to_thread(_try_lock, f"{self.path}.relay.lock")
        if handle is None:
            return False
        self._relay_file = handle
        return True

    async def release_relay(self) -> None:
        handle, self._relay_file = self._relay_file, None
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        publish: bool = False,
    ) -> list[StoredEvent]:
        check_events(events)

        def append(conn: sqlite3.Connection) -> list[StoredEvent]:
            (current,) = conn.execute(
                "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
            ).fetchone()
            check_version(stream_id, current, expected_version)
            (last,) = conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()
            stored = [
                StoredEvent.of(new, stream_id, current + i, last + i)
                for i, new in enumerate(events, start=1)
            ]
            conn.executemany(
                f"INSERT INTO events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (e.position, stream_id, e.version, e.id, e.type, e.schema_version, e.data,
                     e.stream, e.key, e.time, e.correlation_id, e.causation_id,
                     encode_headers(e.headers))
                    for e in stored
                ],
            )  # fmt: skip
            if publish:
                conn.executemany(
                    "INSERT INTO outbox (position) VALUES (?)", [(e.position,) for e in stored]
                )
            return stored

        try:
            return await self._db.run(append, write=True)
        except sqlite3.IntegrityError as exc:
            raise ConcurrencyError(
                f"stream {stream_id!r}: version or event id already taken ({exc}); "
                "reload and retry the command"
            ) from None

    async def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        upper = to_version if to_version is not None else 2**62

        def read(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE stream_id = ? AND version >= ? "
                "AND version <= ? ORDER BY version",
                (stream_id, from_version, upper),
            ).fetchall()
            return rows_to_events(rows)

        return await self._db.run(read)

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        def read(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                f"SELECT {COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?",
                (from_position, limit),
            ).fetchall()
            return rows_to_events(rows)

        return await self._db.run(read)

    async def stream_version(self, stream_id: str) -> int:
        def version(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?", (stream_id,)
            ).fetchone()
            return int(row[0])

        return await self._db.run(version)

    async def last_position(self) -> int:
        def last(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(position), 0) FROM events").fetchone()[0])

        return await self._db.run(last)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO snapshots (stream_id, version, state, schema_version, time) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
                "version = excluded.version, state = excluded.state, "
                "schema_version = excluded.schema_version, time = excluded.time "
                "WHERE excluded.version >= snapshots.version",
                (snapshot.stream_id, snapshot.version, snapshot.state,
                 snapshot.schema_version, snapshot.time),
            )  # fmt: skip

        await self._db.run(save, write=True)

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        def load(conn: sqlite3.Connection) -> Snapshot | None:
            row = conn.execute(
                "SELECT version, state, schema_version, time FROM snapshots WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
            if row is None:
                return None
            return Snapshot(stream_id, row[0], bytes(row[1]), row[2], row[3])

        return await self._db.run(load)

    async def outbox_pending(self, limit: int = 500) -> list[StoredEvent]:
        def pending(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(
                f"SELECT {E_COLUMNS} "
                "FROM outbox o JOIN events e ON e.position = o.position "
                "ORDER BY o.position LIMIT ?",
                (limit,),
            ).fetchall()
            return rows_to_events(rows)

        return await self._db.run(pending)

    async def outbox_mark_sent(self, positions: Sequence[int]) -> None:
        if not positions:
            return

        def mark(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE position = ?", [(p,) for p in positions])

        await self._db.run(mark, write=True)


__all__ = ["SqliteDatabase", "SqliteEventStore", "SqliteTransaction"]


def _try_lock(path: str) -> IO[str] | None:
    """The file at `path`, exclusively `flock`ed, or None if another process holds it."""
    handle = open(path, "a+")  # noqa: SIM115 - stays open while the lease is held
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle
