"""`eventbus.fastapi` on memory://: the lifespan starts and stops the bus with the app (also
around the app's own lifespan), the dependencies hand the bus to path operations, the
probes follow `bus.health()`, the bus runs on the app's event loop, and the correlation id
of a request reaches the handlers of the events it published."""

# no `from __future__ import annotations`: handlers are annotated with per-test classes

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from eventbus import Context, Event, EventBus, SyncPublisher, correlation_scope
from eventbus.fastapi import (
    BusDep,
    CorrelationIdMiddleware,
    PublisherDep,
    get_bus,
    get_publisher,
    health_router,
    lifespan,
)
from eventbus.testing.conformance import unique

from .support import order_app, served

ROOT = Path(__file__).resolve().parents[2]


class Ping(Event, stream="fastapi-ping", type="ping"):
    pass


def memory_url() -> str:
    return f"memory://{unique('fastapi')}"


def test_the_lifespan_starts_and_stops_the_bus_with_the_app() -> None:
    bus = EventBus(memory_url())
    app, seen = order_app(bus, unique("orders"))
    client = TestClient(app)
    # no lifespan has run: the app has no bus yet, and is not ready
    before = client.get("/readyz")
    assert before.status_code == 503
    assert before.json()["reasons"] == ["no event bus: use eventbus.fastapi.lifespan(bus)"]
    assert client.get("/healthz").status_code == 200
    with client:
        assert bus.running
        assert app.state.eventbus is bus
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["subscriptions"][0]["attached"] is True
        assert client.get("/healthz").json() == {"status": "alive"}
        assert client.post("/orders", json={"order_id": "o-1"}).status_code == 202
        seen.wait_for(1)
    assert not bus.running  # the app's shutdown stopped it
    after = client.get("/readyz")  # the app's state still names the stopped bus
    assert after.status_code == 503 and after.json()["reasons"] == ["not running"]
    # the same bus (a module-level object) runs again with the next app run, on its loop
    with client:
        assert client.post("/orders", json={"order_id": "o-2"}).status_code == 202
        seen.wait_for(2)
    assert [order_id for order_id, *_ in seen.handled] == ["o-1", "o-2"]


def test_readiness_follows_the_bus_problems() -> None:
    bus = EventBus(memory_url())
    app, _ = order_app(bus, unique("orders"))
    explicit = FastAPI()
    explicit.include_router(health_router(bus, prefix="/ops"))
    with TestClient(explicit) as probe:
        assert probe.get("/ops/readyz").json()["reasons"] == ["not running"]
        with TestClient(app) as client:
            assert probe.get("/ops/readyz").status_code == 200
            bus.report_problem("billing: ledger", "ledger unreachable")
            unhealthy = client.get("/readyz")
            assert unhealthy.status_code == 503
            assert unhealthy.json()["reasons"] == ["billing: ledger: ledger unreachable"]
            assert client.get("/healthz").status_code == 200  # not a liveness failure
            bus.report_problem("billing: ledger", None)
            assert client.get("/readyz").status_code == 200
    schema = app.openapi()
    assert {"/healthz", "/readyz", "/orders"} <= set(schema["paths"])


def test_the_apps_own_lifespan_runs_inside_with_the_bus_running() -> None:
    stream = unique("orders")

    class Started(Event, stream=stream, type="app.started"):
        pass

    bus = EventBus(memory_url())
    steps: list[str] = []
    loops: dict[str, asyncio.AbstractEventLoop] = {}
    handled = threading.Event()

    @bus.subscribe(group="audit")
    async def audit(event: Started) -> None:
        loops["handler"] = asyncio.get_running_loop()
        handled.set()

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        steps.append(f"app start, bus running: {bus.running}")
        loops["lifespan"] = asyncio.get_running_loop()
        await bus.publish(Started())  # the bus is up: the app may publish at start-up
        yield
        steps.append(f"app stop, bus running: {bus.running}")

    app = FastAPI(lifespan=lifespan(bus, own))

    @app.get("/state")
    async def state(bus: BusDep, publisher: PublisherDep) -> dict[str, Any]:
        loops["request"] = asyncio.get_running_loop()
        return {"same": publisher is bus, "running": bus.running}

    with TestClient(app) as client:
        assert client.get("/state").json() == {"same": True, "running": True}
        assert handled.wait(30)
    assert steps == ["app start, bus running: True", "app stop, bus running: True"]
    assert not bus.running
    # one loop: the lifespan's, the path operations' and the handlers'
    assert loops["lifespan"] is loops["request"] is loops["handler"]


