"""`Health`: what `bus.health()` tells an operator (and a readiness probe)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of the bus's state.

    `problems` maps a component (`"orders/billing: dead letter"`) to what is wrong with it
    now; a problem disappears once it is resolved (a dead letter that could not be stored
    is retried until it is). `failure` is why the bus stopped itself (a consumer died),
    if it did.
    """

    running: bool
    problems: dict[str, str] = field(default_factory=dict)
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.running and not self.problems and self.failure is None
