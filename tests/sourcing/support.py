"""Shared helpers of the sourcing tests: event classes, store factories by spec."""

from __future__ import annotations

import uuid

from eventbus.event import Event
from eventbus.sourcing import EventStore, MemoryEventStore, SqliteEventStore
from eventbus.testing.store_contract import new_event

__all__ = ["Deposited", "StoreSpec", "Withdrawn", "make_store", "new_event", "unique_schema"]

#: how a store is rebuilt in another task or process: ("sqlite", path) or
#: ("postgresql", dsn, schema)
StoreSpec = tuple[str, ...]


def make_store(spec: StoreSpec) -> EventStore:
    kind = spec[0]
    if kind == "memory":
        return MemoryEventStore()
    if kind == "sqlite":
        return SqliteEventStore(spec[1])
    if kind == "postgresql":
        from eventbus.sourcing.postgres import PostgresEventStore

        return PostgresEventStore(spec[1], schema=spec[2])
    raise ValueError(spec)


def unique_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


class Deposited(Event, stream="accounts", type="account.deposited"):
    account_id: str
    amount: int


class Withdrawn(Event, stream="accounts", type="account.withdrawn"):
    account_id: str
    amount: int
