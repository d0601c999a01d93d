"""Scenario 6 (soak): consumer processes SIGKILLed again and again while the 3-node
clusters stay healthy.

- `test_members_killed_again_and_again_lose_nothing`: two members of a group, each an OS
  process of its own (`tests/clusters/member.py`), consume the keyed load of `load.py`
  while the test publishes it; one member after the other is SIGKILLed five times, each
  time once the group handled its share of events since the last kill, and started
  again at once. Nothing confirmed is lost, key order holds on the handled sequence
  (duplicates removed, judged on when each was handled), and the duplicates stay within
  the in-flight window of the killed members (below).
- `test_killed_order_consumers_keep_the_inbox_read_model_exact`: the order system of
  `examples.orders` on the cluster (command API, relay, projection and notification
  processes; PostgreSQL store; on Kafka once with static membership, once without); the
  projection and notification processes are SIGKILLed five times while orders are placed.
  With the `Inbox`, the read model equals the one replayed from the store, and every
  e-mail was sent once.

Duplicates: a delivery the handler finished but the broker had not been told of yet comes
again after the kill (the in-flight window of the killed member):

- RabbitMQ: the group's queue is single-active-consumer, so only the active member holds
  deliveries, at most `prefetch` (200) unacknowledged: at most 200 per kill.
- Kafka with static membership (`instance_id`, each member process its own name): the
  restarted member takes its partitions back without a rebalance and goes on from their
  last committed offsets. It commits what it finished every `commit_interval_ms`
  (500 ms, asynchronously, one commit at a time), so what comes again is what it finished
  in the last second or so: at 400 events/s, two seconds of the whole load (800) bound
  it per kill.
- Kafka with dynamic membership (the default): the restarted member joins as a new one,
  and the group rebalances once the dead one's session (10 s here) ran out. librdkafka
  holds a member's commits while its group rebalances, so the member killed next has
  committed nothing since the last kill: up to session + 2 s of the load (4,800) per
  kill. A run measures about 1,300. Static membership is the remedy (README).

No `from __future__ import annotations`: pytest reads the fixtures' annotations only, but
the modules this one imports (`load`) need it off, and one style per folder.
"""

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eventbus import EventBus
from eventbus.sourcing import open_store
from eventbus.testing.conformance import unique
from eventbus.testing.store_contract import until as polled
from examples.orders.demo import client, drive, settled
from tests.orders.conftest import free_port
from tests.orders.support import assert_read_model_is_exact, kill, start, stop_all
from tests.sourcing.conftest import POSTGRES_DSN

from . import kafka_nodes, rabbitmq_nodes
from .load import Load

pytestmark = pytest.mark.soak

ROOT = Path(__file__).resolve().parents[2]
KILLS = 5
#: the group's session on Kafka (librdkafka's default is 45 s): a killed member's
#: partitions move once it ran out
KAFKA_CONSUMER_CONFIG = {"session.timeout.ms": 10_000, "heartbeat.interval.ms": 1000}


@dataclass(frozen=True)
class Cluster:
    name: str
    url: str
    #: the environment every process of the test runs with
    env: dict[str, str]
    #: the most duplicates one kill may cause (the module docstring)
    window: int
    #: the longest the group may handle nothing new (a kill on Kafka: the dead member's
    #: 10 s session, a cooperative rebalance, on 2 loaded cores)
    recovery_s: float
    #: each member process joins with an `instance_id` of its own (static membership)
    static: bool = False

    def ensure(self) -> None:
        nodes = kafka_nodes if self.name.startswith("kafka") else rabbitmq_nodes
        nodes.ensure_cluster()

    def delete(self, streams: list[str]) -> None:
        nodes = kafka_nodes if self.name.startswith("kafka") else rabbitmq_nodes
        nodes.delete_named_after(streams)


KAFKA_ENV = {"EVENTBUS_KAFKA_CONSUMER_CONFIG": json.dumps(KAFKA_CONSUMER_CONFIG)}
KAFKA_STATIC = Cluster("kafka-3", kafka_nodes.URL, KAFKA_ENV, 800, 30.0, static=True)
KAFKA_DYNAMIC = Cluster("kafka-3 dynamic membership", kafka_nodes.URL, KAFKA_ENV, 4800, 30.0)
RABBITMQ_ENV = {"EVENTBUS_RABBITMQ_HEARTBEAT": "2"}
RABBITMQ = Cluster("rabbitmq-3", rabbitmq_nodes.URL, RABBITMQ_ENV, 200, 20.0)


