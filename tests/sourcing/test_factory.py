"""`open_store` and the platform: the store abstraction imports no backend, and eventbus
works where `fcntl` does not exist (the SQLite relay lease then covers one process)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eventbus.errors import ConfigurationError
from eventbus.sourcing import MemoryEventStore, SqliteEventStore, open_store
from eventbus.sourcing.postgres import PostgresDatabase, PostgresEventStore


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryEventStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/e.db"), SqliteEventStore)


def test_eventbus_works_without_fcntl(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["fcntl"] = None  # as on Windows: importing it fails
        import eventbus
        from eventbus.sourcing import SqliteEventStore

        async def main():
            store = SqliteEventStore({str(tmp_path / "e.db")!r})
            await store.open()
            first, second = await store.try_acquire_relay(), await store.try_acquire_relay()
            await store.close()
            print(first, second)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == ["True", "False"]
    assert "relay lease covers one process" in done.stdout + done.stderr


def test_postgres_url_options_reach_the_store() -> None:
    """`schema=` and the pool options are ours: taken off the URL libpq gets, and given
    to the store; libpq's own parameters stay."""
    store = open_store(
        "postgresql://app:pw@db/orders?schema=shop&pool_size=8&pool_min_size=2"
        "&pool_timeout=2.5&sslmode=disable&application_name=orders"
    )
    assert isinstance(store, PostgresEventStore)
    pool = store.database.pool
    assert (pool.schema, pool.pool_size, pool.pool_min_size, pool.pool_timeout) == (
        "shop", 8, 2, 2.5,
    )  # fmt: skip
    assert pool.url == "postgresql://app:pw@db/orders?sslmode=disable&application_name=orders"
    defaults = open_store("postgresql://app:pw@db/orders").database
    assert isinstance(defaults, PostgresDatabase)
    assert (defaults.pool.pool_size, defaults.pool.pool_min_size) == (4, 1)
    assert defaults.pool.pool_timeout == 30.0


@pytest.mark.parametrize(
    "query",
    ["pool_size=many", "pool_timeout=soon", "pool_size=0", "pool_min_size=5", "pool_timeout=0"],
)
def test_bad_postgres_pool_options_are_refused_without_the_password(query: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_store(f"postgresql://app:s3cret@db/orders?{query}")
    assert "s3cret" not in str(info.value)
    assert query.split("=")[0] in str(info.value)
