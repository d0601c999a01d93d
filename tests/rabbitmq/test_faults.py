"""Faults on the real broker: a dropped connection, a broker restart, a SIGKILLed consumer.
Nothing published may be lost; duplicates are allowed (at-least-once).

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from eventbus.testing.conformance import make_events, until

from .conftest import Broker
from .support import broker_of, close_connections_named, rabbitmqctl

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parents[2]


async def publish_all(bus: Any, events: list[Any], batch: int = 250) -> None:
    for i in range(0, len(events), batch):
        await bus.publish_many(events[i : i + batch])


async def test_dropped_connection_mid_stream_loses_nothing(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    handled: set[str] = set()
    name = f"drop-{ev.stream}"
    bus = rabbit.bus(connection_name=name)

    @bus.subscribe(group="g", concurrency=4)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.add(event.order_id)

    events = [(ev.Created(order_id=f"o{i}"), f"k{i % 16}") for i in range(3000)]
    async with bus:
        publishing = asyncio.create_task(publish_all(bus, events))
        await until(lambda: len(handled) >= 500, timeout=60, what="some progress")
        assert await asyncio.to_thread(close_connections_named, name) == 1
        await asyncio.wait_for(publishing, 120)
        await until(lambda: len(handled) == 3000, timeout=120, what="every event")
    assert handled == {f"o{i}" for i in range(3000)}


async def test_broker_restart_while_10000_events_flow(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    handled: set[str] = set()
    bus = rabbit.bus()

    @bus.subscribe(group="g", concurrency=8)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.add(event.order_id)

    events = [(ev.Created(order_id=f"o{i}"), f"k{i % 64}") for i in range(10_000)]
    try:
        async with bus:
            publishing = asyncio.create_task(publish_all(bus, events))
            await until(lambda: len(handled) >= 2000, timeout=120, what="some progress")
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await asyncio.to_thread(rabbitmqctl, "start_app")
            await asyncio.to_thread(rabbitmqctl, "await_startup")
            await asyncio.wait_for(publishing, 300)
            await until(lambda: len(handled) == 10_000, timeout=300, what="every event")
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")  # never leave the broker down
    assert handled == {f"o{i}" for i in range(10_000)}


async def test_broker_restart_keeps_order_per_key_under_concurrent_publishing(
    rabbit: Broker,
) -> None:
    """A steady stream of concurrent publishes (each one a task of its own, not awaited in
    turn) across a broker restart: publishes unconfirmed when the broker went away are
    sent again, oldest first, before any publish issued later, so per key the events
    reach the handler in publish order (duplicates allowed: at-least-once)."""
    ev = make_events(rabbit.stream())
    seen: dict[str, list[int]] = defaultdict(list)
    bus = rabbit.bus()

    @bus.subscribe(group="g", concurrency=8)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        seen[event.order_id].append(event.n)

    keys = [f"k{k}" for k in range(16)]
    per_key = 200
    total = per_key * len(keys)

    async def produce() -> None:
        tasks = []
        for n in range(per_key):
            for key in keys:
                event = ev.Created(order_id=key, n=n)
                tasks.append(asyncio.create_task(bus.publish(event, key=key)))
            await asyncio.sleep(0.02)  # pacing: 16 publishes every 20 ms, all in flight
        await asyncio.gather(*tasks)

    def handled() -> int:
        return sum(len(set(ns)) for ns in seen.values())

    try:
        async with bus:
            producing = asyncio.create_task(produce())
            await until(lambda: handled() >= total // 5, timeout=120, what="some progress")
            await asyncio.to_thread(rabbitmqctl, "stop_app")
            await asyncio.to_thread(rabbitmqctl, "start_app")
            await asyncio.to_thread(rabbitmqctl, "await_startup")
            await asyncio.wait_for(producing, 300)
            await until(lambda: handled() == total, timeout=300, what="every event")
            assert broker_of(bus).link.generation > 1, "the broker restart was not noticed"
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")  # never leave the broker down
    for key, ns in seen.items():
        first_seen = list(dict.fromkeys(ns))  # duplicates (redeliveries) left out
        assert first_seen == list(range(per_key)), f"order broken for {key}: {first_seen}"


async def test_consumer_killed_mid_handler_loses_nothing(rabbit: Broker, tmp_path: Path) -> None:
    ev = make_events(rabbit.stream())
    log = tmp_path / "handled.log"
    log.touch()
    process = _start_consumer(ev.stream, log)
    try:
        assert process.stderr is not None
        ready = await asyncio.wait_for(
            asyncio.to_thread(_wait_for_line, process.stderr, "bus.started"), 60
        )
        assert ready, "the consumer process did not start"
        publisher = rabbit.bus()
        ids = ["a", "b", "hang", *(f"after{i}" for i in range(30))]
        async with publisher:
            await publisher.publish_many([ev.Created(order_id=i) for i in ids])
        await until(lambda: "hanging" in log.read_text(), timeout=60, what="the hang")
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        if process.stderr is not None:
            process.stderr.close()
    before = [line for line in log.read_text().splitlines() if line != "hanging"]
    assert before == ["a", "b"]

    handled: list[str] = []
    second = rabbit.bus()

    @second.subscribe(group="workers")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.append(event.order_id)

    async with second:
        await until(lambda: len(handled) == len(ids) - 2, timeout=60, what="the rest")
    assert handled == ids[2:]


def _start_consumer(stream: str, log: Path) -> subprocess.Popen[str]:
    """The consumer of the kill test, in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.rabbitmq.consumer_app", stream, str(log)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "EVENTBUS_LOG_LEVEL": "INFO"},
    )


