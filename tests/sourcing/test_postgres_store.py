from __future__ import annotations

import pytest

from eventbus.sourcing.postgres import PostgresDatabase

from .conftest import POSTGRES_DSN
from .store_contract import MultiProcessContract
from .support import StoreSpec, unique_schema

pytestmark = pytest.mark.postgres


class TestPostgresStore(MultiProcessContract):
    @pytest.fixture(autouse=True)
    def _schema(self) -> None:
        self._schema_name = unique_schema()

    def spec(self) -> StoreSpec:
        return ("postgresql", POSTGRES_DSN, self._schema_name)

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
