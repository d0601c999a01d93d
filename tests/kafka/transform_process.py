"""The transform process of the exactly-once crash proof
(`python -m tests.kafka.transform_process MODE STREAM OUT GROUP PROGRESS`): reads `order`
events, publishes one `invoice` per order through `ctx.publish`, and appends the order's
number to PROGRESS after each handled order. MODE `eos` subscribes with
`exactly_once=True` (a stable transactional id: a restarted process fences the killed
one at once); `plain` without it (at-least-once: the proof's baseline)."""

import asyncio
import os
import sys
from typing import Any

from eventbus import Context, Event, EventBus

from .harness import KAFKA_URL


def main(mode: str, stream: str, out: str, group: str, progress: str) -> None:
    class Order(Event, stream=stream, type="order"):
        key: str
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        key: str
        n: int

    # a short session: the restarted process gets the killed one's partitions soon
    bus = EventBus(
        KAFKA_URL,
        consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        transaction_timeout=15.0,
    )
    fd = os.open(progress, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    eos = mode == "eos"
    options: dict[str, Any] = {"transactional_id": f"{group}-transform"} if eos else {}

    @bus.subscribe(group=group, concurrency=4, exactly_once=eos, **options)
    async def transform(event: Order, ctx: Context) -> None:
        await ctx.publish(Invoice(key=event.key, n=event.n), key=event.key)
        os.write(fd, f"{event.n}\n".encode())

    asyncio.run(bus.run())


if __name__ == "__main__":
    main(*sys.argv[1:6])
