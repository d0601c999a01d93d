"""The one workload every library runs: a ~100-byte JSON order event into a typed handler.

The curves (`benchmarks.curves`) vary it through a `Load`: a padded payload, several
consumer groups on one stream, or latencies counted rather than kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

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


class PaddedOrderPayload(OrderPayload):
    """The payload with `note`, the padding of the payload-size curve."""

    note: str


def make_event_class(stream: str, padded: bool = False) -> type[Event]:
    if padded:

        class PaddedOrderCreated(Event, stream=stream, type=TYPE):
            order_id: str
            customer_id: str
            total: float
            currency: str
            sent_ns: int
            note: str

        return PaddedOrderCreated

    class BenchOrderCreated(Event, stream=stream, type=TYPE):
        order_id: str
        customer_id: str
        total: float
        currency: str
        sent_ns: int

    return BenchOrderCreated


def payload_fields(i: int, pad: int = 0) -> dict[str, object]:
    """The fields of order `i`; `pad` > 0 adds a `note` of that many characters."""
    fields: dict[str, object] = {
        "order_id": f"o-{i:08d}",
        "customer_id": f"c-{i % 1000:04d}",
        "total": 19.99 + i % 100,
        "currency": "EUR",
        "sent_ns": time.perf_counter_ns(),
    }
    if pad:
        fields["note"] = "x" * pad
    return fields


def sample_body() -> bytes:
    return OrderPayload(**payload_fields(0)).model_dump_json().encode()


class Latencies(Protocol):
    """Where a run puts the latency of every handled event: a list, or a `Tally`."""

    def append(self, latency_ns: int, /) -> None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...


class Tally:
    """Handled events counted, one latency in `every` kept: a sustained run of a million
    events must not measure its own list of latencies growing. Iterating gives the kept
    latencies (what the percentiles are taken from)."""

    def __init__(self, every: int = 1000) -> None:
        self.every = every
        self.count = 0
        self.kept: list[int] = []

    def append(self, latency_ns: int) -> None:
        self.count += 1
        if self.count % self.every == 0:
            self.kept.append(latency_ns)

    def clear(self) -> None:
        self.count = 0
        self.kept.clear()

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return iter(self.kept)


@dataclass(frozen=True)
class Load:
    """How a curve varies a run; the defaults are the standard workload."""

    #: characters of padding per payload (`PaddedOrderPayload.note`); 0: none
    pad: int = 0
    #: consumer groups subscribed to the stream, each receiving every event
    groups: int = 1
    #: where handled events go (the RSS curve's `Tally`); None: a list of every latency
    tally: Tally | None = field(default=None, compare=False)

    def group(self, index: int) -> str:
        """The name of the index-th group ("bench", "bench1", ...)."""
        return "bench" if index == 0 else f"bench{index}"

    def model(self) -> type[OrderPayload]:
        """What the raw loops validate into."""
        return PaddedOrderPayload if self.pad else OrderPayload

    def latencies(self) -> Latencies:
        """What a run appends latencies to."""
        return self.tally if self.tally is not None else []


#: the standard workload: ~100 B payloads, one group, every latency kept
STANDARD = Load()
