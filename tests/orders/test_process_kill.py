"""Services as separate OS processes; the relay and the projection processes are killed
with SIGKILL mid-run and restarted. The read model must equal the replayed one. The
command API runs in two uvicorn worker processes on one port (`--workers 2`).

On memory:// (one process per broker) the projections follow the store with a
checkpoint; on RabbitMQ/Kafka they consume the bus with the inbox, fed by a relay process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from eventbus.sourcing import open_store
from examples.orders.demo import client, drive, settled

from .conftest import free_port
from .support import assert_read_model_is_exact, kill, start, stop_all

#: four SIGKILL scenarios of about a minute each (Kafka + PostgreSQL 2.5 min): the soak
#: suite, which CI runs after the default one
pytestmark = pytest.mark.soak


async def test_killed_relay_and_projection_processes(
    bus_url: str, store_url: str, stream: str, tmp_path: Path
) -> None:
    on_bus = not bus_url.startswith("memory:")
    port = free_port()
    env = {
        **os.environ,
        "EVENTBUS_URL": bus_url,
        "EVENTBUS_STORE_URL": store_url,
        "ORDERS_STREAM": stream,
        "ORDERS_COMMAND_PORT": str(port),
        "ORDERS_PROJECTION_SOURCE": "bus" if on_bus else "store",
        "EVENTBUS_LOG_LEVEL": "WARNING",
    }
    workers = ["projection", "notification"] + (["relay"] if on_bus else [])
    # the command API in two uvicorn worker processes sharing its port
    procs = {"command": await start("command", env, "--workers", "2")}
    for name in workers:
        procs[name] = await start(name, env)
    command = client(port)
    store = open_store(store_url)
    await store.open()
    try:
        for round_ in range(3):
            driving = asyncio.create_task(drive(command, 24, seed=round_))
            await asyncio.sleep(0.3)  # let the workers get going, then kill them mid-run
            for name in workers:
                await kill(procs[name])
            await driving
            for name in workers:
                procs[name] = await start(name, env)
        assert store.database is not None
        await settled(store, store.database, timeout=120)
        await assert_read_model_is_exact(store, store.database, str(tmp_path), queued=on_bus)
    finally:
        await command.aclose()
        await store.close()
        await stop_all(procs)
