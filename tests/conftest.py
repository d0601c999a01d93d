"""The whole suite: at the end of a session, delete what the brokers still hold named
after the streams this session made (`eventbus.testing.conformance.unique`).

Each harness deletes its own topology at teardown; this catches the rest (tests that run
buses in subprocesses, tests that failed before their teardown), so repeated runs do not
pile up queues and topics on the test brokers (a RabbitMQ node with a few hundred quorum
queues left over slows down every later run). A broker that is not running is skipped:
its own tests fail loudly on their own.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from eventbus.testing.conformance import made_names

RABBITMQ = ("127.0.0.1", 5672)
KAFKA = ("127.0.0.1", 9092)


def _listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def _ours(name: str, streams: frozenset[str]) -> bool:
    base = name.split(".", 1)[0]
    return base in streams or any(name.startswith(f"{s}-") for s in streams)


def _sweep_rabbitmq(streams: frozenset[str]) -> None:
    from tests.rabbitmq.support import delete_topology

    delete_topology(streams)


def _sweep_kafka(streams: frozenset[str]) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"{KAFKA[0]}:{KAFKA[1]}"})
    topics = [t for t in admin.list_topics(timeout=10).topics if _ours(t, streams)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()


@pytest.fixture(scope="session", autouse=True)
def _delete_leftovers() -> Iterator[None]:
    yield
    streams = made_names()
    if not streams:
        return
    for address, sweep in ((RABBITMQ, _sweep_rabbitmq), (KAFKA, _sweep_kafka)):
        if _listening(address):
            try:
                sweep(streams)
            except Exception as exc:  # a clean-up must not fail the run
                print(f"\nclean-up of {address[0]}:{address[1]} failed: {exc!r}")
