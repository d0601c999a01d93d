"""A consumer process for the kill tests:
`python -m tests.rabbitmq.consumer_app STREAM LOG [PARTITIONS]`.

It appends each handled order id to LOG (one line each, flushed) and, on the order id
"hang", writes "hanging" and blocks forever inside the handler, so the test can SIGKILL it
mid-handler. With PARTITIONS it joins the group as a member of `partitions=PARTITIONS`.
"""

import asyncio
import sys
from pathlib import Path
from typing import Any

from eventbus import Event, EventBus

from .support import URL


def main(stream: str, log_path: str, partitions: int | None) -> None:
    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    log = Path(log_path).open("a", buffering=1)  # noqa: SIM115 - lives as long as the process
    bus = EventBus(URL, prefetch=10)
    options: dict[str, Any] = {} if partitions is None else {"partitions": partitions}

    @bus.subscribe(group="workers", **options)
    async def handle(event: Created) -> None:
        if event.order_id == "hang":
            log.write("hanging\n")
            await asyncio.Event().wait()
        log.write(event.order_id + "\n")

    asyncio.run(bus.run())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
