"""A FastAPI app that publishes what it is posted, with a handler that records what it
sees, and `served`: that app on a real uvicorn server in the test's event loop."""

# no `from __future__ import annotations`: handlers are annotated with per-test classes

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from eventbus import Context, Event, EventBus
from eventbus.fastapi import (
    BusDep,
    CorrelationIdDep,
    CorrelationIdMiddleware,
    health_router,
    lifespan,
)
from eventbus.testing.conformance import until


class NewOrder(BaseModel):
    order_id: str


@dataclass
class Seen:
    """What the handler saw: (order id, correlation id, its event loop), and the loops
    the path operations ran on."""

    handled: list[tuple[str, str | None, asyncio.AbstractEventLoop]] = field(default_factory=list)
    request_loops: list[asyncio.AbstractEventLoop] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def record(self, order_id: str, correlation_id: str | None) -> None:
        with self.changed:
            self.handled.append((order_id, correlation_id, asyncio.get_running_loop()))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Block until the handler saw `count` events (for tests driving a TestClient)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.handled) >= count, timeout):
                raise AssertionError(f"the handler saw {self.handled}, not {count} events")

    async def until(self, count: int, timeout: float = 60) -> None:
        await until(lambda: len(self.handled) >= count, timeout, f"{count} handled events")


def order_app(bus: EventBus, stream: str) -> tuple[FastAPI, Seen]:
    """POST /orders publishes an `OrderPlaced` on `stream`; the `shipping` group's handler
    records it with the correlation id its context carries."""

    class OrderPlaced(Event, stream=stream, type="order.placed"):
        order_id: str

    seen = Seen()

    @bus.subscribe(group="shipping")
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        seen.record(event.order_id, ctx.envelope.correlation_id)

    app = FastAPI(lifespan=lifespan(bus))
    app.add_middleware(CorrelationIdMiddleware)
    app.include_router(health_router())

    @app.post("/orders", status_code=202)
    async def place(
        order: NewOrder, bus: BusDep, correlation_id: CorrelationIdDep
    ) -> dict[str, str | None]:
        seen.request_loops.append(asyncio.get_running_loop())
        envelope = await bus.publish(OrderPlaced(order_id=order.order_id), key=order.order_id)
        return {"event_id": envelope.id, "correlation_id": correlation_id}

    return app, seen


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the test runner keeps its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """`app` on a uvicorn server in this event loop on 127.0.0.1 (a free port), lifespan
    on; yields a client of it once the server accepts, and shuts the server down after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or serving.done(), 60, "uvicorn started")
        if serving.done():
            await serving
            raise AssertionError("uvicorn stopped during start-up")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await serving
        sock.close()
