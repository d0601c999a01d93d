"""`Harness`: what an adapter gives the conformance suite (Watermill-style universal tests).

Every adapter, ours and third parties' alike, subclasses `Harness` (a URL, and how a
foreign producer would publish on that broker) and runs the suite with it. Capability
flags (from the broker itself, `Capabilities`) skip what a broker honestly does not offer,
and nothing else.

A harness must give every test fresh broker names: tests build their own streams with
`unique()` so runs never see each other's events on a shared broker.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from eventbus import Capabilities, EventBus

#: every name `unique` made in this process
_MADE: set[str] = set()


def unique(prefix: str = "t") -> str:
    """A fresh stream or group name. It is remembered (`made_names`), so that a test
    session can delete, at its end, whatever a broker still holds named after it."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    _MADE.add(name)
    return name


def made_names() -> frozenset[str]:
    """Every name `unique` made in this process."""
    return frozenset(_MADE)


class Harness(ABC):
    #: a name for reports (`"kafka"`); the suite never branches on it
    name: str = ""

    @abstractmethod
    def url(self) -> str:
        """The EVENTBUS_URL of this broker for one test."""

    def bus(self, **options: Any) -> EventBus:
        """A bus on this broker; `options` are adapter options (`prefetch=...`)."""
        return EventBus(self.url(), **options)

    @property
    def capabilities(self) -> Capabilities:
        return self.bus().broker.capabilities

    @abstractmethod
    async def inject_raw(
        self,
        stream: str,
        event_type: str | bytes | None,
        body: bytes,
        key: str | bytes | None = None,
        *,
        headers: Mapping[str | bytes, str | bytes] | None = None,
    ) -> None:
        """Publish with the broker's own client, as a foreign producer would: the body and
        the event type (routing key / `ce_type` header) only, no other eventbus header.
        `event_type=None` sends no type at all (bad input). Bytes are sent as they are
        (invalid UTF-8 included); `headers` are extra transport headers, verbatim (a
        broker without transport headers, memory://, ignores those it cannot carry)."""

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Called before each test (after the broker is known to be reachable)."""

    async def teardown(self) -> None:  # noqa: B027 - optional hook
        """Called after each test: delete what the test declared, if the broker needs it."""
