"""The PostgreSQL event store (psycopg 3) and the PostgreSQL `Database`.

Gap-free global order: positions come from a sequence in PostgreSQL only at the risk of
a later commit with a smaller number (a tailing reader would skip it). Here every append
takes a transaction-scoped advisory lock first, then assigns `max(position) + 1`, so
appends commit one after another in position order; the lock is released at commit.
Within one call all events go in one transaction. `schema=` isolates a store in its own
PostgreSQL schema (tests use one per test).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import unquote

try:
    import psycopg
    from psycopg import sql as pgsql
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the PostgreSQL event store needs psycopg 3: pip install 'eventbus[postgres]'"
    ) from exc

from eventbus.errors import ConcurrencyError, ConfigurationError
from eventbus.settings import redact_text, redact_url

from .database import Params, Row
from .records import NewEvent, Snapshot, StoredEvent
from .store import EventStore, check_events, check_version
from .table import (
    INSERT_EVENT,
    INSERT_OUTBOX,
    LAST_POSITION,
    LOAD_SNAPSHOT,
    MAX_VERSION,
    OUTBOX_PENDING,
    READ_ALL,
    READ_STREAM,
    SAVE_SNAPSHOT,
    STREAM_VERSION,
    event_row,
    event_store_schema,
    row_to_snapshot,
    rows_to_events,
    snapshot_row,
)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

SCHEMA = event_store_schema("BIGINT", "BYTEA")
#: one lock per schema serializes appends (see the module docstring)
_APPEND_LOCK = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.eventbus.append'))"
_DDL_LOCK = "SELECT pg_advisory_xact_lock(hashtext('eventbus.ddl'))"


@lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """`?` placeholders -> psycopg's `%s` (literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


#: characters libpq cannot take unencoded in a URL password: it ends the authority at the
#: first '/' and the user info at the first '@', refuses spaces and bad '%' escapes
_UNENCODABLE = re.compile(r"[/@\s]|%(?![0-9A-Fa-f]{2})")
_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@\[\]]*:(?P<password>.*)@", re.S)


def connection_failure(url: str, exc: BaseException) -> str:
    """Why connecting to `url` failed, without the password.

    libpq's message is not shown when the password holds a character a URL must
    percent-encode: libpq then mis-parses the URL and quotes pieces of the password back
    (as a host, a port or a bad token); the message says how to write it instead. Any
    other message is shown with URLs redacted and the password itself masked."""
    where = f"cannot connect to PostgreSQL at {redact_url(url)}"
    found = _PASSWORD.match(url)
    password = found["password"] if found else ""
    if password and _UNENCODABLE.search(password):
        return (
            f"{where}: the URL does not parse; percent-encode the password's '/', '@', '%' "
            "and spaces (%2F, %40, %25, %20)"
        )
    text = str(exc).strip()
    reason = redact_text(text.splitlines()[0]) if text else type(exc).__name__
    for secret in {password, unquote(password)} - {""}:
        reason = reason.replace(secret, "***")
    return f"{where}: {reason}"


class _Pool:
    """A few connections, handed out one task at a time; broken ones are replaced."""

    def __init__(self, url: str, size: int, schema: str | None) -> None:
        self._url = url
        self._size = size
        self._schema = schema
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._count = 0
        self._available = asyncio.Condition()
        self._closed = False

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if self._schema:
            kwargs["options"] = f"-c search_path={self._schema}"
        try:
            return await psycopg.AsyncConnection.connect(self._url, **kwargs)
        except psycopg.Error as exc:  # OperationalError, or ProgrammingError: URL unparsable
            raise ConnectionError(connection_failure(self._url, exc)) from None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        conn = await self._acquire()
        try:
            yield conn
        finally:
            await self._release(conn)

    async def dedicated(self) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection outside the pool (the caller closes it)."""
        return await self._connect()

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        async with self._available:
            while True:
                if self._closed:
                    raise RuntimeError("the PostgreSQL store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._count < self._size:
                    self._count += 1
                    break
                await self._available.wait()
        try:
            return await self._connect()
        except BaseException:
            async with self._available:
                self._count -= 1
                self._available.notify()
            raise

    async def _release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        healthy = (
            not conn.closed
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and not self._closed
        )
        if not healthy:
            await conn.close()
        async with self._available:
            if healthy:
                self._idle.append(conn)
            else:
                self._count -= 1
            self._available.notify()

    async def close(self) -> None:
        async with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._available.notify_all()
        for conn in idle:
            await conn.close()


class PostgresDatabase:
    """Transactions on pooled psycopg connections; SQL with `?` placeholders."""

    dialect: Literal["sqlite", "postgresql"] = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 4) -> None:
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"PostgreSQL schema {schema!r}: use lower-case letters, digits and '_'"
            )
        self.url = url
        self.schema = schema
        self.pool = _Pool(url, pool_size, schema)
        self._opened = False

    async def open(self) -> None:
        if self._opened:
            return
        if self.schema:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(_DDL_LOCK)
                await conn.execute(
                    pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        pgsql.Identifier(self.schema)
                    )
                )
        self._opened = True

    async def close(self) -> None:
        await self.pool.close()

    async def drop_schema(self) -> None:
        """Drop this database's schema with everything in it (test clean-up)."""
        if not self.schema:
            raise ConfigurationError("drop_schema() needs a store opened with schema=")
        async with self.pool.connection() as conn:
            await conn.execute(
                pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(pgsql.Identifier(self.schema))
            )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self.pool.connection() as conn, conn.transaction():
            yield PostgresTransaction(conn)