def test_the_app_state_of_the_own_lifespan_is_kept() -> None:
    bus = EventBus(memory_url())

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    app = FastAPI(lifespan=lifespan(bus, own))

    from starlette.requests import Request

    @app.get("/greeting")
    async def greeting(request: Request) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "bus": request.state.eventbus is bus}

    with TestClient(app) as client:
        assert client.get("/greeting").json() == {"greeting": "hello", "bus": True}


def test_dependencies_can_be_overridden_and_fail_clearly_without_the_lifespan() -> None:
    published: list[str] = []

    class Recorder:
        async def publish(self, event: Event, **kwargs: Any) -> Any:
            published.append(event.model_dump_json())

    app = FastAPI()

    @app.post("/ping")
    async def ping(publisher: PublisherDep) -> dict[str, bool]:
        await publisher.publish(Ping())
        return {"ok": True}

    @app.get("/bus")
    async def which(bus: BusDep) -> dict[str, str]:
        return {"bus": repr(bus)}

    app.dependency_overrides[get_publisher] = Recorder
    with TestClient(app, raise_server_exceptions=True) as client:
        assert client.post("/ping").json() == {"ok": True}
        assert published == ["{}"]
        with pytest.raises(RuntimeError, match=r"lifespan\(bus\)"):
            client.get("/bus")
    other = EventBus(memory_url())
    app.dependency_overrides[get_bus] = lambda: other
    with TestClient(app) as client:
        assert client.get("/bus").json() == {"bus": repr(other)}


def test_a_requests_correlation_id_reaches_the_handler() -> None:
    bus = EventBus(memory_url())
    app, seen = order_app(bus, unique("orders"))
    with TestClient(app) as client:
        given = client.post(
            "/orders", json={"order_id": "o-1"}, headers={"X-Correlation-ID": "corr-1"}
        )
        assert given.status_code == 202
        assert given.headers["X-Correlation-ID"] == "corr-1"
        assert given.json()["correlation_id"] == "corr-1"

        by_request_id = client.post(
            "/orders", json={"order_id": "o-2"}, headers={"X-Request-ID": "req-2"}
        )
        assert by_request_id.headers["X-Correlation-ID"] == "req-2"

        generated = client.post("/orders", json={"order_id": "o-3"})
        new_id = generated.headers["X-Correlation-ID"]
        assert uuid.UUID(new_id) and generated.json()["correlation_id"] == new_id

        hostile = client.post(
            "/orders", json={"order_id": "o-4"}, headers={"X-Correlation-ID": "a b" + "x" * 300}
        )
        replaced = hostile.headers["X-Correlation-ID"]
        assert uuid.UUID(replaced)  # a new id, not the invalid one

        seen.wait_for(4)
    assert {(order_id, corr) for order_id, corr, _ in seen.handled} == {
        ("o-1", "corr-1"),
        ("o-2", "req-2"),
        ("o-3", new_id),
        ("o-4", replaced),
    }
    # every handler ran on the loop the path operations ran on
    loops = {id(loop) for *_, loop in seen.handled} | {id(loop) for loop in seen.request_loops}
    assert len(loops) == 1


