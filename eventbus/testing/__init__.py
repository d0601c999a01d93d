"""Helpers for users' own tests on the embedded broker.

bus = EventBus("memory://")            # in tests: the real contract, in-process
async with bus:
    await bus.publish(OrderCreated(...))
    await drain(bus)                    # every handler (and what it published) ran
    assert charged == [...]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..bus import EventBus


@runtime_checkable
class _Drainable(Protocol):
    async def wait_idle(self, timeout: float = 10.0) -> None: ...


async def drain(bus: EventBus, timeout: float = 10.0) -> None:
    """Wait until the bus's broker has no event queued, in flight or waiting for a delayed
    retry (events published by handlers included). Raises TimeoutError after `timeout`.

    Works on brokers that can tell (`memory://`); on RabbitMQ or Kafka, wait for the
    effect you expect instead.
    """
    broker = bus.broker
    if not isinstance(broker, _Drainable):
        raise TypeError(
            f"drain() needs a broker that can tell when it is idle (memory://), not "
            f"{type(broker).__name__}"
        )
    await broker.wait_idle(timeout)
