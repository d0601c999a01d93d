"""The order events: stream `orders`, keyed by order id. Amounts are integer cents. And the
event of the notification service: `NotificationQueued`, on stream `notifications`."""

from __future__ import annotations

from typing import Any

from eventbus.event import Event, validate_name
from eventbus.sourcing import Upcasters


class OrderCreated(Event, stream="orders", type="order.created"):
    #: v1 had `customer` and `total` (a float in euros) and no e-mail address
    __schema_version__ = 2

    order_id: str
    customer_id: str
    email: str
    total_cents: int
    placed_at: str


class OrderPaid(Event, stream="orders", type="order.paid"):
    order_id: str
    amount_cents: int
    payment_id: str


class OrderShipped(Event, stream="orders", type="order.shipped"):
    order_id: str
    carrier: str
    tracking_number: str


class OrderDelivered(Event, stream="orders", type="order.delivered"):
    order_id: str


ORDER_EVENTS: tuple[type[Event], ...] = (OrderCreated, OrderPaid, OrderShipped, OrderDelivered)
#: what the notification service handles (its handler's annotation)
OrderEvent = OrderCreated | OrderPaid | OrderShipped | OrderDelivered


class NotificationQueued(Event, stream="notifications", type="notification.queued"):
    """The notification service wrote an e-mail for an order event (committed in the same
    transaction as its row); the mailer sends it. Keyed by order id; its causation id is
    the order event's id."""

    order_id: str
    recipient: str
    subject: str


def use_stream(name: str) -> None:
    """Publish and read the order events on another stream than `orders` (set before any
    service starts; `ORDERS_STREAM`), and the notifications on `<name>-notifications`
    (`notifications` for `orders`). Lets several systems share one broker."""
    validate_name("stream", name)
    for cls in ORDER_EVENTS:
        cls.__stream__ = name
    NotificationQueued.__stream__ = "notifications" if name == "orders" else f"{name}-notifications"


upcasters = Upcasters()


@upcasters.register("order.created", 1)
def _created_v1(data: dict[str, Any]) -> dict[str, Any]:
    customer = data.pop("customer")
    return {
        **data,
        "customer_id": customer,
        "email": f"{customer}@example.com",
        "total_cents": round(float(data.pop("total")) * 100),
    }