def test_explicit_ids_and_handler_chains_win_over_the_request() -> None:
    stream = unique("orders")

    class Placed(Event, stream=stream, type="order.placed"):
        order_id: str

    class Shipped(Event, stream=stream, type="order.shipped"):
        order_id: str

    bus = EventBus(memory_url())
    shipped: list[tuple[str, str | None, str | None]] = []
    both = threading.Event()
    placed_ids: dict[str, str] = {}

    @bus.subscribe(group="shipping")
    async def ship(event: Placed, ctx: Context) -> None:
        placed_ids[event.order_id] = ctx.envelope.id
        # inside a handler the handled event's chain wins, whatever scope the task has
        with correlation_scope("ignored-inside-handlers"):
            await bus.publish(Shipped(order_id=event.order_id))

    @bus.subscribe(group="mail")
    async def mail(event: Shipped, ctx: Context) -> None:
        shipped.append((event.order_id, ctx.envelope.correlation_id, ctx.envelope.causation_id))
        if len(shipped) == 2:
            both.set()

    app = FastAPI(lifespan=lifespan(bus))
    app.add_middleware(CorrelationIdMiddleware)

    @app.post("/orders/{order_id}")
    async def place(order_id: str, bus: BusDep, explicit: str | None = None) -> None:
        await bus.publish(Placed(order_id=order_id), correlation_id=explicit)

    with TestClient(app) as client:
        client.post("/orders/a", headers={"X-Correlation-ID": "from-request"})
        client.post("/orders/b?explicit=mine", headers={"X-Correlation-ID": "from-request"})
        assert both.wait(30)
    assert sorted(shipped) == [
        ("a", "from-request", placed_ids["a"]),
        ("b", "mine", placed_ids["b"]),
    ]


def test_a_sync_path_operation_publishing_with_the_sync_publisher_is_correlated() -> None:
    url = memory_url()
    stream = unique("orders")

    class Placed(Event, stream=stream, type="order.placed"):
        order_id: str

    bus = EventBus(url)
    seen: list[str | None] = []
    handled = threading.Event()

    @bus.subscribe(group="shipping")
    async def ship(event: Placed, ctx: Context) -> None:
        seen.append(ctx.envelope.correlation_id)
        handled.set()

    publisher = SyncPublisher(url)
    app = FastAPI(lifespan=lifespan(bus))
    app.add_middleware(CorrelationIdMiddleware)

    @app.post("/orders")
    def place() -> None:  # a worker thread: the request's context went along
        publisher.publish(Placed(order_id="o-1"))

    with TestClient(app) as client:
        client.post("/orders", headers={"X-Correlation-ID": "sync-1"})
        assert handled.wait(30)
    publisher.close()
    assert seen == ["sync-1"]


async def test_on_uvicorn_the_bus_runs_on_the_servers_loop() -> None:
    bus = EventBus(memory_url())
    app, seen = order_app(bus, unique("orders"))
    async with served(app) as client:
        assert bus.running
        assert (await client.get("/readyz")).status_code == 200
        response = await client.post(
            "/orders", json={"order_id": "o-1"}, headers={"X-Correlation-ID": "uv-1"}
        )
        assert response.headers["X-Correlation-ID"] == "uv-1"
        await seen.until(1)
    assert not bus.running
    [(order_id, correlation_id, loop)] = seen.handled
    assert (order_id, correlation_id) == ("o-1", "uv-1")
    assert loop is asyncio.get_running_loop() is seen.request_loops[0]


def test_import_eventbus_does_not_import_fastapi(tmp_path: Path) -> None:
    check = (
        "import sys, eventbus; "
        "assert 'fastapi' not in sys.modules and 'eventbus.fastapi' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shim = tmp_path / "fastapi.py"  # shadows the installed package: the import fails
    shim.write_text("raise ImportError(\"No module named 'fastapi'\", name='fastapi')\n")
    missing = subprocess.run(
        [sys.executable, "-c", "import eventbus.fastapi"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0
    assert "pip install 'eventbus[fastapi]'" in missing.stderr
