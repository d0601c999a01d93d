"""`Metrics`: the bus's counters and histograms, aggregated in process.

Recording is a dictionary update (well under a microsecond), so metrics cost nothing
measurable per event; exporters read the aggregates when they are collected: the
Prometheus endpoint (`eventbus.prometheus`) and the OpenTelemetry metrics API
(`eventbus.otel_metrics`). Gauges (in-flight handlers, backlog, connection state) are not
recorded at all: the exporters read them from `bus.health()` at collection time.

Label sets are bounded: stream, event type, group and outcome, never an event id. The type
of an event a subscription does not declare (a hostile producer may invent any) is counted
as `other` once a subscription has seen `MAX_TYPES` distinct types.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

#: upper bounds (seconds) of the duration histograms' buckets: 0.5 ms to 10 s
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: distinct event types per subscription before further unknown ones count as `other`
MAX_TYPES = 100

#: how a delivery ended (the `outcome` label of `eventbus_failed_total` is one of the
#: failure outcomes)
HANDLED = "handled"
SKIPPED = "skipped"
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
REJECTED = "rejected"
BAD_INPUT = "bad_input"
NACKED = "nacked"
FAILURES = (RETRIED, DEAD_LETTERED, REJECTED, BAD_INPUT)
_FINAL_FAILURES = (DEAD_LETTERED, REJECTED, BAD_INPUT)


class Histogram:
    """Fixed-bucket histogram: counts per bucket (the last one is +Inf), sum and count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) per bucket, the last bound being +Inf."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass(frozen=True, slots=True)
class Family:
    """What an exporter needs to describe one metric."""

    name: str
    kind: str  # counter | histogram | gauge
    unit: str
    labels: tuple[str, ...]
    help: str


PUBLISHED = Family(
    "eventbus_published",
    "counter",
    "",
    ("stream", "type"),
    "Events the broker confirmed as stored (publish returned).",
)
PUBLISH_ERRORS = Family(
    "eventbus_publish_errors",
    "counter",
    "",
    ("stream", "type"),
    "Publishes that raised (not confirmed, refused, unroutable, too large).",
)
PUBLISH_DURATION = Family(
    "eventbus_publish_duration_seconds",
    "histogram",
    "s",
    ("stream",),
    "Time from publish to the broker's confirm (per call; a publish_many counts one per chunk).",
)
HANDLED_TOTAL = Family(
    "eventbus_handled",
    "counter",
    "",
    ("stream", "type", "group"),
    "Events a handler finished successfully (acked).",
)
FAILED_TOTAL = Family(
    "eventbus_failed",
    "counter",
    "",
    ("stream", "type", "group", "outcome"),
    "Failed deliveries and attempts by outcome: retried (each failed attempt that is "
    "retried), dead_lettered (retries exhausted or not retryable), rejected (Reject), "
    "bad_input (undecodable, invalid, oversized).",
)
HANDLER_DURATION = Family(
    "eventbus_handler_duration_seconds",
    "histogram",
    "s",
    ("stream", "type", "group"),
    "Time from a delivery reaching its subscription to its settlement, retries included.",
)
IN_FLIGHT = Family(
    "eventbus_handlers_in_flight",
    "gauge",
    "",
    ("stream", "group"),
    "Deliveries being handled now.",
)
WAITING = Family(
    "eventbus_handlers_waiting",
    "gauge",
    "",
    ("stream", "group"),
    "Deliveries received and not started: behind an earlier delivery of their key, waiting "
    "for a free worker (concurrency=N), or collected for the next batch.",
)
BACKLOG = Family(
    "eventbus_backlog",
    "gauge",
    "",
    ("stream", "group", "source"),
    "Events waiting for a group: Kafka consumer lag per partition, RabbitMQ ready messages "
    "per queue (polled every EVENTBUS_BACKLOG_INTERVAL seconds).",
)
CONNECTED = Family(
    "eventbus_broker_connected",
    "gauge",
    "",
    (),
    "1 while the bus is connected to its broker.",
)
RECONNECTS = Family(
    "eventbus_broker_reconnects",
    "counter",
    "",
    (),
    "Times the connection to the broker was re-established.",
)
ATTACHED = Family(
    "eventbus_subscription_attached",
    "gauge",
    "",
    ("stream", "group"),
    "1 while the subscription's consumer is attached to the broker.",
)

REQUESTS = Family(
    "eventbus_requests",
    "counter",
    "",
    ("stream", "type", "outcome"),
    "Requests (bus.request) by outcome: replied (a value came back), failed (the responder "
    "answered with an error), timed_out (no reply in time).",
)
REQUEST_DURATION = Family(
    "eventbus_request_duration_seconds",
    "histogram",
    "s",
    ("stream", "type"),
    "Time from a request to its reply (replied and failed requests).",
)
REPLIES_DROPPED = Family(
    "eventbus_replies_dropped",
    "counter",
    "",
    ("reason",),
    "Replies dropped: late (its request had timed out), unmatched (no request of this bus "
    "waits for it), undeliverable (a responder could not send it).",
)

