"""Consume-transform-produce on Kafka: every order read from one topic becomes an invoice
on another, through `ctx.publish`. Exactly-once (`exactly_once=True`: the invoices and the
offsets commit in one transaction per `transaction_interval_ms`) beside the same handler
at-least-once (invoices produced at once, offsets committed every 500 ms), and with a
longer transaction interval: the cost of exactly-once, and what batching buys back.

The orders are produced before the run (not measured); a run is timed from the first
order handled to the bus stopped (its last commit included)."""

import asyncio
import time
import uuid
from functools import partial
from typing import Any

from eventbus import Context, Event, EventBus
from eventbus.adapters.kafka import KafkaSubscription

from .core import Scenario, Stopwatch, metrics_of
from .kafka import PARTITIONS, _delete, _raw_produce, _raw_producer, _topic
from .servers import KAFKA_BOOTSTRAP
from .workload import make_event_class

#: handlers at a time (the orders have 64 keys): at-least-once awaits each invoice's
#: delivery report in its handler, so it needs them to keep the producer busy
CONCURRENCY = 64


async def transform_run(count: int, exactly_once: bool, interval_ms: int = 100) -> dict[str, float]:
    source = _topic()
    out = f"bench{uuid.uuid4().hex[:8]}-invoices"
    order_class = make_event_class(source)

    class Invoice(Event, stream=out, type="bench.invoice"):
        order_id: str
        total: float

    producer = await asyncio.to_thread(_raw_producer, source)
    await asyncio.to_thread(_raw_produce, producer, source, count - 1, None, "CloudEvents")
    bus = EventBus(f"kafka://{KAFKA_BOOTSTRAP}", transaction_interval_ms=interval_ms)
    handled = 0
    first = 0.0
    done = asyncio.Event()
    watch = Stopwatch()  # restarted at the first handled event, as the throughput is

    @bus.subscribe(group="bench-transform", exactly_once=exactly_once, concurrency=CONCURRENCY)
    async def transform(event: order_class, ctx: Context) -> None:  # type: ignore[valid-type]
        nonlocal handled, first
        if not handled:
            watch.restart()  # reads the broker's clock first: not inside the stretch
            first = time.perf_counter()
        await ctx.publish(
            Invoice(order_id=event.order_id, total=event.total),  # type: ignore[attr-defined]
            key=ctx.envelope.key,
        )
        handled += 1
        if handled >= count:
            done.set()

    try:
        await bus.start()
        [subscription] = bus._consumers
        assert isinstance(subscription, KafkaSubscription)
        txn = subscription.consumer.transactions
        await asyncio.wait_for(done.wait(), 600)
        await bus.stop()
        metrics: dict[str, Any] = metrics_of(count, time.perf_counter() - first, watch=watch.stop())
        if txn is not None and txn.committed:  # after the stop: its last commit counts
            metrics["records_per_transaction"] = txn.records / txn.committed
        return metrics
    finally:
        await bus.stop()
        await asyncio.to_thread(_delete, source, out)


def scenarios(quick: bool) -> list[Scenario]:
    count = 5_000 if quick else 50_000
    return [
        Scenario(
            "kafka",
            "consume-transform-produce",
            f"{count:,} orders -> handler -> ctx.publish(invoice), {PARTITIONS} partitions, "
            f"concurrency {CONCURRENCY}; eventbus = exactly_once=True, 100 ms transactions",
            {
                "eventbus": partial(transform_run, count, True),
                "eventbus, at-least-once": partial(transform_run, count, False),
                "eventbus, exactly_once, 1 s transactions": partial(
                    transform_run, count, True, 1000
                ),
            },
        )
    ]
