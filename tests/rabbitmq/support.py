"""RabbitMQ test helpers: the broker URL, a raw pika client, clean-up of test topology,
and `rabbitmqctl` for fault injection."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

import pika
import pika.exceptions

URL = os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


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
    exchanges = [
        e for e in list_names("list_exchanges") if e.startswith(prefixes) or e in names
    ]
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
