from __future__ import annotations

from adapters.memory import memory_state

from .harness import Harness, unique


class MemoryHarness(Harness):
    name = "memory"

    def __init__(self) -> None:
        self._name = unique("conformance")

    def url(self) -> str:
        return f"memory://{self._name}"

    async def inject_raw(
        self, stream: str, event_type: str | None, body: bytes, key: str | None = None
    ) -> None:
        attributes = {"type": event_type} if event_type is not None else {}
        memory_state(self._name).inject(stream, body, attributes, key)
