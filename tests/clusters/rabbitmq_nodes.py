"""The 3-node RabbitMQ cluster of `scripts/rabbitmq-cluster.sh` as the fault tests see it:
start it, crash, hang and restart its nodes, ask it where each quorum queue's leader is
and whether all its replicas are back online. Blocking calls (a CLI run takes a second or
two): run them in a thread from async code."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pika

from eventbus import EventBus

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rabbitmq-cluster.sh"
NODES = (1, 2, 3)
PORTS = {n: 5680 + n for n in NODES}
URL = "amqp://guest:guest@" + ",".join(f"127.0.0.1:{PORTS[n]}" for n in NODES) + "/"
#: what a quorum queue's replicas look like on this cluster
REPLICAS = len(NODES)


def node_name(n: int) -> str:
    return f"rabbit-c{n}@localhost"


def cluster(*args: str, timeout: float = 300.0) -> str:
    """Run `scripts/rabbitmq-cluster.sh args...`; fail loudly with its output if it fails."""
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise AssertionError(
            f"scripts/rabbitmq-cluster.sh {' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )
    return done.stdout.strip()


def ensure_cluster() -> None:
    """All three nodes running, in one cluster (idempotent: starts what is down, resumes
    what is paused)."""
    cluster("start")


def node_pid(n: int) -> int | None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "pid", str(n)], capture_output=True, text=True, check=False
    )
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def kill(n: int) -> None:
    cluster("kill-node", str(n))


def pause(n: int) -> None:
    cluster("pause-node", str(n))


def resume(n: int) -> None:
    cluster("resume-node", str(n))


def start(n: int) -> None:
    """Start node `n` if it is down and wait until it runs (it rejoins the cluster)."""
    cluster("start-node", str(n))


def restart(n: int) -> None:
    """Graceful stop of node `n`, then start; returns once it runs again."""
    cluster("restart-node", str(n))


def node_of(bus: EventBus) -> int:
    """The node the bus is connected to now (from `bus.health()`: `127.0.0.1:568N (...)`)."""
    detail = bus.health().detail
    match = re.match(r"127\.0\.0\.1:(\d+)\b", detail)
    assert match and int(match.group(1)) in PORTS.values(), f"not on a cluster node: {detail}"
    return int(match.group(1)) - 5680


@dataclass(frozen=True)
class QuorumQueue:
    name: str
    #: the node number of the leader (None: no leader known)
    leader: int | None
    members: int
    online: int


def _number(node: str) -> int | None:
    match = re.fullmatch(r"rabbit-c(\d)@localhost", node)
    return int(match.group(1)) if match else None


def quorum_queues(names: Iterable[str], ask: Iterable[int] = NODES) -> dict[str, QuorumQueue]:
    """Leader, members and online members of the named queues, asked of the first node in
    `ask` that answers (give the live ones)."""
    wanted = set(names)
    errors = []
    for n in ask:
        try:
            done = _list_queues(n)
        except subprocess.TimeoutExpired:
            errors.append(f"node {n}: no answer within 60s")
            continue
        if done.returncode:
            errors.append(f"node {n}: {done.stderr.strip()[:300]}")
            continue
        rows = json.loads(done.stdout or "[]")
        return {
            row["name"]: QuorumQueue(
                row["name"],
                _number(str(row.get("leader") or "")),
                len(row.get("members") or []),
                len(row.get("online") or []),
            )
            for row in rows
            if row["name"] in wanted
        }
    raise AssertionError(f"no node answered list_queues: {errors}")


def _list_queues(n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "ctl",
            str(n),
            "-q",
            "list_queues",
            "name",
            "leader",
            "members",
            "online",
            "--formatter",
            "json",
            "--timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_replicas_online(names: Iterable[str], timeout: float = 120.0) -> float:
    """Wait until each named queue has all `REPLICAS` members online and a leader;
    -> seconds it took. (A poll with a deadline.)"""
    wanted = sorted(names)
    started = time.monotonic()
    while True:
        try:
            queues = quorum_queues(wanted)
        except AssertionError:
            queues = {}
        if len(queues) == len(wanted) and all(
            q.online == q.members == REPLICAS and q.leader is not None for q in queues.values()
        ):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"replicas of {wanted} not all online after {timeout}s: {queues}")
        time.sleep(0.5)


def delete_named_after(streams: Iterable[str]) -> None:
    """Delete every queue and exchange of the cluster named after one of `streams`
    (`<stream>` itself and `<stream>.*`), asked of the first node that answers."""
    names = set(streams)
    if not names:
        return
    prefixes = tuple(f"{s}." for s in names)
    connection = pika.BlockingConnection(
        [pika.ConnectionParameters("127.0.0.1", PORTS[n]) for n in NODES]
    )
    try:
        channel = connection.channel()
        for what, delete in (
            ("list_queues", channel.queue_delete),
            ("list_exchanges", channel.exchange_delete),
        ):
            for name in _names(what):
                if name in names or name.startswith(prefixes):
                    delete(name)
    finally:
        connection.close()


def _names(what: str) -> list[str]:
    for n in NODES:
        done = subprocess.run(
            ["bash", str(SCRIPT), "ctl", str(n), "-q", what, "name", "--no-table-headers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode == 0:
            return [line.strip() for line in done.stdout.splitlines() if line.strip()]
    raise AssertionError(f"no node answered {what}")
