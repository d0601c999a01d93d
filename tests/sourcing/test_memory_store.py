from __future__ import annotations

from eventbus.sourcing import MemoryEventStore
from eventbus.testing.store_contract import StoreContract, StoreFactory


class TestMemoryStore(StoreContract):
    shared_instances = False
    has_database = False  # projections of it keep their checkpoint in a database of their own

    def store_factory(self) -> StoreFactory:
        return MemoryEventStore
