import asyncio

import pytest

from eventbus import Context, Event, EventBus, RetryPolicy
from eventbus.testing import drain


class Placed(Event, stream="shop", type="order.placed"):
    order_id: str


class Charged(Event, stream="shop", type="order.charged"):
    order_id: str


async def test_drain_waits_for_handlers_and_what_they_publish() -> None:
    charged: list[str] = []
    notified: list[str] = []
    bus = EventBus("memory://drain1")

    @bus.subscribe(group="billing", retry=RetryPolicy(attempts=3, backoff=0.05))
    async def charge(event: Placed, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("flaky")
        await asyncio.sleep(0.02)
        charged.append(event.order_id)
        await ctx.publish(Charged(order_id=event.order_id))

    @bus.subscribe(group="mail")
    async def notify(event: Charged) -> None:
        await asyncio.sleep(0.02)
        notified.append(event.order_id)

    async with bus:
        for n in range(5):
            await bus.publish(Placed(order_id=f"o{n}"), key=f"o{n}")
        await drain(bus)
        assert sorted(charged) == sorted(notified) == [f"o{n}" for n in range(5)]


async def test_drain_times_out_on_a_stuck_handler() -> None:
    bus = EventBus("memory://drain2", shutdown_timeout=0.1)

    @bus.subscribe(group="g")
    async def stuck(event: Placed) -> None:
        await asyncio.sleep(3600)

    async with bus:
        await bus.publish(Placed(order_id="x"))
        with pytest.raises(TimeoutError):
            await drain(bus, timeout=0.2)
