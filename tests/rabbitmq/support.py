"""RabbitMQ test helpers: the broker URL, a raw pika client, clean-up of test topology,
and `rabbitmqctl` for fault injection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

import pika
import pika.exceptions

from eventbus import EventBus
from eventbus.adapters.rabbitmq import RabbitMQBroker

URL = os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def broker_of(bus: EventBus) -> RabbitMQBroker:
    """The RabbitMQ broker behind a bus (its link, publisher, ...)."""
    broker = bus.broker
    assert isinstance(broker, RabbitMQBroker), broker
    return broker


def raw_connection() -> pika.BlockingConnection:
    """A plain pika connection; fails loudly (never skips) when the broker is not there."""
    try:
        return pika.BlockingConnection(pika.URLParameters(URL))
    except pika.exceptions.AMQPConnectionError as exc:
        raise AssertionError(
            f"RabbitMQ is not reachable at 127.0.0.1:5672 ({type(exc).__name__}); "
            "start it with scripts/rabbitmq.sh"
        ) from None


def delete_topology(streams: Iterable[str]) -> None:
    """Delete every queue and exchange named after the given streams."""
    prefixes = tuple(f"{s}." for s in streams)
    names = set(streams)
    if not names:
        return
    queues = [q for q in list_names("list_queues") if q.startswith(prefixes) or q in names]
    exchanges = [e for e in list_names("list_exchanges") if e.startswith(prefixes) or e in names]
    connection = raw_connection()
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)
    finally:
        connection.close()


def list_names(what: str) -> list[str]:
    out = rabbitmqctl(what, "name", "--quiet", "--no-table-headers")
    return [line.strip() for line in out.splitlines() if line.strip()]


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def close_connections_named(name: str) -> int:
    out = rabbitmqctl(
        "list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"
    )
    closed = 0
    for line in out.splitlines():
        if f'{{"connection_name","{name}"}}' in line:
            rabbitmqctl("close_connection", line.split("\t", 1)[0], "eventbus fault test")
            closed += 1
    return closed


def active_members(stream: str, group: str, partitions: int) -> dict[str, set[str]]:
    """Partition queue -> the member ids active on it (consumer tags are `<member>/<queue>`);
    waiting single-active consumers are left out."""
    queues = {f"{stream}.{group}.{i}" for i in range(partitions)}
    out = rabbitmqctl(
        "list_consumers", "queue_name", "consumer_tag", "active", "--quiet", "--no-table-headers"
    )
    active: dict[str, set[str]] = {queue: set() for queue in queues}
    for line in out.splitlines():
        fields = line.strip().split("\t")
        if len(fields) == 3 and fields[0] in queues and fields[2] == "true":
            active[fields[0]].add(fields[1].split("/", 1)[0])
    return active
