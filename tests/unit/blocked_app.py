"""A service whose sync handler never returns: `eventbus run` must still exit on SIGTERM."""

import sys
import threading
import time

from eventbus import Event, EventBus, SyncPublisher


class Job(Event, stream="jobs", type="job.requested"):
    name: str


bus = EventBus("memory://blocked-app", shutdown_timeout=0.5)
forever = threading.Event()


@bus.subscribe(group="workers")
def work(job: Job) -> None:
    print(f"started {job.name}", flush=True)
    forever.wait()  # never set


def _feed() -> None:
    time.sleep(0.5)  # the bus subscribes first (memory groups exist once subscribed)
    with SyncPublisher("memory://blocked-app") as publisher:
        publisher.publish(Job(name="stuck"))
    print("published", file=sys.stderr, flush=True)


threading.Thread(target=_feed, daemon=True).start()
