"""`eventbus run tests.operations.service_app:bus --http ...`: a service for the operations
tests. Orders whose id starts with `poison` fail (dead-lettered at once); the others are
handled (each logged as `service.handled`). The broker and stream come from `EVENTBUS_URL`
and `SERVICE_STREAM`."""

import os

import structlog

from eventbus import Event, EventBus, RetryPolicy

STREAM = os.environ["SERVICE_STREAM"]


class Order(Event, stream=STREAM, type="order.placed"):
    order_id: str


bus = EventBus(backlog_interval=1)


@bus.subscribe(group="service", retry=RetryPolicy(attempts=1))
async def handle(order: Order) -> None:
    if order.order_id.startswith("poison"):
        raise ValueError(f"cannot process {order.order_id}")
    structlog.get_logger().info("service.handled", order_id=order.order_id)
