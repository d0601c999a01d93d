"""`Health`: what `bus.health()` tells an operator, a readiness probe and the metrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    """One subscription: is its consumer attached, how busy is it, what waits for it."""

    stream: str
    group: str
    #: the consumer is attached to the broker (consuming its queues / a group member)
    attached: bool
    #: why not attached (or a note such as "no partitions assigned")
    detail: str = ""
    #: deliveries being handled now
    in_flight: int = 0
    #: deliveries received and not started (behind their key, waiting for a worker, or
    #: collected for the next batch): a hung handler shows here before it stops fetching
    waiting: int = 0
    #: unix time a handler last finished a delivery of this subscription
    last_handled: float | None = None
    #: events waiting per source (Kafka `topic[partition]` lag, RabbitMQ queue), as of
    #: the last poll (`EVENTBUS_BACKLOG_INTERVAL`); None if not known
    backlog: dict[str, int] | None = None

    @property
    def name(self) -> str:
        return f"{self.stream}/{self.group}"


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of the bus's state.

    `problems` maps a component (`"orders/billing: dead letter"`) to what is wrong with it
    now; a problem disappears once it is resolved (a dead letter that could not be stored
    is retried until it is). `failure` is why the bus stopped itself (a consumer died),
    if it did. `ok` is the readiness verdict: running, connected, every subscription
    attached, no problem; `reasons` says what is missing.
    """

    running: bool
    problems: dict[str, str] = field(default_factory=dict)
    failure: str | None = None
    #: the broker URL, password masked
    broker: str = ""
    connected: bool = True
    #: why not connected (the last connection error), or a note from the adapter
    detail: str = ""
    #: times the connection came back since the bus started
    reconnects: int = 0
    #: unix time of the last confirmed publish of this bus
    last_published: float | None = None
    subscriptions: tuple[SubscriptionHealth, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.reasons()

    def reasons(self) -> list[str]:
        """Why the bus is not ready, one line per reason (empty when it is)."""
        reasons: list[str] = []
        if self.failure is not None:
            reasons.append(f"failed: {self.failure}")
        if not self.running:
            reasons.append("not running")
            return reasons
        if not self.connected:
            reasons.append(f"not connected to {self.broker}: {self.detail}".rstrip(": "))
        for sub in self.subscriptions:
            if not sub.attached:
                reasons.append(f"{sub.name} not attached: {sub.detail}".rstrip(": "))
        reasons.extend(f"{component}: {problem}" for component, problem in self.problems.items())
        return reasons

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """The `/healthz` answer, (HTTP status, JSON body): 200 `{"status": "alive"}`, or
        503 `{"status": "failed", "failure": ...}` once the bus stopped itself (a consumer
        died), so the orchestrator restarts the process. A broker outage is not a liveness
        failure: the adapter reconnects, and readiness reports it meanwhile."""
        if self.failure is not None:
            return 503, {"status": "failed", "failure": self.failure}
        return 200, {"status": "alive"}

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The `/readyz` answer, (HTTP status, JSON body): 200 when `ok`, else 503; the
        body is `to_dict()` (`reasons` says what is missing)."""
        return (200 if self.ok else 503), self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, plus `ok` and `reasons`."""
        data = asdict(self)
        data["subscriptions"] = [asdict(s) for s in self.subscriptions]
        data["ok"] = self.ok
        data["reasons"] = self.reasons()
        return data
