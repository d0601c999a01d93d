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
