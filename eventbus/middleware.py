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

from .broker import Message
from .context import Context, current_context

HandleNext = Callable[[Context], Awaitable[None]]
HandleMiddleware = Callable[[Context, HandleNext], Awaitable[None]]
PublishNext = Callable[[Message], Awaitable[None]]
PublishMiddleware = Callable[[Message, PublishNext], Awaitable[None]]


async def correlate(message: Message, call_next: PublishNext) -> None:
    """Events published while handling another carry its correlation and causation ids.

    The pipeline makes the handler's `Context` current (`current_context`) while it runs.
    """
    ctx = current_context.get()
    if ctx is not None:
        attrs = message.attributes
        if "causationid" not in attrs:
            attrs["causationid"] = ctx.envelope.id
        if "correlationid" not in attrs:
            attrs["correlationid"] = ctx.envelope.correlation_id or ctx.envelope.id
    await call_next(message)


def chain_handle(middleware: Sequence[HandleMiddleware], endpoint: HandleNext) -> HandleNext:
    call = endpoint
    for mw in reversed(middleware):
        call = _bind_handle(mw, call)
    return call


def _bind_handle(mw: HandleMiddleware, nxt: HandleNext) -> HandleNext:
    async def step(ctx: Context) -> None:
        await mw(ctx, nxt)

    return step


def chain_publish(middleware: Sequence[PublishMiddleware], endpoint: PublishNext) -> PublishNext:
    call = endpoint
    for mw in reversed(middleware):
        call = _bind_publish(mw, call)
    return call


def _bind_publish(mw: PublishMiddleware, nxt: PublishNext) -> PublishNext:
    async def step(message: Message) -> None:
        await mw(message, nxt)

    return step
