"""The Order aggregate: created -> paid -> shipped -> delivered, nothing else."""

from __future__ import annotations

import uuid

from eventbus.cqrs import DomainError, InvalidTransition
from eventbus.sourcing import Aggregate, applies
from eventbus.wire import now_rfc3339

from .events import OrderCreated, OrderDelivered, OrderPaid, OrderShipped


class WrongAmount(DomainError):
    code = "wrong_amount"


class Order(Aggregate, category="order"):
    status: str
    customer_id: str
    email: str
    total_cents: int

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.status = "new"
        self.customer_id = ""
        self.email = ""
        self.total_cents = 0

    # --- commands: validate, then record --------------------------------------------------

    def _require(self, action: str, *allowed: str) -> None:
        if self.status not in allowed:
            raise InvalidTransition(
                f"cannot {action} order {self.id}: it is {self.status}, "
                f"{action} needs {' or '.join(allowed)}"
            )

    def create(self, customer_id: str, email: str, total_cents: int) -> None:
        self._require("create", "new")
        if total_cents <= 0:
            raise WrongAmount(f"order {self.id}: total must be positive, got {total_cents}")
        self.record(
            OrderCreated(
                order_id=self.id,
                customer_id=customer_id,
                email=email,
                total_cents=total_cents,
                placed_at=now_rfc3339(),
            )
        )

    def pay(self, amount_cents: int) -> None:
        self._require("pay", "created")
        if amount_cents != self.total_cents:
            raise WrongAmount(
                f"order {self.id} totals {self.total_cents} cents, a payment of "
                f"{amount_cents} cents does not settle it"
            )
        self.record(
            OrderPaid(order_id=self.id, amount_cents=amount_cents, payment_id=uuid.uuid4().hex)
        )

    def ship(self, carrier: str) -> None:
        self._require("ship", "paid")
        self.record(
            OrderShipped(
                order_id=self.id, carrier=carrier, tracking_number=uuid.uuid4().hex[:12].upper()
            )
        )

    def deliver(self) -> None:
        self._require("deliver", "shipped")
        self.record(OrderDelivered(order_id=self.id))

    # --- appliers: the only place state changes -------------------------------------------

    @applies
    def _created(self, event: OrderCreated) -> None:
        self.status = "created"
        self.customer_id = event.customer_id
        self.email = event.email
        self.total_cents = event.total_cents

    @applies
    def _paid(self, event: OrderPaid) -> None:
        self.status = "paid"

    @applies
    def _shipped(self, event: OrderShipped) -> None:
        self.status = "shipped"

    @applies
    def _delivered(self, event: OrderDelivered) -> None:
        self.status = "delivered"