class PostgresTransaction:
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        cur = await self._conn.execute(to_pyformat(sql), params)
        return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(to_pyformat(sql), rows)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        cur = await self._conn.execute(to_pyformat(sql), params)
        row: Row | None = await cur.fetchone()
        return row

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        cur = await self._conn.execute(to_pyformat(sql), params)
        rows: list[Row] = await cur.fetchall()
        return rows


class PostgresEventStore(EventStore):
    backend = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 4) -> None:
        self.url = url
        self._relay_conn: psycopg.AsyncConnection[Any] | None = None
        self._db = PostgresDatabase(url, schema=schema, pool_size=pool_size)

    def __repr__(self) -> str:
        return f"PostgresEventStore({redact_url(self.url)!r}, schema={self._db.schema!r})"

    @property
    def database(self) -> PostgresDatabase:
        return self._db

    async def open(self) -> None:
        await self._db.open()
        async with self._db.pool.connection() as conn, conn.transaction():
            await conn.execute(_DDL_LOCK)
            for statement in SCHEMA:
                await conn.execute(statement)

    async def close(self) -> None:
        await self.release_relay()
        await self._db.close()

    async def try_acquire_relay(self) -> bool:
        """A session advisory lock on a connection of its own: the server releases it when
        that connection ends, so a killed relay frees the lease."""
        if self._relay_conn is not None:
            return False
        conn = await self._db.pool.dedicated()
        key = f"eventbus.outbox_relay.{self._db.schema or 'public'}"
        row = await (
            await conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
        ).fetchone()
        if not row or not row[0]:
            await conn.close()
            return False
        self._relay_conn = conn
        return True

    async def release_relay(self) -> None:
        conn, self._relay_conn = self._relay_conn, None
        if conn is not None:
            await conn.close()  # ends the session: the advisory lock goes with it

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None,
        *,
        publish: bool = False,
    ) -> list[StoredEvent]:
        check_events(events)
        async with self._db.pool.connection() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(_APPEND_LOCK)
                    cur = await conn.execute(
                        "SELECT coalesce(max(version), 0), "
                        "(SELECT coalesce(max(position), 0) FROM events) "
                        "FROM events WHERE stream_id = %s",
                        (stream_id,),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    current, last = int(row[0]), int(row[1])
                    check_version(stream_id, current, expected_version)
                    stored = [
                        StoredEvent.of(new, stream_id, current + i, last + i)
                        for i, new in enumerate(events, start=1)
                    ]
                    async with conn.cursor() as c:
                        await c.executemany(_INSERT_EVENT, [event_row(e) for e in stored])
                        if publish:
                            await c.executemany(_INSERT_OUTBOX, [(e.position,) for e in stored])
            except psycopg.errors.UniqueViolation as exc:
                raise ConcurrencyError(
                    f"stream {stream_id!r}: version or event id already taken "
                    f"({exc.diag.constraint_name}); reload and retry the command"
                ) from None
        return stored

    async def _fetch(self, query: str, params: Params) -> list[StoredEvent]:
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        return rows_to_events(rows)

    async def read(
        self, stream_id: str, from_version: int = 1, to_version: int | None = None
    ) -> list[StoredEvent]:
        upper = to_version if to_version is not None else MAX_VERSION
        return await self._fetch(_READ_STREAM, (stream_id, from_version, upper))

    async def read_all(self, from_position: int = 1, limit: int = 1000) -> list[StoredEvent]:
        return await self._fetch(_READ_ALL, (from_position, limit))

    async def _scalar(self, query: str, params: Params = ()) -> int:
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def stream_version(self, stream_id: str) -> int:
        return await self._scalar(_STREAM_VERSION, (stream_id,))

    async def last_position(self) -> int:
        return await self._scalar(_LAST_POSITION)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        async with self._db.pool.connection() as conn:
            await conn.execute(_SAVE_SNAPSHOT, snapshot_row(snapshot))

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(_LOAD_SNAPSHOT, (stream_id,))
            return row_to_snapshot(stream_id, await cur.fetchone())

    async def outbox_pending(self, limit: int = 500) -> list[StoredEvent]:
        return await self._fetch(_OUTBOX_PENDING, (limit,))

    async def outbox_mark_sent(self, positions: Sequence[int]) -> None:
        if not positions:
            return
        async with self._db.pool.connection() as conn:
            await conn.execute("DELETE FROM outbox WHERE position = ANY(%s)", (list(positions),))


#: the shared statements (`table.py`) with PostgreSQL's placeholders
_INSERT_EVENT = to_pyformat(INSERT_EVENT)
_INSERT_OUTBOX = to_pyformat(INSERT_OUTBOX)
_STREAM_VERSION = to_pyformat(STREAM_VERSION)
_LAST_POSITION = to_pyformat(LAST_POSITION)
_READ_STREAM = to_pyformat(READ_STREAM)
_READ_ALL = to_pyformat(READ_ALL)
_SAVE_SNAPSHOT = to_pyformat(SAVE_SNAPSHOT)
_LOAD_SNAPSHOT = to_pyformat(LOAD_SNAPSHOT)
_OUTBOX_PENDING = to_pyformat(OUTBOX_PENDING)

__all__ = ["PostgresDatabase", "PostgresEventStore", "PostgresTransaction"]
