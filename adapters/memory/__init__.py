"""`memory://[name]`: the embedded in-process broker, with the full contract."""

from .adapter import MemoryAdapter
from .broker import MemoryBroker
from .state import memory_state
from .sync import MemorySyncTransport

adapter = MemoryAdapter()

__all__ = ["MemoryAdapter", "MemoryBroker", "MemorySyncTransport", "adapter", "memory_state"]
