"""Helpers shared by the conformance tests: per-test event classes and waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from eventbus import Event, EventBus


async def until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Wait until `condition()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


async def settle(seconds: float = 0.3) -> None:
    """Give a broker time to deliver anything it still would (used for 'no more' checks)."""
    await asyncio.sleep(seconds)


@dataclass
class Events:
    """Event classes on one fresh stream (tests never share a stream)."""

    stream: str
    Created: type[Event]
    Paid: type[Event]
    Shipped: type[Event]
    Noted: type[Event]


def make_events(stream: str) -> Events:
    class Created(Event, stream=stream, type="order.created"):
        order_id: str
        n: int = 0
        total: float = 0.0

    class Paid(Event, stream=stream, type="order.paid"):
        order_id: str
        n: int = 0

    class Shipped(Event, stream=stream, type="order.shipped"):
        order_id: str
        n: int = 0

    class Noted(Event, stream=stream, type="order.note.added"):
        order_id: str
        n: int = 0

    return Events(stream, Created, Paid, Shipped, Noted)


async def dead_letters(bus: EventBus, stream: str, group: str) -> list[Any]:
    return [d async for d in bus.dead_letters(stream, group)]


async def wait_dead(
    bus: EventBus, stream: str, group: str, count: int, timeout: float = 30.0
) -> list[Any]:
    """Wait until the group has at least `count` dead letters; return them (oldest first)."""
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        found[:] = await dead_letters(bus, stream, group)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} dead letters, found {len(found)}")
        await asyncio.sleep(0.05)
