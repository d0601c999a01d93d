from __future__ import annotations

from functools import partial

import pytest

from eventbus.sourcing.postgres import PostgresDatabase, PostgresEventStore
from eventbus.testing.store_contract import MultiProcessContract, StoreFactory

from .conftest import POSTGRES_DSN
from .support import unique_schema

pytestmark = pytest.mark.postgres


class TestPostgresStore(MultiProcessContract):
    @pytest.fixture(autouse=True)
    def _schema(self) -> None:
        self._schema_name = unique_schema()

    def store_factory(self) -> StoreFactory:
        return partial(PostgresEventStore, POSTGRES_DSN, schema=self._schema_name)

    async def cleanup(self) -> None:
        db = PostgresDatabase(POSTGRES_DSN, schema=self._schema_name)
        try:
            await db.drop_schema()
        finally:
            await db.close()


async def test_unreachable_database_fails_loudly_without_the_password() -> None:
    from eventbus.sourcing.postgres import PostgresEventStore

    store = PostgresEventStore("postgresql://eventbus:s3cret@127.0.0.1:1/eventbus")
    with pytest.raises(ConnectionError) as info:
        await store.open()
    assert "s3cret" not in str(info.value) and "127.0.0.1" in str(info.value)
    await store.close()


async def test_processes_setting_up_the_same_tables_at_once_wait_for_each_other() -> None:
    """`create_schema` from 4 connections at the same moment (4 projections' or inboxes'
    `setup` in 4 processes): without the DDL lock PostgreSQL fails the losers with a
    unique violation on its catalog."""
    import asyncio

    from eventbus.sourcing import Inbox, create_schema

    schema = unique_schema()
    dbs = [PostgresDatabase(POSTGRES_DSN, schema=schema) for _ in range(4)]
    try:
        for db in dbs:
            await db.open()
        ddl = ["CREATE TABLE IF NOT EXISTS setup_race (id TEXT PRIMARY KEY)"]
        await asyncio.gather(*(create_schema(db, ddl) for db in dbs))
        await asyncio.gather(*(Inbox(db, "g").setup() for db in dbs))
        async with dbs[0].transaction() as tx:
            assert await tx.fetchall("SELECT id FROM setup_race") == []
    finally:
        await dbs[0].drop_schema()
        for db in dbs:
            await db.close()
