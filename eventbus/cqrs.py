"""CQRS: a command bus (one handler per command type) and a query bus over read models.

    commands = CommandBus()

    @commands.handler
    async def create(command: CreateOrder) -> OrderCreatedResult: ...

    result = await commands.dispatch(CreateOrder(...))   # the result, or a DomainError

Commands and queries are pydantic models; the handler's annotation picks its type.
Handlers raise `DomainError` (or a subclass) for a rule the command broke; anything else
is a bug and propagates unchanged.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .errors import EventBusError

M = TypeVar("M", bound=BaseModel)
H = TypeVar("H", bound=Callable[..., Any])


class DomainError(Exception):
    """A command broke a business rule. `code` is a stable machine-readable name."""

    code: str = "domain_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFound(DomainError):
    """The command or query names something that does not exist."""

    code = "not_found"


class InvalidTransition(DomainError):
    """The command is not allowed in the current state (e.g. shipping an unpaid order)."""

    code = "invalid_transition"


class HandlerNotFound(EventBusError, LookupError):
    """No handler is registered for a command or query type."""


def _message_type(handler: Callable[..., Any], kind: str) -> type[BaseModel]:
    params = list(inspect.signature(handler).parameters.values())
    if not params:
        raise TypeError(f"{kind} handler {handler!r} takes no argument")
    hints = typing.get_type_hints(handler)
    annotation = hints.get(params[0].name)
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise TypeError(
            f"{kind} handler {getattr(handler, '__qualname__', handler)!r}: annotate its "
            f"first parameter with the pydantic {kind} model it handles"
        )
    return annotation


class _Bus(Generic[M]):
    kind = "message"

    def __init__(self) -> None:
        self._handlers: dict[type[BaseModel], Callable[[Any], Awaitable[Any]]] = {}

    def handler(self, fn: H) -> H:
        """Decorator: register `fn` for the model type its first parameter is annotated with."""
        self.register(_message_type(fn, self.kind), fn)
        return fn

    def register(self, message_type: type[BaseModel], fn: Callable[[Any], Any]) -> None:
        if message_type in self._handlers:
            raise ValueError(
                f"{message_type.__name__} has a {self.kind} handler already: one handler per "
                f"{self.kind} type"
            )
        if inspect.iscoroutinefunction(fn):
            self._handlers[message_type] = fn
        else:

            async def call(message: Any) -> Any:
                return fn(message)

            self._handlers[message_type] = call

    def handles(self, message_type: type[BaseModel]) -> bool:
        return message_type in self._handlers

    async def dispatch(self, message: BaseModel) -> Any:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise HandlerNotFound(
                f"no {self.kind} handler for {type(message).__name__}: register one with "
                f"@{self.kind}s.handler"
            )
        return await handler(message)


class CommandBus(_Bus[BaseModel]):
    """One handler per command type; `dispatch` returns its result or raises DomainError."""

    kind = "command"


class QueryBus(_Bus[BaseModel]):
    """One handler per query type, reading read models; `ask` returns the answer."""

    kind = "query"

    async def ask(self, query: BaseModel) -> Any:
        return await self.dispatch(query)
