"""`memory://[name]`: the embedded in-process broker, with the full contract."""

from .broker import MemoryAdapter, MemoryBroker, MemorySyncTransport, memory_state

adapter = MemoryAdapter()

__all__ = ["MemoryAdapter", "MemoryBroker", "MemorySyncTransport", "adapter", "memory_state"]
