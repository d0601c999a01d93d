"""The app `eventbus run --workers N` runs in tests/unit/test_cli_workers.py and
tests/kafka/test_workers.py: a bus on `EVENTBUS_URL` with one subscription (stream
`$WORKERS_TEST_STREAM`, group `workers`), whose handler logs what it handled and in which
worker."""

import os

import structlog

from eventbus import Event, EventBus

STREAM = os.environ.get("WORKERS_TEST_STREAM", "workers-test")


class Ping(Event, stream=STREAM, type="ping"):
    n: int


bus = EventBus()


@bus.subscribe(group="workers")
async def handle(event: Ping) -> None:
    structlog.get_logger().info("test.handled", n=event.n, worker=os.environ.get("EVENTBUS_WORKER"))
