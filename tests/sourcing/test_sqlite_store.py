from __future__ import annotations

from functools import partial

import pytest

from eventbus.sourcing import SqliteEventStore, open_store
from eventbus.sourcing.factory import sqlite_path
from eventbus.testing.store_contract import MultiProcessContract, StoreFactory


class TestSqliteStore(MultiProcessContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: object) -> None:
        self._path = f"{tmp_path}/events.db"

    def store_factory(self) -> StoreFactory:
        return partial(SqliteEventStore, self._path)


def test_store_urls() -> None:
    assert sqlite_path("sqlite:///tmp/x.db") == "/tmp/x.db"
    assert sqlite_path("sqlite:///./x.db") == "./x.db"
    assert sqlite_path("sqlite://") == ":memory:"
    store = open_store("sqlite:////var/tmp/e.db")
    assert isinstance(store, SqliteEventStore) and store.path == "//var/tmp/e.db"
