"""The servers the benchmarks talk to (the RabbitMQ node, the Kafka broker, PostgreSQL)
and their CPU time, reported beside the client's: it tells which side sets the pace.

The server is the process listening on the broker's TCP port (psutil's connection
table). Its CPU time is that process's plus its living descendants' (PostgreSQL's
backends), each with the time of its children that ended and were reaped
(`children_user`, `children_system`): a backend that exits during a run is still counted,
by its parent. A server on another host, or one whose process this user may not inspect
(its sockets are another user's and this one is not root), is not measured: the report
shows "-".
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import psutil

#: where each server is (`EVENTBUS_BENCH_*` point the benchmarks elsewhere)
KAFKA_BOOTSTRAP = os.environ.get("EVENTBUS_BENCH_KAFKA", "127.0.0.1:9092")
AMQP_URL = os.environ.get("EVENTBUS_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus"
)
#: a scenario's broker name -> the server it talks to (in-process ones have none)
SERVERS = {"kafka": KAFKA_BOOTSTRAP, "rabbitmq": AMQP_URL, "postgresql": POSTGRES_URL}

_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


def address_of(url: str) -> tuple[str, int] | None:
    """(host, port) of a broker URL (`amqp://u:p@h:5672/`, `postgresql://...`) or of
    `host:port[,host:port]` (the first)."""
    if "://" not in url:
        url = "tcp://" + url.split(",")[0]
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        return None
    return parts.hostname, parts.port


def listening_pid(port: int) -> int | None:
    """The process listening on `port`, if this user may see it."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # some platforms list connections to root only
        return None
    for connection in connections:
        if (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.pid is not None
        ):
            return connection.pid
    return None


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of `root` and its living descendants, with their reaped children's
    (None: `root` is gone)."""
    try:
        process = psutil.Process(root)
        tree = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    for member in tree:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:  # a descendant that ended just now: its parent counts it
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class ServerClock:
    """The CPU clock of the server listening at a local address (see the module)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    @classmethod
    def at(cls, url: str | None) -> ServerClock:
        """The clock of the server of `url`; one that reads nothing if it is not local."""
        address = address_of(url) if url else None
        if address is None or address[0] not in _LOCAL:
            return cls(None)
        return cls(listening_pid(address[1]))

    def seconds(self) -> float | None:
        """The server's CPU seconds so far (None: not measured)."""
        return tree_cpu_seconds(self.pid) if self.pid is not None else None
