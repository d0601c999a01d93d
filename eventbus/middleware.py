"""Middleware: plain async callables around handling and publishing (Starlette-style).

    async def timing(ctx: Context, call_next: HandleNext) -> None:
        started = time.perf_counter()
        await call_next(ctx)
        metrics.observe(ctx.envelope.type, time.perf_counter() - started)

    bus = EventBus(middleware=[timing])

A publish middleware receives the outgoing `Message` and may change its attributes:

    async def tenant(message: Message, call_next: PublishNext) -> None:
        message.attributes["tenant"] = current_tenant()
        await call_next(message)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from .context import correlate_attributes
from .types import Next, PublishNext, T

if TYPE_CHECKING:
    from .protocol import Message


async def correlate(message: Message, call_next: PublishNext) -> None:
    """Events published while handling another carry its correlation and causation ids.

    The pipeline makes the handler's `Context` current (`current_context`) while it runs.
    """
    correlate_attributes(message.attributes)
    await call_next(message)


def chain(
    middleware: Sequence[Callable[[T, Next[T]], Awaitable[None]]], endpoint: Next[T]
) -> Next[T]:
    """Wrap `endpoint` in `middleware`, the first outermost."""
    call = endpoint
    for mw in reversed(middleware):
        call = _bind(mw, call)
    return call


def _bind(mw: Callable[[T, Next[T]], Awaitable[None]], nxt: Next[T]) -> Next[T]:
    async def step(value: T) -> None:
        await mw(value, nxt)

    return step
