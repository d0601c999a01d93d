"""Upcasting: stored events of an older schema version, rewritten on read.

    upcasters = Upcasters()

    @upcasters.register("order.created", 1)      # version 1 -> version 2
    def _(data: dict) -> dict:
        data["customer_id"] = data.pop("customer")
        return data

An event class declares its current version with `__schema_version__ = 2` (default 1).
Upcasters run in a chain, 1 -> 2 -> 3 ..., before the data is validated into that class;
the stored bytes are never changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Upcasters:
    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: `fn(data)` turns version `from_version` of `event_type` into the next."""

        def decorator(fn: Upcaster) -> Upcaster:
            key = (event_type, from_version)
            if key in self._steps:
                raise ValueError(f"an upcaster for {event_type} v{from_version} exists already")
            self._steps[key] = fn
            return fn

        return decorator

    def upcast(
        self, event_type: str, version: int, data: dict[str, Any], target: int
    ) -> dict[str, Any]:
        """Apply the chain from `version` up to `target`; a missing step is an error."""
        while version < target:
            step = self._steps.get((event_type, version))
            if step is None:
                raise LookupError(
                    f"no upcaster for {event_type} v{version} -> v{version + 1} "
                    f"(current version is {target})"
                )
            data = step(data)
            version += 1
        if version > target:
            raise LookupError(
                f"{event_type} v{version} is newer than the code's v{target}: deploy the "
                "newer event class before reading these events"
            )
        return data
