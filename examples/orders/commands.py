"""Commands and their handlers: load the Order, run the command, save through the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from pydantic import BaseModel, Field

from eventbus.cqrs import CommandBus
from eventbus.errors import ConcurrencyError
from eventbus.sourcing import EventCodec, EventStore, Repository

from .aggregate import Order
from .events import ORDER_EVENTS, NotificationQueued, upcasters


class CreateOrder(BaseModel):
    customer_id: str = Field(min_length=1, max_length=100)
    email: str = Field(min_length=3, max_length=200)
    total_cents: int
    order_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])


class _Change(BaseModel):
    #: optimistic concurrency: fail with a conflict unless the order is at this version
    expected_version: int | None = None


class Payment(_Change):
    """The body of POST /orders/{id}/pay."""

    amount_cents: int


class Shipment(_Change):
    """The body of POST /orders/{id}/ship."""

    carrier: str = "DHL"


class Delivery(_Change):
    """The body of POST /orders/{id}/deliver."""


class PayOrder(Payment):
    order_id: str


class ShipOrder(Shipment):
    order_id: str


class DeliverOrder(Delivery):
    order_id: str


class OrderResult(BaseModel):
    order_id: str
    status: str
    version: int


def order_codec() -> EventCodec:
    """The codec of every event the order system stores: the order events and the
    notifications queued (the relay decodes both to publish them)."""
    return EventCodec((*ORDER_EVENTS, NotificationQueued), upcasters=upcasters)


def order_repository(store: EventStore, *, snapshot_every: int = 0) -> Repository[Order]:
    return Repository(store, Order, order_codec(), snapshot_every=snapshot_every)


def build_commands(repo: Repository[Order], *, retries: int = 3) -> CommandBus:
    """The command bus. Without `expected_version` a lost race is retried on fresh state
    (the retry may then be an invalid transition); with it, the conflict is reported."""
    commands = CommandBus()

    async def run(
        order_id: str, expected: int | None, action: Callable[[Order], None]
    ) -> OrderResult:
        for attempt in range(retries + 1):
            order = await repo.get(order_id)
            if expected is not None and order.version != expected:
                raise ConcurrencyError(
                    f"order {order_id} is at version {order.version}, not {expected}"
                )
            action(order)
            try:
                await repo.save(order)
            except ConcurrencyError:
                if expected is not None or attempt == retries:
                    raise
                continue
            return OrderResult(order_id=order.id, status=order.status, version=order.version)
        raise AssertionError("unreachable")

    @commands.handler
    async def create(command: CreateOrder) -> OrderResult:
        order = await repo.load(command.order_id)
        order.create(command.customer_id, command.email, command.total_cents)
        await repo.save(order)
        return OrderResult(order_id=order.id, status=order.status, version=order.version)

    @commands.handler
    async def pay(command: PayOrder) -> OrderResult:
        return await run(
            command.order_id, command.expected_version, lambda o: o.pay(command.amount_cents)
        )

    @commands.handler
    async def ship(command: ShipOrder) -> OrderResult:
        return await run(
            command.order_id, command.expected_version, lambda o: o.ship(command.carrier)
        )

    @commands.handler
    async def deliver(command: DeliverOrder) -> OrderResult:
        return await run(command.order_id, command.expected_version, lambda o: o.deliver())

    return commands
