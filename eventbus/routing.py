"""Patterns (`*` one word, `#` zero or more words) and subscriptions read from annotations."""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import SubscriptionError
from .event import Envelope, Event

_WORD = re.compile(r"^[A-Za-z0-9_\-]+$")


def validate_pattern(pattern: str) -> str:
    """Return `pattern` if it is a valid topic pattern, else raise ValueError."""
    if not pattern:
        raise ValueError("a pattern must not be empty")
    for word in pattern.split("."):
        if word not in ("*", "#") and not _WORD.match(word):
            raise ValueError(
                f"invalid pattern {pattern!r}: words are letters, digits, '_' or '-', "
                "or '*' (one word) or '#' (zero or more words)"
            )
    return pattern


#: event types longer than this are matched without the cache: types come from producers,
#: and the cache must stay small whatever they send (at most 8192 * 2 * 256 bytes)
_CACHED_LENGTH = 256


def matches(pattern: str, event_type: str) -> bool:
    """RabbitMQ topic matching: `*` is exactly one word, `#` is zero or more words."""
    if len(event_type) <= _CACHED_LENGTH and len(pattern) <= _CACHED_LENGTH:
        return _cached_match(pattern, event_type)
    return _match(pattern, event_type)


def _match(pattern: str, event_type: str) -> bool:
    p = pattern.split(".")
    t = event_type.split(".")
    n, m = len(p), len(t)
    # nxt[j]: does p[i+1:] match t[j:]? computed from the last pattern word backwards
    nxt = [False] * (m + 1)
    nxt[m] = True
    for i in range(n - 1, -1, -1):
        cur = [False] * (m + 1)
        word = p[i]
        for j in range(m, -1, -1):
            if word == "#":
                cur[j] = nxt[j] or (j < m and cur[j + 1])
            elif j < m and (word == "*" or word == t[j]):
                cur[j] = nxt[j + 1]
        nxt = cur
    return nxt[0]


_cached_match = lru_cache(maxsize=8192)(_match)


def matches_any(patterns: tuple[str, ...], event_type: str) -> bool:
    return any(matches(p, event_type) for p in patterns)


@dataclass(frozen=True, slots=True)
class HandlerShape:
    """What a handler's signature says: its event classes (None = untyped) and arity."""

    event_types: dict[str, type[Event]] | None
    stream: str | None
    wants_context: bool
    is_async: bool
    #: it takes a `list[...]` of events (a batch handler, `eventbus.batch`)
    batch: bool = False


def _event_classes(annotation: Any) -> list[type[Event]] | None:
    if annotation is inspect.Parameter.empty or annotation is Any or annotation is Envelope:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    classes: list[type[Event]] = []
    for member in members:
        if isinstance(member, type) and issubclass(member, Event):
            if not getattr(member, "__event_type__", None):
                raise SubscriptionError(
                    f"{member.__name__} has no event type: declare it as "
                    f"class {member.__name__}(Event, stream='...', type='...')"
                )
            classes.append(member)
        else:
            raise SubscriptionError(
                f"handler annotation {annotation!r}: expected an Event subclass, a union of "
                "them, or Envelope (untyped)"
            )
    return classes


def inspect_handler(handler: Callable[..., Any]) -> HandlerShape:
    """Read the event classes and the context parameter from a handler's signature."""
    if not callable(handler):
        raise SubscriptionError(f"{handler!r} is not callable")
    sig = inspect.signature(handler)
    params = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(params) <= 2:
        hint = (
            ": one that takes a database transaction third needs `@transactional(store)` "
            "(eventbus.sourcing) under `@bus.subscribe`"
            if len(params) == 3
            else ""
        )
        raise SubscriptionError(
            f"handler {getattr(handler, '__qualname__', handler)!r} must take (event) or "
            f"(event, ctx){hint}"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:  # unresolved forward references
        raise SubscriptionError(
            f"cannot resolve the annotations of {handler!r}: {exc}. Annotations must name "
            "classes visible at module level (with `from __future__ import annotations`, "
            "event classes defined inside a function are not)"
        ) from exc
    annotation = hints.get(params[0].name, inspect.Parameter.empty)
    batch = annotation is list or typing.get_origin(annotation) is list
    if batch:  # list[OrderCreated], list[A | B], list[Envelope] or list
        members = typing.get_args(annotation)
        annotation = members[0] if members else inspect.Parameter.empty
    classes = _event_classes(annotation)
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
    )
    if classes is None:
        return HandlerShape(None, None, len(params) == 2, is_async, batch)
    streams = {c.__stream__ for c in classes}
    if len(streams) != 1:
        raise SubscriptionError(
            f"handler {getattr(handler, '__qualname__', handler)!r} mixes streams "
            f"{sorted(streams)}: one subscription reads one stream; subscribe one handler each"
        )
    return HandlerShape(
        {c.__event_type__: c for c in classes}, streams.pop(), len(params) == 2, is_async, batch
    )
