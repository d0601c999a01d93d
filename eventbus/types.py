"""The shapes that pass between eventbus's modules, named once (as Starlette's `types.py`).

Reading these is reading the architecture: a handler is called with a `Context`;
middleware wraps handling (`HandleMiddleware`) or publishing (`PublishMiddleware`). How a
context and a pipeline see the bus is in `publisher.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .context import Context
    from .protocol import Message

T = TypeVar("T")

#: a user's handler: `(event)` or `(event, ctx)`, async or sync
Handler = Callable[..., Any]
#: the rest of a middleware chain
Next = Callable[[T], Awaitable[None]]
HandleNext = Callable[["Context"], Awaitable[None]]
HandleMiddleware = Callable[["Context", HandleNext], Awaitable[None]]
PublishNext = Callable[["Message"], Awaitable[None]]
PublishMiddleware = Callable[["Message", PublishNext], Awaitable[None]]
