import asyncio

import pytest

from eventbus import BusClosed, Context, Event, EventBus, HandleNext, Message, PublishNext


class Ping(Event, stream="mw", type="ping.sent"):
    n: int


async def test_handle_and_publish_middleware_wrap_in_order() -> None:
    calls: list[str] = []
    got: list[tuple[int, str]] = []

    async def outer(ctx: Context, call_next: HandleNext) -> None:
        calls.append(f"outer-before:{ctx.envelope.type}")
        await call_next(ctx)
        calls.append("outer-after")

    async def inner(ctx: Context, call_next: HandleNext) -> None:
        calls.append("inner-before")
        await call_next(ctx)
        calls.append("inner-after")

    async def tenant(message: Message, call_next: PublishNext) -> None:
        message.attributes["tenant"] = "acme"
        await call_next(message)

    bus = EventBus("memory://mw1", middleware=[outer, inner], publish_middleware=[tenant])

    @bus.subscribe(group="g")
    async def handle(event: Ping, ctx: Context) -> None:
        calls.append("handler")
        got.append((event.n, ctx.envelope.extensions["tenant"]))

    async with bus:
        await bus.publish(Ping(n=1))
        await bus.publish_many([Ping(n=2)])
        for _ in range(500):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
    assert sorted(got) == [(1, "acme"), (2, "acme")]
    assert calls[:6] == [
        "outer-before:ping.sent",
        "inner-before",
        "handler",
        "inner-after",
        "outer-after",
        "outer-before:ping.sent",
    ]


async def test_middleware_sees_handler_failures() -> None:
    seen: list[str] = []

    async def record(ctx: Context, call_next: HandleNext) -> None:
        try:
            await call_next(ctx)
        except Exception as exc:
            seen.append(f"{ctx.attempt}:{exc}")
            raise

    bus = EventBus("memory://mw2", middleware=[record])

    @bus.subscribe(group="g")
    async def handle(event: Ping, ctx: Context) -> None:
        if ctx.attempt < 2:
            raise RuntimeError("once")

    async with bus:
        await bus.publish(Ping(n=1))
        for _ in range(500):
            if seen:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    assert seen == ["1:once"]


async def test_publish_on_a_stopped_bus_is_a_clear_error() -> None:
    bus = EventBus("memory://mw3")
    with pytest.raises(BusClosed, match="async with bus"):
        await bus.publish(Ping(n=1))
    with pytest.raises(BusClosed):
        await bus.publish_many([Ping(n=1)])
