"""Dead-letter headers: what was dead-lettered, from where, why, and after how many tries;
and `DeadLetterFilter`, which dead letters a tool takes (`eventbus dlq ... --type ...`)."""

from __future__ import annotations

import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .protocol import DeadLetter, Delivery, Select
from .routing import matches_any, validate_pattern

MAX_STACKTRACE = 8192
MAX_MESSAGE = 2048

#: headers that describe a dead-lettering; stripped when a dead letter is replayed
DEAD_LETTER_HEADERS = (
    "x-original-stream",
    "x-original-type",
    "x-original-group",
    "x-original-partition",
    "x-original-offset",
    "x-original-routing-key",
    "x-exception-type",
    "x-exception-message",
    "x-exception-stacktrace",
    "x-attempts",
    "x-dead-lettered-at",
)


def dead_letter_info(
    delivery: Delivery,
    group: str,
    *,
    exc_type: str,
    message: str,
    stacktrace: str = "",
    attempts: int,
) -> dict[str, str]:
    """The DESIGN §3.5 headers for one dead letter (all values are strings)."""
    info = {
        "x-original-stream": delivery.stream,
        "x-original-type": delivery.attributes.get("type", ""),
        "x-original-group": group,
        "x-exception-type": exc_type,
        "x-exception-message": message[:MAX_MESSAGE],
        "x-exception-stacktrace": stacktrace[-MAX_STACKTRACE:],
        "x-attempts": str(attempts),
        "x-dead-lettered-at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if delivery.partition is not None:
        info["x-original-partition"] = str(delivery.partition)
    if delivery.offset is not None:
        info["x-original-offset"] = str(delivery.offset)
    if delivery.routing_key is not None:
        info["x-original-routing-key"] = delivery.routing_key
    return info


def describe(exc: BaseException) -> tuple[str, str, str]:
    """-> (qualified type name, message, formatted stack trace)."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    stack = "".join(traceback.format_exception(exc))
    return name, str(exc), stack


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time for `--since`: an ISO-8601 time (`2024-05-01T12:00:00Z`,
    `2024-05-01`; without an offset it is local time), or a duration back from now (`90s`,
    `15m`, `1h30m`, `2d`, `1w`). Raises ValueError naming both forms."""
    value = text.strip()
    compact = value.replace(" ", "")
    if compact and _DURATION.sub("", compact) == "":
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(compact))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time (2024-05-01T12:00:00Z) nor a duration "
            "(90s, 15m, 1h30m, 2d, 1w)"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def dead_lettered_at(dead: DeadLetter) -> datetime | None:
    """When a dead letter was dead-lettered (`x-dead-lettered-at`); None if unknown."""
    stamp = dead.headers.get("x-dead-lettered-at")
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:  # written by another tool: never break a listing
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def event_type_of(dead: DeadLetter) -> str:
    """The event type of a dead letter (its `type` attribute, else `x-original-type`)."""
    return dead.attributes.get("type") or dead.headers.get("x-original-type", "")


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters a tool takes: all conditions given must hold.

    `types`: event types or patterns (`order.*`, `order.#`), any of them; `since`: dead-
    lettered at or after (`x-dead-lettered-at`; a letter without it does not match);
    `contains`: a substring of the body (as UTF-8) or of the reason; `limit`: the first N
    matching ones only (oldest first).
    """

    types: tuple[str, ...] = ()
    since: datetime | None = None
    contains: str | None = None
    limit: int | None = None

    @classmethod
    def of(
        cls,
        types: Sequence[str] | None = None,
        since: str | datetime | None = None,
        contains: str | None = None,
        limit: int | None = None,
    ) -> DeadLetterFilter:
        """From a tool's options; raises ValueError for a bad pattern, time or limit."""
        patterns = tuple(validate_pattern(t) for t in types or ())
        moment = parse_since(since) if isinstance(since, str) else since
        if limit is not None and limit < 0:
            raise ValueError(f"the limit must be 0 or more, not {limit}")
        return cls(patterns, moment, contains or None, limit)

    @property
    def everything(self) -> bool:
        """True if every dead letter matches (no condition, no limit)."""
        return self == DeadLetterFilter()

    def matches(self, dead: DeadLetter) -> bool:
        """Whether one dead letter meets the conditions (the limit aside)."""
        if self.types and not matches_any(self.types, event_type_of(dead)):
            return False
        if self.since is not None:
            moment = dead_lettered_at(dead)
            if moment is None or moment < self.since:
                return False
        needle = self.contains
        if needle is not None:
            return needle.encode() in dead.body or needle in dead.reason
        return True

    def selector(self) -> Select:
        """A fresh `select` for one operation: the matching dead letters, the first `limit`
        of them if there is a limit (it counts: use one per operation)."""
        if self.limit is None:
            return self.matches
        taken = 0
        limit = self.limit

        def select(dead: DeadLetter) -> bool:
            nonlocal taken
            if taken >= limit or not self.matches(dead):
                return False
            taken += 1
            return True

        return select
