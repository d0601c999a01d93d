"""The read side: the order-views projection (customer summary, order details), the
notifications projection (the e-mails the notification service queues: on the bus through
a transactional handler, see `notifications`), and queries.

Every update is either per order (kept in order by the key) or a commutative counter per
customer, so the read model is the same whatever order different orders' events arrive
in: built from the bus or replayed from the store, the rows are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from eventbus.cqrs import NotFound, QueryBus
from eventbus.sourcing import Database, EventMeta, Projection, Transaction

from .events import OrderCreated, OrderDelivered, OrderEvent, OrderPaid, OrderShipped

RECENT_ORDERS = 5

order_views = Projection(
    "order-views",
    schema=[
        """CREATE TABLE IF NOT EXISTS customer_summaries (
            customer_id TEXT PRIMARY KEY,
            total_orders INTEGER NOT NULL,
            total_spent_cents BIGINT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS order_details (
            order_id TEXT PRIMARY KEY,
            customer_id TEXT NOT NULL,
            status TEXT NOT NULL,
            total_cents BIGINT NOT NULL,
            paid_cents BIGINT NOT NULL,
            carrier TEXT,
            tracking_number TEXT,
            placed_at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS order_details_customer ON order_details (customer_id)",
    ],
    tables=["customer_summaries", "order_details"],
)


@order_views.on
async def _created(event: OrderCreated, tx: Transaction) -> None:
    await tx.execute(
        "INSERT INTO order_details (order_id, customer_id, status, total_cents, paid_cents, "
        "placed_at) VALUES (?, ?, 'created', ?, 0, ?)",
        (event.order_id, event.customer_id, event.total_cents, event.placed_at),
    )
    await tx.execute(
        "INSERT INTO customer_summaries (customer_id, total_orders, total_spent_cents) "
        "VALUES (?, 1, 0) ON CONFLICT (customer_id) DO UPDATE SET "
        "total_orders = customer_summaries.total_orders + 1",
        (event.customer_id,),
    )


@order_views.on
async def _paid(event: OrderPaid, tx: Transaction) -> None:
    await tx.execute(
        "UPDATE order_details SET status = 'paid', paid_cents = ? WHERE order_id = ?",
        (event.amount_cents, event.order_id),
    )
    await tx.execute(
        "UPDATE customer_summaries SET total_spent_cents = total_spent_cents + ? "
        "WHERE customer_id = (SELECT customer_id FROM order_details WHERE order_id = ?)",
        (event.amount_cents, event.order_id),
    )


@order_views.on
async def _shipped(event: OrderShipped, tx: Transaction) -> None:
    await tx.execute(
        "UPDATE order_details SET status = 'shipped', carrier = ?, tracking_number = ? "
        "WHERE order_id = ?",
        (event.carrier, event.tracking_number, event.order_id),
    )


@order_views.on
async def _delivered(event: OrderDelivered, tx: Transaction) -> None:
    await tx.execute(
        "UPDATE order_details SET status = 'delivered' WHERE order_id = ?", (event.order_id,)
    )


# --- notifications: the e-mail the notification service sends ---------------------------------
# From the bus, the notification service writes these rows with a transactional handler
# (examples/orders/notifications.py), which also queues a `NotificationQueued` event in the
# same transaction; from the store, and to rebuild, this projection writes the same rows.

notifications = Projection(
    "notifications",
    schema=[
        """CREATE TABLE IF NOT EXISTS notification_recipients (
            order_id TEXT PRIMARY KEY,
            email TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS notifications (
            event_id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            recipient TEXT NOT NULL,
            subject TEXT NOT NULL,
            body TEXT NOT NULL
        )""",
    ],
    tables=["notification_recipients", "notifications"],
)


@dataclass(frozen=True, slots=True)
class Mail:
    """The e-mail of one order event."""

    order_id: str
    recipient: str
    subject: str
    body: str


def _compose(event: OrderEvent) -> tuple[str, str]:
    """The subject and body of the e-mail of `event`."""
    order_id = event.order_id
    if isinstance(event, OrderCreated):
        return (
            f"We received your order {order_id}",
            f"Thank you! Your order totals {event.total_cents / 100:.2f} EUR.",
        )
    if isinstance(event, OrderPaid):
        return (
            f"Payment received for order {order_id}",
            f"We received {event.amount_cents / 100:.2f} EUR (payment {event.payment_id}).",
        )
    if isinstance(event, OrderShipped):
        return (
            f"Order {order_id} is on its way",
            f"{event.carrier} tracking number: {event.tracking_number}.",
        )
    return f"Order {order_id} was delivered", "Enjoy! Tell us how we did."


