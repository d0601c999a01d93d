from __future__ import annotations

from collections.abc import Mapping

from eventbus.adapters.memory import memory_state
from eventbus.testing.conformance import Harness, unique


class MemoryHarness(Harness):
    name = "memory"

    def __init__(self) -> None:
        self._name = unique("conformance")

    def url(self) -> str:
        return f"memory://{self._name}"

    async def inject_raw(
        self,
        stream: str,
        event_type: str | bytes | None,
        body: bytes,
        key: str | bytes | None = None,
        *,
        headers: Mapping[str | bytes, str | bytes] | None = None,
    ) -> None:
        """memory:// carries text attributes, no transport headers: `ce-` headers become
        attributes, bytes are decoded leniently, other headers have nowhere to go."""
        attributes = {"type": _text(event_type)} if event_type is not None else {}
        for name, value in (headers or {}).items():
            text = _text(name)
            if text.startswith("ce-"):
                attributes[text[3:]] = _text(value)
        memory_state(self._name).inject(
            stream, body, attributes, _text(key) if key is not None else None
        )


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