def _wait_for_line(stream: Any, needle: str) -> bool:
    return any(needle in line for line in stream)


SECRET = "s3cret-Pa55-word"


@pytest.fixture
def secret_user() -> Any:
    user = "eventbus_secret_test"
    if user in rabbitmqctl("list_users", "--quiet", "--no-table-headers"):
        rabbitmqctl("change_password", user, SECRET)
    else:
        rabbitmqctl("add_user", user, SECRET)
    rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    yield user
    rabbitmqctl("delete_user", user)


async def test_a_connection_the_broker_dropped_is_closed_before_the_next(
    rabbit: Broker,
) -> None:
    """aio-pika leaves a connection the server closed open on the client side; left to
    the garbage collector, its finalizer schedules the close on whatever loop runs then,
    or warns that the coroutine was never awaited. The link closes it itself."""
    ev = make_events(rabbit.stream())
    handled: list[str] = []
    name = f"dropped-{ev.stream}"
    bus = rabbit.bus(connection_name=name)

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.append(event.order_id)

    async with bus:
        link = broker_of(bus).link
        lost = await link.connection()
        assert await asyncio.to_thread(close_connections_named, name) == 1
        await until(lambda: link.reconnects == 1)
        assert lost.is_closed
        await bus.publish(ev.Created(order_id="1"))  # the new connection works
        await until(lambda: "1" in handled)


class _FullQueue(asyncio.Queue[object]):
    """A frame queue that is full and stays full; counts the writes waiting for room."""

    def __init__(self) -> None:
        super().__init__(maxsize=1)
        self.put_nowait(None)
        self.waiting = 0

    async def put(self, item: object) -> None:
        self.waiting += 1
        await super().put(item)


@pytest.mark.parametrize("how", ["publish", "publish_many"])
async def test_a_write_waiting_on_a_connection_that_dies_is_written_on_the_next(
    rabbit: Broker, how: str
) -> None:
    """A write waits for room in the connection's frame queue (aiormq holds ten frames)
    when the broker drops the connection: nothing will ever empty that queue, and aiormq
    does not end such a wait. The publisher takes it as lost and writes it on the next
    connection, instead of waiting until `publish_timeout` (120 s) and failing."""
    ev = make_events(rabbit.stream())
    handled: list[str] = []
    name = f"stuck-{ev.stream}"
    bus = rabbit.bus(connection_name=name, publish_timeout=600)

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        handled.append(event.order_id)

    async with bus:
        await bus.publish(ev.Created(order_id="first"))  # the stream is declared
        channel: Any = broker_of(bus).publisher._channel
        full = _FullQueue()
        channel.write_queue = full  # as the frame queue of a dead connection: never emptied
        stuck: asyncio.Task[Any]
        if how == "publish":
            stuck = asyncio.create_task(bus.publish(ev.Created(order_id="stuck")))
        else:
            batch = [ev.Created(order_id="stuck"), ev.Created(order_id="stuck too")]
            stuck = asyncio.create_task(bus.publish_many(batch))
        await until(lambda: full.waiting > 0, what="the write waiting for room")
        assert await asyncio.to_thread(close_connections_named, name) == 1
        await asyncio.wait_for(stuck, 60)  # written again on the next connection
        expected = ["stuck"] if how == "publish" else ["stuck", "stuck too"]
        await until(lambda: all(e in handled for e in expected), what="the written events")
    assert handled[0] == "first"


async def test_password_never_in_logs_reprs_or_errors(rabbit: Broker, secret_user: str) -> None:
    import structlog

    from eventbus.errors import ConfigurationError

    url = f"amqp://{secret_user}:{SECRET}@127.0.0.1:5672/%2F"
    ev = make_events(rabbit.stream())
    handled: list[str] = []
    name = f"secret-{ev.stream}"
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        bus = rabbit.bus(url, connection_name=name)

        @bus.subscribe(group="g")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            handled.append(event.order_id)

        async with bus:
            texts += [repr(bus), repr(bus.broker), repr(bus.settings), str(bus.settings)]
            await bus.publish(ev.Created(order_id="1"))
            await until(lambda: handled == ["1"])
            assert await asyncio.to_thread(close_connections_named, name) == 1
            await bus.publish(ev.Created(order_id="2"))  # after the reconnection
            # "1" may come again (its ack can be lost with the connection): at-least-once
            await until(lambda: "2" in handled)
            assert set(handled) == {"1", "2"} and handled.count("2") == 1, handled
        for wrong in (url.replace(SECRET, SECRET + "x"), url.replace("5672", "5999")):
            failing = rabbit.bus(wrong)
            with pytest.raises((ConfigurationError, ConnectionError)) as info:
                await failing.start()
            texts += [
                str(info.value),
                repr(info.value),
                repr(info.value.__cause__),
                repr(info.value.__context__),
            ]
    assert any(entry["event"] == "rabbitmq.connection_lost" for entry in logs)
    texts += [repr(entry) for entry in logs]
    leaked = [t for t in texts if SECRET in t]
    assert not leaked, leaked
