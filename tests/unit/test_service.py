"""`eventbus.service`: the HTTP endpoints of a bus, on memory:// through httpx's ASGI
transport (the same event loop as the bus), and `eventbus run --http` as a process."""

import os
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import ConfigurationError, Event, EventBus, RetryPolicy
from eventbus.service import app, parse_address
from eventbus.testing.conformance import unique, until

from ..operations.service import ROOT, Service, wait

# no `from __future__ import annotations`: handlers are annotated with per-test classes


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_endpoints_follow_the_bus() -> None:
    stream = unique("svc")

    class Order(Event, stream=stream, type="order.placed"):
        order_id: str

    bus = EventBus(f"memory://{stream}")
    handled: list[str] = []

    @bus.subscribe(group="billing", retry=RetryPolicy(attempts=1))
    async def bill(order: Order) -> None:
        if order.order_id == "poison":
            raise ValueError("declined")
        handled.append(order.order_id)

    transport = httpx.ASGITransport(app=app(bus))
    async with httpx.AsyncClient(transport=transport, base_url="http://bus") as client:
        before = await client.get("/readyz")
        assert before.status_code == 503 and "not running" in before.json()["reasons"]
        assert (await client.get("/healthz")).status_code == 200
        async with bus:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.json()
            assert ready.json()["subscriptions"][0]["attached"] is True
            for order_id in ("a", "b", "poison"):
                await bus.publish(Order(order_id=order_id))
            await until(lambda: len(handled) == 2, what="the good orders")
            await until(lambda: bus.metrics is not None and len(bus.metrics.failed) == 1)
            response = await client.get("/metrics")
            assert response.headers["content-type"].startswith("text/plain")
            handled_total = _samples(response.text, "eventbus_handled_total")
            key = (("group", "billing"), ("stream", stream), ("type", "order.placed"))
            assert handled_total == {key: 2.0}
            failed = _samples(response.text, "eventbus_failed_total")
            assert failed == {(key[0], ("outcome", "dead_lettered"), *key[1:]): 1.0}
            published = _samples(response.text, "eventbus_published_total")
            assert published == {(("stream", stream), ("type", "order.placed")): 3.0}
            openmetrics = await client.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
            bus.report_problem("billing: ledger", "ledger unreachable")
            unhealthy = await client.get("/readyz")
            assert unhealthy.status_code == 503
            assert "billing: ledger: ledger unreachable" in unhealthy.json()["reasons"]
            bus.report_problem("billing: ledger", None)
            assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503


def test_http_address_is_checked() -> None:
    assert parse_address("0.0.0.0:8000") == ("0.0.0.0", 8000)
    assert parse_address(":9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:8000") == ("::1", 8000)
    for bad in ("8000", "host:", "host:http", "host:70000"):
        with pytest.raises(ConfigurationError, match="host:port"):
            parse_address(bad)


def test_eventbus_run_http_serves_and_stops_on_sigterm() -> None:
    service = Service(f"memory://{unique('svc')}")
    try:
        wait(service.ready, 60, "/readyz 200", service)
        assert service.get("/healthz").json() == {"status": "alive"}
        assert "eventbus_subscription_attached" in service.get("/metrics").text
        assert service.stop() == 0, service.log_tail()
        events = [line.get("event") for line in service.lines]
        assert events.index("http.serving") < events.index("bus.started")
        assert "bus.stopped" in events
    finally:
        service.kill()


def test_eventbus_run_http_on_a_busy_port_is_a_clear_error() -> None:
    first = Service(f"memory://{unique('svc')}")
    try:
        wait(first.ready, 60, "/readyz 200", first)
        busy = subprocess.run(
            [
                sys.executable, "-m", "eventbus", "run", "tests.operations.service_app:bus",
                "--http", first.address,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SERVICE_STREAM": "busy"},
        )  # fmt: skip
        assert busy.returncode == 2, busy.stderr
        assert "cannot serve HTTP on" in busy.stderr
    finally:
        first.kill()
