from __future__ import annotations

from .store_contract import StoreContract
from .support import StoreSpec


class TestMemoryStore(StoreContract):
    shared_instances = False

    def spec(self) -> StoreSpec:
        return ("memory",)
