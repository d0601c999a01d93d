"""The operator's HTTP endpoints of a running bus: `/healthz`, `/readyz` and `/metrics`.

`app(bus)` is a Starlette application (mount it in your own ASGI app, or let
`eventbus run myapp:bus --http 0.0.0.0:8000` serve it with uvicorn on the bus's event
loop):

- `/healthz` (liveness): 200 while the process is alive and its event loop answers (the
  request is served by the same loop as the handlers, so a blocked loop fails the probe
  by timing out); 503 once the bus stopped itself because a consumer died.
- `/readyz` (readiness): 200 when the bus runs, is connected and every subscription is
  attached, with the `bus.health()` report as JSON; 503 with the reasons otherwise (the
  broker is down, a consumer is recovering, a dead letter cannot be stored). It comes
  back to 200 by itself once the adapter reconnected.
- `/metrics`: the Prometheus exposition of the bus's metrics (OpenMetrics on request).

Needs Starlette, uvicorn and prometheus-client (`pip install eventbus[http]`). A FastAPI
app serves the same two probes with `eventbus.fastapi.health_router()`; both answer
through `Health.liveness()` and `Health.readiness()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import ConfigurationError
from .log import get_logger
from .prometheus import exposition, registry_of

if TYPE_CHECKING:
    from .bus import EventBus

_log = get_logger()


def app(bus: EventBus) -> Starlette:
    """The endpoints of `bus` as an ASGI app (metrics are turned on if they are off)."""
    bus.enable_metrics()
    registry = registry_of(bus)

    async def healthz(request: Request) -> Response:
        status, body = bus.health().liveness()
        return JSONResponse(body, status_code=status)

    async def readyz(request: Request) -> Response:
        status, body = bus.health().readiness()
        return JSONResponse(body, status_code=status)

    async def metrics(request: Request) -> Response:
        body, content_type = exposition(registry, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (`0.0.0.0:8000`, `[::1]:8000`, `:8000` for all interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigurationError(f"--http expects host:port, e.g. 0.0.0.0:8000; got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `bus.run` owns SIGTERM/SIGINT and stops
    the server after the bus stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run_with_http(bus: EventBus, address: str) -> None:
    """`bus.run()` with the endpoints served on `address` on the same event loop. The
    socket is bound first (a busy port is a clear error), the server answers before the bus
    connects (`/readyz` says "not running" meanwhile), and it stops after the bus stopped
    gracefully."""
    host, port = parse_address(address)
    config = uvicorn.Config(
        app(bus),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = _Server(config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections accepted
    # from such a socket; without it a response written in two parts waits for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    _log.info(
        "http.serving",
        address=f"[{bound_host}]:{bound_port}"
        if family == socket.AF_INET6
        else f"{bound_host}:{bound_port}",
        endpoints=["/healthz", "/readyz", "/metrics"],
    )
    try:
        await bus.run()
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
