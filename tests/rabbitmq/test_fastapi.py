"""`eventbus.fastapi` on RabbitMQ: a FastAPI app on a real uvicorn server publishes what it
is posted; the handler sees the request's correlation id, on the server's event loop."""

import asyncio

import pytest

from tests.fastapi.support import order_app, served

from .conftest import Broker

pytestmark = pytest.mark.rabbitmq


async def test_a_post_publishes_and_the_handler_sees_its_correlation_id(rabbit: Broker) -> None:
    bus = rabbit.bus()
    app, seen = order_app(bus, rabbit.stream())
    async with served(app) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["broker"].startswith("amqp://guest:***@")
        for n in range(3):
            response = await client.post(
                "/orders", json={"order_id": f"o-{n}"}, headers={"X-Correlation-ID": f"rmq-{n}"}
            )
            assert response.status_code == 202, response.text
            assert response.headers["X-Correlation-ID"] == f"rmq-{n}"
        untagged = await client.post("/orders", json={"order_id": "o-3"})
        await seen.until(4)
    assert not bus.running  # the server's shutdown stopped the bus
    assert sorted((order_id, corr) for order_id, corr, _ in seen.handled) == [
        ("o-0", "rmq-0"),
        ("o-1", "rmq-1"),
        ("o-2", "rmq-2"),
        ("o-3", untagged.headers["X-Correlation-ID"]),
    ]
    loop = asyncio.get_running_loop()
    assert all(handled_on is loop for *_, handled_on in seen.handled)
    assert all(request_on is loop for request_on in seen.request_loops)
