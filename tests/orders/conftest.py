"""The order system's end-to-end tests run once per (bus, store) combination."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from eventbus.testing.conformance import unique
from tests.sourcing.conftest import POSTGRES_DSN

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
KAFKA_URL = "kafka://127.0.0.1:9092"

COMBOS = [
    pytest.param(("memory://", "sqlite"), id="memory-sqlite"),
    pytest.param(("memory://", "postgresql"), id="memory-postgres", marks=pytest.mark.postgres),
    pytest.param(
        (AMQP_URL, "postgresql"),
        id="rabbitmq-postgres",
        marks=[pytest.mark.rabbitmq, pytest.mark.postgres],
    ),
    pytest.param(
        (KAFKA_URL, "postgresql"),
        id="kafka-postgres",
        marks=[pytest.mark.kafka, pytest.mark.postgres],
    ),
]


@pytest.fixture(params=COMBOS)
def combo(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def bus_url(combo: tuple[str, str]) -> str:
    return combo[0]


@pytest.fixture
async def store_url(combo: tuple[str, str], tmp_path: object) -> AsyncIterator[str]:
    if combo[1] == "sqlite":
        yield f"sqlite:///{tmp_path}/orders.db"
        return
    from eventbus.sourcing.postgres import PostgresDatabase

    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES_DSN}?schema={schema}"
    db = PostgresDatabase(POSTGRES_DSN, schema=schema)
    try:
        await db.drop_schema()
    finally:
        await db.close()


@pytest.fixture
def stream() -> str:
    return unique("orders-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