async def record_mail(tx: Transaction, event: OrderEvent, event_id: str) -> Mail:
    """Write the e-mail of `event` (whose id is `event_id`) into `tx`; returns it. The
    `notifications` projection and the notification service's handler share it."""
    if isinstance(event, OrderCreated):
        await tx.execute(
            "INSERT INTO notification_recipients (order_id, email) VALUES (?, ?)",
            (event.order_id, event.email),
        )
    row = await tx.fetchone(
        "SELECT email FROM notification_recipients WHERE order_id = ?", (event.order_id,)
    )
    if row is None:  # order.created comes first per key; this is a foreign event
        raise NotFound(f"no recipient known for order {event.order_id}")
    subject, body = _compose(event)
    await tx.execute(
        "INSERT INTO notifications (event_id, order_id, recipient, subject, body) "
        "VALUES (?, ?, ?, ?, ?)",
        (event_id, event.order_id, row[0], subject, body),
    )
    return Mail(event.order_id, row[0], subject, body)


@notifications.on
async def _mail(event: OrderEvent, tx: Transaction, meta: EventMeta) -> None:
    await record_mail(tx, event, meta.id)


# --- queries ----------------------------------------------------------------------------------


class GetCustomerSummary(BaseModel):
    customer_id: str


class GetOrder(BaseModel):
    order_id: str


class ListCustomers(BaseModel):
    limit: int = 10


class ListNotifications(BaseModel):
    order_id: str | None = None
    limit: int = 100


_ORDER_COLUMNS = (
    "order_id, customer_id, status, total_cents, paid_cents, carrier, tracking_number, placed_at"
)


def _order(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip([c.strip() for c in _ORDER_COLUMNS.split(",")], row, strict=True))


def build_queries(db: Database) -> QueryBus:
    queries = QueryBus()

    @queries.handler
    async def customer_summary(query: GetCustomerSummary) -> dict[str, Any]:
        async with db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT total_orders, total_spent_cents FROM customer_summaries "
                "WHERE customer_id = ?",
                (query.customer_id,),
            )
            if row is None:
                raise NotFound(f"customer {query.customer_id!r} has no orders")
            recent = await tx.fetchall(
                f"SELECT {_ORDER_COLUMNS} FROM order_details WHERE customer_id = ? "
                "ORDER BY placed_at DESC, order_id DESC LIMIT ?",
                (query.customer_id, RECENT_ORDERS),
            )
        return {
            "customer_id": query.customer_id,
            "total_orders": int(row[0]),
            "total_spent_cents": int(row[1]),
            "recent_orders": [_order(r) for r in recent],
        }

    @queries.handler
    async def order(query: GetOrder) -> dict[str, Any]:
        async with db.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_ORDER_COLUMNS} FROM order_details WHERE order_id = ?",
                (query.order_id,),
            )
        if row is None:
            raise NotFound(f"order {query.order_id!r} is not in the read model (yet)")
        return _order(row)

    @queries.handler
    async def customers(query: ListCustomers) -> list[dict[str, Any]]:
        async with db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT customer_id, total_orders, total_spent_cents FROM customer_summaries "
                "ORDER BY total_spent_cents DESC, customer_id LIMIT ?",
                (query.limit,),
            )
        return [
            {"customer_id": r[0], "total_orders": int(r[1]), "total_spent_cents": int(r[2])}
            for r in rows
        ]

    @queries.handler
    async def mails(query: ListNotifications) -> list[dict[str, Any]]:
        sql = "SELECT event_id, order_id, recipient, subject, body FROM notifications"
        params: tuple[Any, ...] = ()
        if query.order_id is not None:
            sql += " WHERE order_id = ?"
            params = (query.order_id,)
        async with db.transaction() as tx:
            rows = await tx.fetchall(
                sql + " ORDER BY order_id, subject LIMIT ?", (*params, query.limit)
            )
        keys = ("event_id", "order_id", "recipient", "subject", "body")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    return queries


PROJECTIONS = (order_views, notifications)
