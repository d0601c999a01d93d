"""The README's FastAPI example, runnable: `uvicorn examples.fastapi_app:app`.

POST /orders publishes `OrderPlaced`; the `shipping` handler logs it with the request's
correlation id. `/docs` is the OpenAPI page, `/healthz` and `/readyz` the probes. The
broker is configuration only (`EVENTBUS_URL`, default memory://).

    curl -s -X POST localhost:8000/orders -H 'X-Correlation-ID: checkout-42' \\
         -H 'Content-Type: application/json' -d '{"order_id": "o-1", "total_cents": 1200}'
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from eventbus import Context, Event, EventBus
from eventbus.fastapi import (
    BusDep,
    CorrelationIdMiddleware,
    PublisherDep,
    health_router,
    lifespan,
)
from eventbus.log import get_logger

log = get_logger()


class OrderPlaced(Event, stream="shop", type="order.placed"):
    order_id: str
    total_cents: int


class RefundRequested(Event, stream="shop", type="refund.requested"):
    order_id: str


class NewOrder(BaseModel):
    order_id: str
    total_cents: int


bus = EventBus()  # EVENTBUS_URL, default memory://

#: what the handlers saw: (event type, order id, correlation id)
seen: list[tuple[str, str, str | None]] = []


@bus.subscribe(group="shipping")
async def ship(event: OrderPlaced, ctx: Context) -> None:
    seen.append((ctx.envelope.type, event.order_id, ctx.envelope.correlation_id))
    log.info("order.shipping", order_id=event.order_id, correlation_id=ctx.envelope.correlation_id)


@bus.subscribe(group="refunds")
async def refund(event: RefundRequested, ctx: Context) -> None:
    seen.append((ctx.envelope.type, event.order_id, ctx.envelope.correlation_id))


app = FastAPI(title="shop", lifespan=lifespan(bus))  # the bus starts and stops with the app
app.add_middleware(CorrelationIdMiddleware)  # X-Correlation-ID: in, out, onto events
app.include_router(health_router())  # GET /healthz, GET /readyz


@app.post("/orders", status_code=202)
async def place(order: NewOrder, bus: BusDep) -> dict[str, str]:
    envelope = await bus.publish(
        OrderPlaced(order_id=order.order_id, total_cents=order.total_cents), key=order.order_id
    )
    return {"event_id": envelope.id}


@app.post("/orders/{order_id}/refund", status_code=202)
async def request_refund(order_id: str, publisher: PublisherDep) -> None:
    await publisher.publish(RefundRequested(order_id=order_id), key=order_id)
