from __future__ import annotations

from eventbus.sourcing import MemoryEventStore
from eventbus.testing.store_contract import StoreContract, StoreFactory


class TestMemoryStore(StoreContract):
    shared_instances = False

    def store_factory(self) -> StoreFactory:
        return MemoryEventStore
