"""Dead-letter headers: what was dead-lettered, from where, why, and after how many tries."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

from .protocol import Delivery

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
