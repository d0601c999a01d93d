"""`python -m tests.clusters.member URL STREAM GROUP`: one member of a consuming group as
an OS process of its own, for the scenario that SIGKILLs consumers (`test_consumer_kills`).

It handles the `order.created` events of `tests/clusters/load.py` (concurrency 8, per-key
order) and writes `<time.monotonic()> <key> <n>` to stdout for each, one `write` of a whole
line before the handler returns: a line seen by the test means the handler ran, and an
event whose line is not seen was not acknowledged. Prints `member: running` once its bus started;
stops gracefully on SIGTERM. Adapter options come from the environment (`EVENTBUS_*`).

No `from __future__ import annotations`: the handler's annotation is read at subscribe
time.
"""

import asyncio
import os
import signal
import sys
import time

from eventbus import Envelope, EventBus


async def member(url: str, stream: str, group: str) -> None:
    bus = EventBus(url)

    @bus.subscribe(stream, "order.created", group=group, concurrency=8)
    async def handle(envelope: Envelope) -> None:
        os.write(1, f"{time.monotonic()} {envelope.key} {envelope.data['n']}\n".encode())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with bus:
        os.write(1, b"member: running\n")
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(member(*sys.argv[1:4]))
