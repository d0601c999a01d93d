"""The one workload every library runs: a ~100-byte JSON order event into a typed handler."""

from __future__ import annotations

import time

from pydantic import BaseModel

from eventbus import Event

STREAM = "bench"
TYPE = "bench.order.created"


class OrderPayload(BaseModel):
    """The payload as plain pydantic (what the raw loops and FastStream validate into)."""

    order_id: str
    customer_id: str
    total: float
    currency: str
    sent_ns: int


def make_event_class(stream: str) -> type[Event]:
    class BenchOrderCreated(Event, stream=stream, type=TYPE):
        order_id: str
        customer_id: str
        total: float
        currency: str
        sent_ns: int

    return BenchOrderCreated


def payload_fields(i: int) -> dict[str, object]:
    return {
        "order_id": f"o-{i:08d}",
        "customer_id": f"c-{i % 1000:04d}",
        "total": 19.99 + i % 100,
        "currency": "EUR",
        "sent_ns": time.perf_counter_ns(),
    }


def sample_body() -> bytes:
    return OrderPayload(**payload_fields(0)).model_dump_json().encode()