@pytest.fixture(
    params=[
        pytest.param(KAFKA_STATIC, id="kafka", marks=pytest.mark.kafka),
        pytest.param(KAFKA_DYNAMIC, id="kafka-dynamic", marks=pytest.mark.kafka),
        pytest.param(RABBITMQ, id="rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
async def place(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Cluster, list[str]]]:
    """The cluster (started by its script), and the streams a test names (their topics or
    queues and exchanges are deleted afterwards)."""
    where: Cluster = request.param
    await asyncio.to_thread(where.ensure)
    streams: list[str] = []
    try:
        yield where, streams
    finally:
        await asyncio.to_thread(where.delete, streams)


class Member:
    """One member process; what it handled goes to the load as it reports it."""

    def __init__(self, where: Cluster, load: Load, name: str) -> None:
        self.where = where
        self.load = load
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        #: events the current process reported
        self.handled = 0

    async def start(self) -> None:
        env = {**os.environ, **self.where.env, "EVENTBUS_LOG_LEVEL": "WARNING"}
        if self.where.static:
            env["EVENTBUS_KAFKA_INSTANCE_ID"] = self.name.replace(" ", "-")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.clusters.member",
            self.where.url, self.load.stream, self.load.group,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        running = asyncio.get_running_loop().create_future()
        self.handled = 0
        self._reader = asyncio.create_task(self._read(self.proc, running))
        async with asyncio.timeout(120):
            await running

    async def _read(self, proc: asyncio.subprocess.Process, running: asyncio.Future[None]) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if line == b"member: running\n":
                running.set_result(None)
                continue
            if not line.endswith(b"\n"):
                break  # cut by the kill: the handler did not return
            at, key, n = line.split()
            self.load.record(key.decode(), int(n), float(at))
            self.handled += 1
        if not running.done():
            running.set_exception(AssertionError(f"{self.name} exited: {await proc.wait()}"))

    async def kill(self) -> None:
        assert self.proc is not None and self._reader is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._reader  # what it wrote before it died

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(self.proc.wait(), 60) == 0, f"{self.name} failed"
        finally:
            if self.proc.returncode is None:
                await self.kill()
        if self._reader is not None:
            await self._reader


@pytest.mark.timeout(400)
async def test_members_killed_again_and_again_lose_nothing(
    place: tuple[Cluster, list[str]],
) -> None:
    where, streams = place
    stream = unique("kill")
    streams.append(stream)
    load = Load(stream, scenario=f"consumer SIGKILL x{KILLS}", broker=where.name)
    members = [Member(where, load, f"member {i}") for i in (1, 2)]
    producer = EventBus(where.url)
    try:
        for member in members:
            await member.start()
        async with producer, load.publishing(producer):
            await load.progress(500, timeout=120)
            for kill_number in range(KILLS):
                victim = members[kill_number % 2]
                load.note(f"SIGKILL {victim.name} after it handled {victim.handled}")
                await victim.kill()
                await victim.start()
                load.note(f"{victim.name} started again")
                took = await load.progress(600, timeout=120, what="handling after the kill")
                load.note(f"600 events handled {took:.1f}s after the kill")
        await load.drain(timeout=180)
    finally:
        for member in members:
            await member.stop()
    figures = load.report()
    figures.check(max_recovery_s=where.recovery_s)
    assert figures.failed == 0, figures.line()
    bound = KILLS * where.window
    assert figures.duplicates <= bound, f"{figures.duplicates} duplicates > {bound}"


@pytest.mark.timeout(600)
async def test_killed_order_consumers_keep_the_inbox_read_model_exact(
    place: tuple[Cluster, list[str]], tmp_path: Path
) -> None:
    where, streams = place
    stream = unique("orders-")
    streams.append(stream)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store_url = f"{POSTGRES_DSN}?schema={schema}"
    port = free_port()
    env = {
        **os.environ,
        **where.env,
        "EVENTBUS_URL": where.url,
        "EVENTBUS_STORE_URL": store_url,
        "ORDERS_STREAM": stream,
        "ORDERS_COMMAND_PORT": str(port),
        "ORDERS_PROJECTION_SOURCE": "bus",
        "EVENTBUS_LOG_LEVEL": "WARNING",
    }

    def env_of(service: str) -> dict[str, str]:
        """Static membership: each service process its own stable name."""
        return {**env, "EVENTBUS_KAFKA_INSTANCE_ID": service} if where.static else env

    consumers = ["projection", "notification"]
    procs = {name: await start(name, env_of(name)) for name in ("command", "relay")}
    for name in consumers:
        procs[name] = await start(name, env_of(name))
    command = client(port)
    store = open_store(store_url)
    await store.open()
    assert store.database is not None
    db = store.database
    try:
        started = time.monotonic()
        for round_ in range(KILLS):
            driving = asyncio.create_task(drive(command, 24, seed=round_))
            before = await inbox_rows(db)

            async def handling(before: int = before, driving: Any = driving) -> bool:
                return bool(driving.done()) or await inbox_rows(db) > before

            await polled(handling, 120)  # kill them mid-run: once they handle this round
            for name in consumers:
                await kill(procs[name])
            await driving
            for name in consumers:
                procs[name] = await start(name, env_of(name))
        await settled(store, db, timeout=180)
        print(
            f"[order system on {where.name}] {KILLS} rounds of 24 orders, projection and "
            f"notification processes SIGKILLed {KILLS} times, settled "
            f"{time.monotonic() - started:.1f}s after the first order"
        )
        await assert_read_model_is_exact(store, db, str(tmp_path))
    finally:
        await command.aclose()
        await stop_all(procs)
        with contextlib.suppress(Exception):
            await db.drop_schema()  # type: ignore[attr-defined]
        await store.close()


async def inbox_rows(db: Any) -> int:
    """Events the consumers took in so far (every group's inbox)."""
    async with db.transaction() as tx:
        row = await tx.fetchone("SELECT COUNT(*) FROM inbox")
    return int(row[0]) if row else 0
