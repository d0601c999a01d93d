"""FastAPI integration: the bus starts and stops with the app, path operations get it as
a dependency, `/healthz` and `/readyz` follow `bus.health()`, and the events a request
publishes carry its correlation id::

    from fastapi import FastAPI
    from eventbus import EventBus
    from eventbus.fastapi import BusDep, CorrelationIdMiddleware, health_router, lifespan

    bus = EventBus()                              # EVENTBUS_URL

    app = FastAPI(lifespan=lifespan(bus))         # start with the app, stop gracefully after it
    app.add_middleware(CorrelationIdMiddleware)   # X-Correlation-ID in, out and onto events
    app.include_router(health_router())           # GET /healthz, GET /readyz

    @app.post("/orders", status_code=202)
    async def place(order: NewOrder, bus: BusDep) -> dict[str, str]:
        envelope = await bus.publish(OrderPlaced(**order.model_dump()), key=order.id)
        return {"event_id": envelope.id}

The bus runs on the app's event loop: the lifespan starts it there, so handlers, consumers
and the path operations that publish share one loop (no thread hops, no second loop).

Needs FastAPI (`pip install 'eventbus[fastapi]'`); `import eventbus` never imports this
module or FastAPI.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

try:
    from fastapi import APIRouter, Depends
    from starlette.applications import Starlette
    from starlette.datastructures import MutableHeaders
    from starlette.requests import HTTPConnection
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    if exc.name not in {"fastapi", "starlette"}:
        raise
    raise ImportError(
        "eventbus.fastapi needs FastAPI: pip install 'eventbus[fastapi]'", name=exc.name
    ) from exc

from .bus import EventBus
from .context import correlation_scope, current_correlation_id
from .publisher import Publisher

__all__ = [
    "STATE_KEY",
    "BusDep",
    "CorrelationIdDep",
    "CorrelationIdMiddleware",
    "PublisherDep",
    "get_bus",
    "get_correlation_id",
    "get_publisher",
    "health_router",
    "lifespan",
]

#: the name of the bus in the app's state (`app.state.eventbus`, `request.state.eventbus`)
STATE_KEY = "eventbus"

#: an app's own lifespan, as FastAPI takes it: `app -> async context manager` yielding
#: None or a state mapping
AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def lifespan(
    bus: EventBus, app_lifespan: AppLifespan | None = None
) -> Callable[[Starlette], AbstractAsyncContextManager[Mapping[str, Any]]]:
    """The lifespan of an app that runs `bus`: `FastAPI(lifespan=lifespan(bus))`.

    At start-up it puts the bus in the app's state (where `get_bus` and `health_router`
    find it) and starts it on the app's event loop: the server accepts requests only once
    every subscription is attached, and a bus that cannot start fails the start-up. At
    shutdown (after the server finished its requests) it stops the bus gracefully:
    in-flight handlers finish, unstarted events go back to the broker.

    `app_lifespan` is the app's own lifespan, run inside: the bus is already running when
    it starts (it may publish) and still running when it ends. The state it yields, if
    any, is the app's state as well. Plain Starlette apps work the same.
    """

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        setattr(app.state, STATE_KEY, bus)
        async with bus:
            if app_lifespan is None:
                yield {STATE_KEY: bus}
                return
            async with app_lifespan(app) as state:
                yield {**(state or {}), STATE_KEY: bus}

    return run


def _bus_of(connection: HTTPConnection) -> EventBus | None:
    """The bus of the app serving `connection`: the lifespan state of this request (set by
    the server, so mounted sub-apps see it too), else the app's own state."""
    bus = connection.scope.get("state", {}).get(STATE_KEY)
    if bus is None:
        bus = getattr(connection.app.state, STATE_KEY, None)
    return bus if isinstance(bus, EventBus) else None


def get_bus(connection: HTTPConnection) -> EventBus:
    """Dependency: the app's bus (`bus: Annotated[EventBus, Depends(get_bus)]`, or `BusDep`).

    The bus is the one `lifespan(bus)` runs; without it, a clear error. Tests may replace
    it: `app.dependency_overrides[get_bus] = lambda: other_bus`."""
    bus = _bus_of(connection)
    if bus is None:
        raise RuntimeError(
            "this app runs no event bus: create it with "
            "FastAPI(lifespan=eventbus.fastapi.lifespan(bus))"
        )
    return bus


def get_publisher(connection: HTTPConnection) -> Publisher:
    """Dependency: the app's bus seen as a `Publisher` (only `publish`), for path
    operations that publish and should not do more; tests may override it with a fake:
    `app.dependency_overrides[get_publisher] = lambda: recorder`."""
    return get_bus(connection)


