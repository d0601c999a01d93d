"""A consumer process for the crash test (`python -m tests.kafka.crash_consumer STREAM GROUP
OUT`): handles `tick` events and appends `partition offset n` to OUT after each one."""

import asyncio
import os
import sys

from eventbus import Context, Event, EventBus

from .harness import KAFKA_URL


def main(stream: str, group: str, out: str) -> None:
    class Tick(Event, stream=stream, type="tick"):
        n: int

    # a short session so that the restarted consumer gets the partitions of this one soon
    bus = EventBus(
        KAFKA_URL,
        consumer_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @bus.subscribe(group=group, concurrency=4)
    async def handle(event: Tick, ctx: Context) -> None:
        await asyncio.sleep(0.001)
        os.write(fd, f"{ctx.partition} {ctx.offset} {event.n}\n".encode())

    asyncio.run(bus.run())


if __name__ == "__main__":
    main(*sys.argv[1:4])
