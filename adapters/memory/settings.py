"""Options of `memory://`: the bus's (`EventBus("memory://", partitions=...)`) and a
subscription's (`bus.subscribe(..., partitions=...)`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PARTITIONS = 8


class MemoryOptions(BaseModel):
    """`EventBus("memory://", partitions=...)`: the default partitions of new groups."""

    model_config = ConfigDict(extra="forbid")
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=1024)


class SubscriptionOptions(BaseModel):
    """`bus.subscribe(..., partitions=...)` on memory://: partitions of a new group."""

    model_config = ConfigDict(extra="forbid")
    partitions: int | None = Field(default=None, ge=1, le=1024)
