"""A small async SQL face shared by SQLite and PostgreSQL, for read models, inboxes and
projection checkpoints that must commit in one transaction.

SQL uses `?` placeholders on both backends (translated for psycopg). The statements the
library itself issues are portable (`INSERT ... ON CONFLICT`, `CREATE TABLE IF NOT
EXISTS`); read-model code may branch on `Database.dialect` where the dialects differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Params = Sequence[Any]
Row = tuple[Any, ...]


class Transaction(Protocol):
    """One open transaction; it commits when its `async with` block exits normally and
    rolls back when the block raises."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """Run one statement once per parameter row."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...


class Database(Protocol):
    dialect: Literal["sqlite", "postgresql"]

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """`async with db.transaction() as tx:` - commit on success, roll back on error."""

    async def close(self) -> None: ...


async def create_schema(db: Database, statements: Sequence[str]) -> None:
    """Run DDL statements (`CREATE TABLE IF NOT EXISTS ...`) in one transaction. A
    database with a `ddl_lock` statement (PostgreSQL: an advisory lock) runs it first, so
    that processes setting up the same tables at once wait for each other instead of
    failing on the catalog's unique keys."""
    lock = getattr(db, "ddl_lock", None)
    async with db.transaction() as tx:
        if isinstance(lock, str):
            await tx.execute(lock)
        for statement in statements:
            await tx.execute(statement)


async def dump_tables(db: Database, tables: Sequence[str]) -> dict[str, list[Row]]:
    """Every row of `tables`, sorted: a comparable picture of a read model."""
    picture: dict[str, list[Row]] = {}
    async with db.transaction() as tx:
        for table in tables:
            rows = await tx.fetchall(f"SELECT * FROM {table}")
            picture[table] = sorted((_plain(row) for row in rows), key=repr)
    return picture


def _plain(row: Row) -> Row:
    """Normalise driver types (Decimal, memoryview) so SQLite and PostgreSQL compare."""
    out: list[Any] = []
    for value in row:
        if isinstance(value, memoryview):
            value = bytes(value)
        elif type(value).__name__ == "Decimal":
            value = float(value)
        out.append(value)
    return tuple(out)