def get_correlation_id(connection: HTTPConnection) -> str | None:
    """Dependency: the correlation id of this request (`CorrelationIdMiddleware`), or None
    without the middleware."""
    value = connection.scope.get("state", {}).get("correlation_id")
    return value if isinstance(value, str) else current_correlation_id.get()


#: `bus: BusDep` in a path operation: the app's `EventBus`
BusDep = Annotated[EventBus, Depends(get_bus)]
#: `publisher: PublisherDep`: the app's bus as a `Publisher`
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
#: `correlation_id: CorrelationIdDep`: this request's correlation id
CorrelationIdDep = Annotated[str | None, Depends(get_correlation_id)]


def health_router(
    bus: EventBus | None = None,
    *,
    prefix: str = "",
    tags: Sequence[str] = ("health",),
    include_in_schema: bool = True,
) -> APIRouter:
    """`GET /healthz` (liveness) and `GET /readyz` (readiness) for `app.include_router`,
    answering exactly as `eventbus run --http` does (`Health.liveness`, `Health.readiness`):

    - `/healthz`: 200 while the app serves (a blocked event loop fails it by timing out);
      503 once the bus stopped itself because a consumer died.
    - `/readyz`: 200 with the `bus.health()` report when the bus runs, is connected and
      every subscription is attached; 503 with the `reasons` otherwise (not started yet,
      stopped, broker down, a consumer recovering), and 200 again once it recovered.

    The bus is the app's (`lifespan(bus)`), or `bus` if given. /metrics is in
    `eventbus.service.app(bus)`, which you can mount: `app.mount("/ops", ...)`.
    """
    router = APIRouter(prefix=prefix, tags=list(tags), include_in_schema=include_in_schema)

    def which(connection: HTTPConnection) -> EventBus | None:
        return bus if bus is not None else _bus_of(connection)

    @router.get(
        "/healthz",
        summary="Liveness: is the process alive?",
        responses={503: {"description": "the bus stopped itself (a consumer died)"}},
    )
    async def healthz(connection: HTTPConnection) -> JSONResponse:
        found = which(connection)
        status, body = found.health().liveness() if found else (200, {"status": "alive"})
        return JSONResponse(body, status_code=status)

    @router.get(
        "/readyz",
        summary="Readiness: is the bus running, connected and consuming?",
        responses={503: {"description": "not ready; `reasons` says why"}},
    )
    async def readyz(connection: HTTPConnection) -> JSONResponse:
        found = which(connection)
        if found is None:
            body = {"ok": False, "reasons": ["no event bus: use eventbus.fastapi.lifespan(bus)"]}
            return JSONResponse(body, status_code=503)
        status, body = found.health().readiness()
        return JSONResponse(body, status_code=status)

    return router


#: what an incoming id may be: printable ASCII without spaces, at most 128 characters (it
#: travels as a CloudEvents attribute in broker headers); anything else is replaced
_VALID_ID = re.compile(r"[!-~]{1,128}")


def _new_id() -> str:
    return str(uuid.uuid4())


class CorrelationIdMiddleware:
    """ASGI middleware: each HTTP request gets a correlation id, and what it publishes
    carries it (`app.add_middleware(CorrelationIdMiddleware)`).

    The id is the request's `X-Correlation-ID` header, else its `X-Request-ID` (`accept`),
    else a new UUID; an id that is not printable ASCII of at most 128 characters is
    replaced by a new one. The response echoes it in `X-Correlation-ID` (`header`). While
    the request is handled the id is the current `eventbus.correlation_scope`, so every
    event published for it (`bus.publish`, `SyncPublisher.publish` in a sync path
    operation, a `Repository.save` through the outbox) gets `correlationid` = the id,
    unless it gives one itself, and the handlers of those events see it in
    `ctx.envelope.correlation_id`. Path operations read it with `CorrelationIdDep` or
    `request.state.correlation_id`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        header: str = "X-Correlation-ID",
        accept: Sequence[str] = ("X-Request-ID",),
        generate: Callable[[], str] = _new_id,
    ) -> None:
        self.app = app
        self.header = header
        self._names = [name.lower().encode("latin-1") for name in (header, *accept)]
        self.generate = generate

    def _incoming(self, scope: Scope) -> str | None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.lower(), value)
        for name in self._names:
            raw = headers.get(name)
            if raw is not None:
                value = raw.decode("latin-1").strip()
                if _VALID_ID.fullmatch(value):
                    return value
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        correlation_id = self._incoming(scope) or self.generate()
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        header = self.header

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if header not in headers:
                    headers[header] = correlation_id
            await send(message)

        with correlation_scope(correlation_id):
            await self.app(scope, receive, send_with_id)
