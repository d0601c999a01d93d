"""A tiny service for the CLI test: `eventbus run tests.unit.cli_app:bus`."""

import asyncio
import sys
import threading
import time

from eventbus import Event, EventBus, SyncPublisher


class Job(Event, stream="jobs", type="job.requested"):
    name: str


bus = EventBus("memory://cli-app")


@bus.subscribe(group="workers")
async def work(job: Job) -> None:
    print(f"started {job.name}", flush=True)
    await asyncio.sleep(1.5)
    print(f"finished {job.name}", flush=True)


def _feed() -> None:
    time.sleep(0.5)  # the bus subscribes first (memory groups exist once subscribed)
    with SyncPublisher("memory://cli-app") as publisher:
        publisher.publish(Job(name="one"))
    print("published", file=sys.stderr, flush=True)


threading.Thread(target=_feed, daemon=True).start()
