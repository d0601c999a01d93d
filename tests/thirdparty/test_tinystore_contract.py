"""A third-party event store runs the shipped store contract in a few lines."""

from functools import partial
from pathlib import Path

import pytest
import tinystore  # type: ignore[import-not-found]

from eventbus.testing.store_contract import MultiProcessContract, StoreFactory


class TestCountingStore(MultiProcessContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self._path = str(tmp_path / "events.db")

    def store_factory(self) -> StoreFactory:
        return partial(tinystore.CountingEventStore, self._path)
