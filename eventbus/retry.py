"""How a failed handler is retried: `RetryPolicy`, and the outcomes a handler can raise."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries with exponential backoff, then dead-lettering.

    `attempts` counts every try, the first included: `attempts=1` never retries.
    The delay before try n+1 is `backoff * multiplier**(n-1)`, capped at `max_backoff`,
    spread by +/- `jitter` (a fraction, 0..1).

    By default retries happen in-process: the consumer waits and calls the handler again,
    so the order of events with the same key is kept. `delayed=True` hands the event back
    to the broker (RabbitMQ wait queues, Kafka retry topics) for later redelivery and frees
    the consumer meanwhile; the order of that key is then *not* kept.

    Only exceptions that are instances of `on` are retried; any other exception
    dead-letters the event at once.
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_backoff: float = 30.0
    jitter: float = 0.0
    on: tuple[type[BaseException], ...] = (Exception,)
    delayed: bool = False
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy.backoff and max_backoff must be >= 0")
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be within 0..1, got {self.jitter}")

    def base_delay(self, attempt: int) -> float:
        """Delay (seconds) after failed try number `attempt`, before jitter."""
        return min(self.backoff * self.multiplier ** (attempt - 1), self.max_backoff)

    def delay(self, attempt: int) -> float:
        """Delay (seconds) after failed try number `attempt`, jitter applied."""
        base = self.base_delay(attempt)
        if self.jitter:
            base *= 1 + self.jitter * (2 * self._rng.random() - 1)
        return max(base, 0.0)

    def tiers(self) -> list[float]:
        """The distinct delays of delayed mode, one per retry (`attempts - 1` of them).

        Brokers declare one wait queue / retry topic per retry; jitter is not applied in
        delayed mode because each tier is a fixed broker-side delay.
        """
        return [self.base_delay(n) for n in range(1, self.attempts)]

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on)


DEFAULT_RETRY = RetryPolicy()


class Reject(Exception):
    """Raise from a handler to dead-letter the event at once, with `reason` recorded."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Exception):
    """Raise from a handler to retry the event after `after` seconds (policy delay if None).

    It counts as a try: after the policy's last attempt the event is dead-lettered.
    """

    def __init__(self, after: float | None = None, reason: str = "retry requested by handler"):
        super().__init__(reason)
        self.after = after
        self.reason = reason
