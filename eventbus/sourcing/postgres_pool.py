"""The connections of a PostgreSQL event store: a `psycopg_pool` pool whose connections
are checked before use, and the one rule for retrying work when a connection is lost.

A server that closes connections (a restart, a failover, `pg_terminate_backend`) leaves
dead connections idle in the pool. Every checkout first checks its connection with an
empty query (`AsyncConnectionPool.check_connection`). A dead one is discarded, and as
its idle siblings most likely died with it, the whole pool is checked at once
(`pool.check()`) before the next checkout: the first call after a restart costs a round
trip per dead connection. (The pool's own `check=` would back off between dead
connections instead, for a second, then two, then four...)

A connection can still die between the check and the work, or during it. `run(work)`
runs `work` once more, on another connection, when the first one was lost
(`connection_lost`: an `OperationalError` that left the connection closed). It runs it
at most twice: a second loss, or any other error (a query cancelled by
`statement_timeout` is an `OperationalError` on a live connection), is raised as is.
So `work` must be safe to run twice: a read, an upsert, a delete by key, or an append
that recognises its own earlier commit (`postgres.PostgresEventStore.append`).

The pool opens on first use and is sized by `pool_size` (most connections open at once)
and `pool_min_size` (kept open while idle); `pool_timeout` bounds the wait for a free
connection. Connections are in autocommit mode (transactions are explicit), with
`search_path` set to the store's schema and `application_name` set (`eventbus` unless the
URL names one), so `pg_stat_activity` shows which backends are the store's.
`connect()` opens a connection outside the pool for a caller that keeps it (the relay
lease: a session lock must live exactly as long as its connection, which a pool would
check, recycle or hand to someone else).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the PostgreSQL event store needs psycopg 3 and psycopg-pool: "
        "pip install 'eventbus[postgres]'"
    ) from exc

from eventbus.errors import ConfigurationError
from eventbus.log import get_logger
from eventbus.settings import redact_text, redact_url

T = TypeVar("T")
Connection = psycopg.AsyncConnection[Any]

_log = get_logger()

#: the `application_name` of the store's connections when the URL sets none
DEFAULT_APPLICATION_NAME = "eventbus"

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


def connection_lost(conn: Connection, exc: BaseException) -> bool:
    """Whether `exc`, raised by work on `conn`, means the connection is gone (the server
    closed it, the network dropped it), as opposed to an error of the work itself."""
    return isinstance(exc, psycopg.OperationalError) and conn.closed


class PostgresPool:
    """The pooled, checked connections of one store (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 4,
        pool_min_size: int = 1,
        pool_timeout: float = 30.0,
    ) -> None:
        if pool_size < 1 or not 0 <= pool_min_size <= pool_size or not pool_timeout > 0:
            raise ConfigurationError(
                f"PostgreSQL pool: pool_size={pool_size}, pool_min_size={pool_min_size}, "
                f"pool_timeout={pool_timeout}; need pool_size >= 1, "
                "0 <= pool_min_size <= pool_size and pool_timeout > 0"
            )
        self.url = url
        self.schema = schema
        self.pool_size = pool_size
        self.pool_min_size = pool_min_size
        self.pool_timeout = pool_timeout
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if schema:
            self._kwargs["options"] = f"-c search_path={schema}"
        if not _names_application(url):
            self._kwargs["application_name"] = DEFAULT_APPLICATION_NAME
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    async def connect(self) -> Connection:
        """A new connection outside the pool, configured like the pooled ones; the caller
        closes it. `ConnectionError` (password hidden) if it cannot be made."""
        try:
            return await psycopg.AsyncConnection.connect(self.url, **self._kwargs)
        except psycopg.Error as exc:  # OperationalError, or ProgrammingError: URL unparsable
            raise ConnectionError(connection_failure(self.url, exc)) from None

    async def open(self) -> None:
        """Start the pool (it fills in the background); idempotent."""
        await self._started()

    async def _started(self) -> AsyncConnectionPool[Connection]:
        if self._closed:
            raise RuntimeError("the PostgreSQL store is closed")
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                        self.url,
                        kwargs=self._kwargs,
                        min_size=self.pool_min_size,
                        max_size=self.pool_size,
                        timeout=self.pool_timeout,
                        name=f"eventbus:{self.schema or 'public'}",
                        open=False,
                    )
                    await pool.open(wait=False)
                    self._pool = pool
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A checked connection from the pool, returned to it afterwards (a broken one
        is discarded and replaced by the pool)."""
        pool = await self._started()
        conn = await self._checked(pool)
        try:
            yield conn
        finally:
            await pool.putconn(conn)

    async def _checked(self, pool: AsyncConnectionPool[Connection]) -> Connection:
        deadline = time.monotonic() + self.pool_timeout
        while True:
            try:
                conn = await pool.getconn(max(deadline - time.monotonic(), 0.001))
            except PoolTimeout as exc:
                raise await self._unavailable(exc) from None
            try:
                await AsyncConnectionPool.check_connection(conn)
                return conn
            except psycopg.Error:
                await pool.putconn(conn)  # closed: discarded, a replacement is on its way
            except BaseException:
                await pool.putconn(conn)
                raise
            await pool.check()  # its idle siblings most likely died with it

    async def _unavailable(self, exc: PoolTimeout) -> Exception:
        """Why no connection came within `pool_timeout`: the server cannot be reached (a
        `ConnectionError` with libpq's reason), or every connection was busy (`exc`)."""
        try:
            conn = await self.connect()
        except ConnectionError as error:
            return error
        await conn.close()
        return exc

    async def run(self, work: Callable[[Connection], Awaitable[T]], operation: str) -> T:
        """`work(conn)` on a pooled connection, run once more on another connection if the
        first was lost (module docstring); `operation` names it in the log."""
        async with self.connection() as conn:
            try:
                return await work(conn)
            except psycopg.OperationalError as exc:
                if not connection_lost(conn, exc):
                    raise
                _log.warning(
                    "postgres.connection_lost", operation=operation, error=repr(exc),
                    schema=self.schema, action="retrying once on another connection",
                )  # fmt: skip
        # the dead connection is back in the pool (discarded) before another is taken:
        # with pool_size=1 the retry would otherwise wait for itself
        async with self.connection() as conn:
            return await work(conn)

    @property
    def stats(self) -> dict[str, int]:
        """The pool's counters (`psycopg_pool` `get_stats()`: connections open, idle,
        lost, requests waiting...); empty before the pool opened."""
        return self._pool.get_stats() if self._pool is not None else {}

    async def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards."""
        self._closed = True
        async with self._opening:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _names_application(url: str) -> bool:
    """Whether the connection string sets `application_name` itself."""
    try:
        return "application_name" in conninfo_to_dict(url)
    except psycopg.Error:  # unparsable: connecting reports it (`connection_failure`)
        return False
