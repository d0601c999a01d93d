"""The service `benchmarks/workers.py` runs under `eventbus run --workers N`: one group on
the topic `$EVENTBUS_BENCH_WORKERS_TOPIC`, whose handler spends about 0.1 ms of CPU per
order (a handler that computes something: the work worker processes spread over cores).

No `from __future__ import annotations`: the handler is annotated with a class made here.
"""

import os

from eventbus import EventBus

from .workload import make_event_class

TOPIC = os.environ.get("EVENTBUS_BENCH_WORKERS_TOPIC", "bench-workers")
Order = make_event_class(TOPIC)
#: loop iterations of the handler's work (about 0.1 ms on this machine)
WORK = 2000

bus = EventBus()


@bus.subscribe(group="bench-workers")
async def handle(order: Order) -> None:  # type: ignore[valid-type]
    total = 0
    for i in range(WORK):
        total += i * i
    if total < 0:  # never: keeps the loop from being optimised away by a reader
        raise AssertionError(total)