#: request outcomes (the `outcome` label of `eventbus_requests_total`)
REPLIED = "replied"
REQUEST_FAILED = "failed"
TIMED_OUT = "timed_out"

FAMILIES = (
    PUBLISHED, PUBLISH_ERRORS, PUBLISH_DURATION, HANDLED_TOTAL, FAILED_TOTAL,
    HANDLER_DURATION, IN_FLIGHT, WAITING, BACKLOG, CONNECTED, RECONNECTS, ATTACHED,
    REQUESTS, REQUEST_DURATION, REPLIES_DROPPED,
)  # fmt: skip


#: `hook(family, labels, seconds)`: sees every histogram observation
HistogramHook = Callable[[Family, tuple[str, ...], float], None]
Counts = dict[tuple[str, ...], int]
Histograms = dict[tuple[str, ...], Histogram]


class Metrics:
    """The recorded metrics of one bus (recorded on its event loop; the sync face records
    from its threads, where a dict update is atomic under the GIL)."""

    def __init__(self) -> None:
        self.published: Counts = {}
        self.publish_errors: Counts = {}
        self.publish_duration: Histograms = {}
        self.handled: Counts = {}
        self.failed: Counts = {}
        self.handler_duration: Histograms = {}
        #: request/reply: requests by outcome, their durations, replies dropped by reason
        self.requests: Counts = {}
        self.request_duration: Histograms = {}
        self.replies_dropped: Counts = {}
        self._hooks: list[HistogramHook] = []

    def add_histogram_hook(self, hook: HistogramHook) -> None:
        """Also hand every histogram observation to `hook(family, labels, value)` (the
        OpenTelemetry bridge: the OTel API has no asynchronous histogram)."""
        self._hooks.append(hook)

    def record_publish(self, stream: str, types: dict[str, int], seconds: float) -> None:
        """A publish call confirmed `types` (type -> number of events) in `seconds`."""
        published = self.published
        for etype, n in types.items():
            key = (stream, etype)
            published[key] = published.get(key, 0) + n
        self._observe(self.publish_duration, PUBLISH_DURATION, (stream,), seconds)

    def record_publish_error(self, stream: str, etype: str, n: int = 1) -> None:
        key = (stream, etype)
        self.publish_errors[key] = self.publish_errors.get(key, 0) + n

    def record_delivery(
        self, stream: str, etype: str, group: str, outcome: str, seconds: float
    ) -> None:
        """A delivery settled with `outcome` after `seconds`."""
        key = (stream, etype, group)
        if outcome == HANDLED:
            self.handled[key] = self.handled.get(key, 0) + 1
        elif outcome in _FINAL_FAILURES:  # retried attempts are counted as they fail
            self.record_failure(stream, etype, group, outcome)
        elif outcome == SKIPPED:
            return  # another subscription's type: not this handler's work
        self._observe(self.handler_duration, HANDLER_DURATION, key, seconds)

    def record_failure(self, stream: str, etype: str, group: str, outcome: str) -> None:
        key = (stream, etype, group, outcome)
        self.failed[key] = self.failed.get(key, 0) + 1

    def record_request(
        self, stream: str, etype: str, outcome: str, seconds: float | None = None
    ) -> None:
        """A request ended with `outcome`; `seconds` until its reply, if one came."""
        key = (stream, etype, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            self._observe(self.request_duration, REQUEST_DURATION, (stream, etype), seconds)

    def record_dropped_reply(self, reason: str) -> None:
        key = (reason,)
        self.replies_dropped[key] = self.replies_dropped.get(key, 0) + 1

    def _observe(
        self, table: Histograms, family: Family, labels: tuple[str, ...], seconds: float
    ) -> None:
        histogram = table.get(labels)
        if histogram is None:
            histogram = table[labels] = Histogram()
        histogram.observe(seconds)
        for hook in self._hooks:
            hook(family, labels, seconds)


class TypeLabels:
    """The `type` label of one subscription's deliveries, bounded (see the module doc)."""

    __slots__ = ("_declared", "_seen")

    def __init__(self, declared: frozenset[str] | None) -> None:
        self._declared = declared
        self._seen: set[str] = set()

    def __call__(self, etype: str | None) -> str:
        if not etype:
            return "none"
        if self._declared is not None:
            return etype if etype in self._declared else "other"
        seen = self._seen
        if etype in seen:
            return etype
        if len(seen) >= MAX_TYPES or len(etype) > 200:
            return "other"
        seen.add(etype)
        return etype
