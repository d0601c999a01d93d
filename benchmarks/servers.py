"""The servers the benchmarks talk to (the RabbitMQ node, the Kafka broker, PostgreSQL)
and their CPU time, reported beside the client's: it tells which side sets the pace.

The server is found by the TCP port it listens on (`/proc/net/tcp*` gives the socket's
inode, `/proc/<pid>/fd` the process holding it). Its CPU time is that process's plus its
living descendants' (PostgreSQL's backends), each with the time of its children that
ended and were reaped (`cutime`, `cstime`): a backend that exits during a run is still
counted, by its parent. Linux only; a server on another host, or one whose process this
user may not inspect, is not measured (the report shows "-").
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

#: where each server is (`EVENTBUS_BENCH_*` point the benchmarks elsewhere)
KAFKA_BOOTSTRAP = os.environ.get("EVENTBUS_BENCH_KAFKA", "127.0.0.1:9092")
AMQP_URL = os.environ.get("EVENTBUS_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
POSTGRES_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql://eventbus:eventbus@127.0.0.1:5432/eventbus"
)
#: a scenario's broker name -> the server it talks to (in-process ones have none)
SERVERS = {"kafka": KAFKA_BOOTSTRAP, "rabbitmq": AMQP_URL, "postgresql": POSTGRES_URL}

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LISTEN = "0A"
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


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on `port` (any local address, IPv4 or IPv6)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
                inodes.add(inode)
    return inodes


def listening_pid(port: int) -> int | None:
    """The process listening on `port`, if this user may see its file descriptors."""
    wanted = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    if not wanted:
        return None
    for proc in _PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(proc.name)
        except OSError:  # gone, or not ours to inspect
            continue
    return None


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, CPU ticks incl. reaped children) of a process, None if it is gone."""
    try:
        text = (_PROC / pid / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    # fields[1] = ppid; [11..14] = utime, stime, cutime, cstime (stat fields 14-17)
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds of `root` and its living descendants (None: `root` is gone)."""
    stats = {p.name: _stat(p.name) for p in _PROC.iterdir() if p.name.isdigit()}
    if stats.get(str(root)) is None:
        return None
    children: dict[int, list[int]] = {}
    for name, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        found = stats.get(str(pid))
        if found is not None:
            total += found[1]
            todo.extend(children.get(pid, []))
    return total / _TICK


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
