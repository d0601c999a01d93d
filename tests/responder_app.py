"""`eventbus run tests.responder_app:bus`: a responder in a process of its own, for the
request/reply tests of RabbitMQ and Kafka. The broker and stream come from
`EVENTBUS_URL` and `RESPONDER_STREAM`.

It answers `order.get` with an `OrderView` naming its process id; an order id starting
with `missing` is a `NotFound` (a domain error: the caller gets `RequestFailed`)."""

import os

from eventbus import EventBus, NotFound

from .responder import OrderView, query_class

GetOrder = query_class(os.environ["RESPONDER_STREAM"])

bus = EventBus()


@bus.responder(group="orders-api", concurrency=4)
async def get(query: GetOrder) -> OrderView:  # type: ignore[valid-type]
    order_id: str = query.order_id  # type: ignore[attr-defined]
    if order_id.startswith("missing"):
        raise NotFound(f"order {order_id} does not exist")
    return OrderView(order_id=order_id, total=2 * query.n, pid=os.getpid())  # type: ignore[attr-defined]
