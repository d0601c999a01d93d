"""The named in-process brokers: streams, groups with partitions, delayed retries and
dead-letter lists, shared by every bus of the process that names the same broker.

Brokers are named by the URL (`memory://` is "default", `memory://tests` is "tests") and
outlive the buses that use them, so a stopped bus leaves unconsumed events for the next.
Groups keep their partitions: a key always lands in the same partition, a partition is
owned by one member at a time and handed over only once its in-flight events settled,
which keeps per-key order while members come and go.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import zlib
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from eventbus.toolkit import (
    DeadLetter,
    Message,
    derived_id,
    matches_any,
)

if TYPE_CHECKING:
    from .consumer import MemoryMember

_MAX_ROUTES = 4096
_CACHED_TYPE_LENGTH = 256


class Entry:
    __slots__ = ("attempt", "attributes", "body", "key", "redelivered", "seq")

    def __init__(
        self, seq: int, body: bytes, attributes: dict[str, str], key: str | None, attempt: int
    ) -> None:
        self.seq = seq
        self.body = body
        self.attributes = attributes
        self.key = key
        self.attempt = attempt
        self.redelivered = False


class Partition:
    __slots__ = ("handover", "index", "inflight", "owner", "queue")

    def __init__(self, index: int) -> None:
        self.index = index
        self.queue: deque[Entry] = deque()
        self.owner: MemoryMember | None = None
        self.handover: MemoryMember | None = None
        self.inflight = 0

    def requeue(self, entry: Entry) -> None:
        """Put an unsettled entry back where its sequence number says it belongs."""
        entry.redelivered = True
        queue = self.queue
        if not queue or queue[0].seq > entry.seq:
            queue.appendleft(entry)
            return
        for i, other in enumerate(queue):
            if other.seq > entry.seq:
                queue.insert(i, entry)
                return
        queue.append(entry)


class Group:
    def __init__(self, state: MemoryState, stream: str, name: str, partitions: int) -> None:
        self.state = state
        self.stream = stream
        self.name = name
        self.patterns: tuple[str, ...] = ()
        self.partitions = [Partition(i) for i in range(partitions)]
        self.members: list[MemoryMember] = []
        self._rr = itertools.count()

    def put(self, entry: Entry, loop: asyncio.AbstractEventLoop | None) -> None:
        key = entry.key
        count = len(self.partitions)
        index = (zlib.crc32(key.encode()) if key is not None else next(self._rr)) % count
        partition = self.partitions[index]
        partition.queue.append(entry)
        owner = partition.owner
        if owner is not None:
            owner.wake(loop)

    def rebalance(self) -> None:
        members = self.members
        for i, partition in enumerate(self.partitions):
            target = members[i % len(members)] if members else None
            if partition.owner is target:
                partition.handover = None
                continue
            if partition.inflight and partition.owner is not None:
                partition.handover = target  # hand over once in-flight events settle
            else:
                partition.owner = target
                partition.handover = None
        for member in members:
            member.owned = [p for p in self.partitions if p.owner is member]
            member.wake(None)


class MemoryState:
    """One named in-process broker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.groups: dict[str, dict[str, Group]] = {}
        self.routes: dict[tuple[str, str], list[Group]] = {}
        self.dead: dict[tuple[str, str], list[DeadLetter]] = {}
        self.delayed: dict[
            int, tuple[asyncio.TimerHandle, asyncio.AbstractEventLoop, Group, Entry]
        ] = {}
        self.seq = itertools.count(1)
        self.dead_seq = itertools.count()

    def group(self, stream: str, name: str, partitions: int) -> Group:
        with self.lock:
            groups = self.groups.setdefault(stream, {})
            group = groups.get(name)
            if group is None:
                group = groups[name] = Group(self, stream, name, partitions)
            return group

    def bind(self, group: Group, patterns: tuple[str, ...]) -> None:
        with self.lock:
            group.patterns = tuple(sorted(set(group.patterns) | set(patterns)))
            self.routes = {k: v for k, v in self.routes.items() if k[0] != group.stream}

    def route(self, stream: str, event_type: str) -> list[Group]:
        groups = self.routes.get((stream, event_type))
        if groups is None:
            with self.lock:
                groups = [
                    g
                    for g in self.groups.get(stream, {}).values()
                    if matches_any(g.patterns, event_type)
                ]
                # producers choose the types: the cache never grows without bound
                if len(event_type) <= _CACHED_TYPE_LENGTH:
                    if len(self.routes) >= _MAX_ROUTES:
                        self.routes = {}
                    self.routes[(stream, event_type)] = groups
        return groups

    def publish(self, message: Message, loop: asyncio.AbstractEventLoop | None) -> None:
        for group in self.route(message.stream, message.type):
            group.put(
                Entry(
                    next(self.seq), message.body, message.attributes, message.key, message.attempt
                ),
                loop,
            )

    def inject(
        self,
        stream: str,
        body: bytes,
        attributes: dict[str, str],
        key: str | None = None,
        attempt: int = 1,
    ) -> None:
        """Put a raw message on a stream, as a foreign producer would (tests, tools). An
        event without an id gets one derived from its place in this broker, the same for
        every group and every redelivery."""
        event_type = attributes.get("type", "")
        seq = next(self.seq)
        if not attributes.get("id"):
            attributes = {**attributes, "id": derived_id("memory", self.name, stream, seq)}
        for group in self.route(stream, event_type) if event_type else self._all(stream):
            group.put(Entry(seq, body, dict(attributes), key, attempt), current_loop())

    def _all(self, stream: str) -> list[Group]:
        with self.lock:
            return list(self.groups.get(stream, {}).values())

    def schedule(self, group: Group, entry: Entry, delay: float) -> None:
        loop = asyncio.get_running_loop()
        ident = entry.seq

        def fire() -> None:
            self.delayed.pop(ident, None)
            group.put(entry, loop)

        self.delayed[ident] = (loop.call_later(delay, fire), loop, group, entry)

    def flush_delayed(self, loop: asyncio.AbstractEventLoop) -> None:
        """A loop is going away: its pending delayed retries become due now, not lost."""
        for ident, (handle, owner, group, entry) in list(self.delayed.items()):
            if owner is loop:
                handle.cancel()
                self.delayed.pop(ident, None)
                group.put(entry, None)


_STATES: dict[str, MemoryState] = {}
_STATES_LOCK = threading.Lock()


def memory_state(name: str = "default") -> MemoryState:
    """The named in-process broker (created on first use)."""
    with _STATES_LOCK:
        state = _STATES.get(name)
        if state is None:
            state = _STATES[name] = MemoryState(name)
        return state


def name_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc or parts.path.strip("/") or "default").lower()


def current_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
