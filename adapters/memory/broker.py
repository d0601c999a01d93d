"""The in-memory broker: streams, groups with partitions, competing members, redelivery,
delayed retries and dead-letter lists, all inside one process.

Brokers are named by the URL (`memory://` is "default", `memory://tests` is "tests") and
outlive the buses that use them, so a stopped bus leaves unconsumed events for the next.
Groups keep their partitions: a key always lands in the same partition, a partition is
owned by one member at a time and handed over only once its in-flight events settled,
which keeps per-key order while members come and go.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from eventbus.broker import (
    Capabilities,
    Consumer,
    DeadLetter,
    Deliver,
    Delivery,
    Message,
    SubscriptionSpec,
    supervise,
)
from eventbus.deadletter import DEAD_LETTER_HEADERS
from eventbus.routing import matches_any
from eventbus.settings import Settings, parse_options
from eventbus.wire import ATTEMPT_HEADER, derived_id

DEFAULT_PARTITIONS = 8
_MAX_ROUTES = 4096
_CACHED_TYPE_LENGTH = 256


class MemoryOptions(BaseModel):
    """`EventBus("memory://", partitions=...)`: the default partitions of new groups."""

    model_config = ConfigDict(extra="forbid")
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=1024)


class SubscriptionOptions(BaseModel):
    """`bus.subscribe(..., partitions=...)` on memory://: partitions of a new group."""

    model_config = ConfigDict(extra="forbid")
    partitions: int | None = Field(default=None, ge=1, le=1024)


class _Entry:
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


class _Partition:
    __slots__ = ("handover", "index", "inflight", "owner", "queue")

    def __init__(self, index: int) -> None:
        self.index = index
        self.queue: deque[_Entry] = deque()
        self.owner: _Member | None = None
        self.handover: _Member | None = None
        self.inflight = 0

    def requeue(self, entry: _Entry) -> None:
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


class _Group:
    def __init__(self, state: _State, stream: str, name: str, partitions: int) -> None:
        self.state = state
        self.stream = stream
        self.name = name
        self.patterns: tuple[str, ...] = ()
        self.partitions = [_Partition(i) for i in range(partitions)]
        self.members: list[_Member] = []
        self._rr = itertools.count()

    def put(self, entry: _Entry, loop: asyncio.AbstractEventLoop | None) -> None:
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


class _State:
    """One named in-process broker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.groups: dict[str, dict[str, _Group]] = {}
        self.routes: dict[tuple[str, str], list[_Group]] = {}
        self.dead: dict[tuple[str, str], list[DeadLetter]] = {}
        self.delayed: dict[
            int, tuple[asyncio.TimerHandle, asyncio.AbstractEventLoop, _Group, _Entry]
        ] = {}
        self.seq = itertools.count(1)
        self.dead_seq = itertools.count()

    def group(self, stream: str, name: str, partitions: int) -> _Group:
        with self.lock:
            groups = self.groups.setdefault(stream, {})
            group = groups.get(name)
            if group is None:
                group = groups[name] = _Group(self, stream, name, partitions)
            return group

    def bind(self, group: _Group, patterns: tuple[str, ...]) -> None:
        with self.lock:
            group.patterns = tuple(sorted(set(group.patterns) | set(patterns)))
            self.routes = {k: v for k, v in self.routes.items() if k[0] != group.stream}

    def route(self, stream: str, event_type: str) -> list[_Group]:
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
                _Entry(
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
            group.put(_Entry(seq, body, dict(attributes), key, attempt), _loop())

    def _all(self, stream: str) -> list[_Group]:
        with self.lock:
            return list(self.groups.get(stream, {}).values())

    def schedule(self, group: _Group, entry: _Entry, delay: float) -> None:
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


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


def memory_state(name: str = "default") -> _State:
    """The named in-process broker (created on first use)."""
    with _STATES_LOCK:
        state = _STATES.get(name)
        if state is None:
            state = _STATES[name] = _State(name)
        return state


def _name_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.netloc or parts.path.strip("/") or "default").lower()


def _loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class MemoryDelivery(Delivery):
    __slots__ = ("_entry", "_member", "_partition")

    def __init__(self, member: _Member, partition: _Partition, entry: _Entry) -> None:
        # slots set directly: this runs once per delivered event
        self.stream = member.group.stream
        self.body = entry.body
        self.attributes = entry.attributes
        self.headers = {}
        self.key = entry.key
        self.attempt = entry.attempt
        self.partition = partition.index
        self.offset = None
        self.routing_key = None
        self.redelivered = entry.redelivered
        self.defect = None
        self._member = member
        self._partition = partition
        self._entry = entry

    async def ack(self) -> None:
        self._member.settled(self._partition, self._entry)

    async def nack(self) -> None:
        if self._member.settled(self._partition, self._entry):
            self._partition.requeue(self._entry)
            owner = self._partition.owner
            if owner is not None:
                owner.wake(None)

    async def retry_later(self, attempt: int, delay: float) -> None:
        entry = self._entry
        copy = _Entry(entry.seq, entry.body, entry.attributes, entry.key, attempt)
        group = self._member.group
        group.state.schedule(group, copy, delay)
        self._member.settled(self._partition, entry)

    async def dead_letter(self, info: dict[str, str]) -> None:
        entry = self._entry
        group = self._member.group
        state = group.state
        headers = {f"ce-{k}": v for k, v in entry.attributes.items()}
        headers[ATTEMPT_HEADER] = str(entry.attempt)
        headers.update(info)
        state.dead.setdefault((group.stream, group.name), []).append(
            DeadLetter(
                stream=group.stream,
                group=group.name,
                body=entry.body,
                headers=headers,
                attributes=dict(entry.attributes),
                key=entry.key,
                position=next(state.dead_seq),
            )
        )
        self._member.settled(self._partition, entry)


class _Member:
    """One subscribed bus instance in a group (a competing consumer)."""

    def __init__(self, group: _Group, deliver: Deliver) -> None:
        self.group = group
        self.deliver = deliver
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.owned: list[_Partition] = []
        self.unacked: dict[int, tuple[_Partition, _Entry]] = {}
        self.paused = False
        self.task: asyncio.Task[None] | None = None
        self._rr = 0

    def wake(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if loop is self.loop:
            if not self.event.is_set():
                self.event.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: the member is gone
                self.loop.call_soon_threadsafe(self.event.set)

    def _next(self) -> tuple[_Partition, _Entry] | None:
        owned = self.owned
        count = len(owned)
        start = self._rr
        for i in range(count):
            partition = owned[(start + i) % count]
            if partition.queue and partition.owner is self and partition.handover is None:
                self._rr = (start + i + 1) % count
                return partition, partition.queue.popleft()
        return None

    async def run(self) -> None:
        event = self.event
        while not self.paused:
            found = self._next()
            if found is None:
                event.clear()
                await event.wait()
                continue
            partition, entry = found
            partition.inflight += 1
            self.unacked[id(entry)] = (partition, entry)
            await self.deliver(MemoryDelivery(self, partition, entry))

    def settled(self, partition: _Partition, entry: _Entry) -> bool:
        """Forget an entry; hand the partition over if a rebalance waits for it."""
        if self.unacked.pop(id(entry), None) is None:
            return False
        partition.inflight -= 1
        if not partition.inflight and partition.handover is not None:
            partition.owner, partition.handover = partition.handover, None
            with self.group.state.lock:
                for member in self.group.members:
                    member.owned = [p for p in self.group.partitions if p.owner is member]
            if partition.owner is not None:
                partition.owner.wake(None)
        return True


class MemoryConsumer:
    def __init__(self, member: _Member) -> None:
        self._member = member

    async def pause(self) -> None:
        member = self._member
        member.paused = True
        member.event.set()

    async def close(self) -> None:
        member = self._member
        member.paused = True
        task = member.task
        if task is not None and not task.done():
            member.event.set()
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.shield(task)
            except TimeoutError:  # stuck in a handler past the shutdown timeout
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # whatever was not settled goes back, in order
        for partition, entry in sorted(member.unacked.values(), key=lambda pe: -pe[1].seq):
            partition.inflight -= 1
            partition.requeue(entry)
        member.unacked.clear()
        group = member.group
        with group.state.lock:
            if member in group.members:
                group.members.remove(member)
            for partition in group.partitions:
                if partition.owner is member:
                    partition.owner = None
                if partition.handover is member:
                    partition.handover = None
        with group.state.lock:
            group.rebalance()


class MemoryBroker:
    """The `Broker` of `memory://`."""

    capabilities = Capabilities(
        shared_across_processes=False,
        delayed_retry=True,
        replays_history_to_new_groups=False,
        unroutable_is_error=False,
        binary_headers=False,
    )

    def __init__(self, settings: Settings) -> None:
        self.partitions = parse_options(
            MemoryOptions, settings.options, label="memory:// option", prefix="memory:// "
        ).partitions
        self.state = memory_state(_name_of(settings.url))
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if self._loop is not None:
            self.state.flush_delayed(self._loop)

    async def publish(self, message: Message) -> None:
        self.state.publish(message, self._loop)

    async def publish_many(self, messages: Sequence[Message]) -> None:
        publish = self.state.publish
        loop = self._loop
        for message in messages:
            publish(message, loop)

    async def subscribe(self, spec: SubscriptionSpec, deliver: Deliver) -> Consumer:
        options = parse_options(
            SubscriptionOptions,
            spec.options,
            label="memory:// subscribe() option",
            prefix="subscribe(): ",
        )
        partitions = options.partitions or self.partitions
        state = self.state
        group = state.group(spec.stream, spec.group, partitions)
        state.bind(group, spec.patterns)
        member = _Member(group, deliver)
        with state.lock:
            group.members.append(member)
            group.rebalance()
        member.task = task = asyncio.create_task(
            member.run(), name=f"memory:{spec.stream}.{spec.group}"
        )
        supervise(task, spec, "memory consumer task", lambda: member.paused)
        return MemoryConsumer(member)

    def busy(self) -> int:
        """Events queued, in flight or waiting for a delayed retry, over every group."""
        state = self.state
        with state.lock:
            groups = [g for per_stream in state.groups.values() for g in per_stream.values()]
        count = len(state.delayed)
        for group in groups:
            if not group.members:
                continue  # nobody consumes it: its backlog is not work in progress
            for partition in group.partitions:
                count += len(partition.queue) + partition.inflight
        return count

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every event published so far was handled (see `eventbus.testing`)."""
        async with asyncio.timeout(timeout):
            quiet = 0
            while quiet < 3:  # idle across a few loop turns: handlers may publish more
                quiet = quiet + 1 if not self.busy() else 0
                await asyncio.sleep(0 if quiet else 0.001)

    async def dead_letters(self, stream: str, group: str) -> AsyncIterator[DeadLetter]:
        for dead in list(self.state.dead.get((stream, group), ())):
            yield dead

    async def replay_dead_letters(self, stream: str, group: str) -> int:
        state = self.state
        letters = state.dead.pop((stream, group), [])
        target = state.groups.get(stream, {}).get(group)
        if target is None:
            state.dead[(stream, group)] = letters
            return 0
        for dead in letters:
            attributes = {k: v for k, v in dead.attributes.items() if k not in DEAD_LETTER_HEADERS}
            target.put(_Entry(next(state.seq), dead.body, attributes, dead.key, 1), self._loop)
        return len(letters)


class MemorySyncTransport:
    """Sync face of `memory://`: thread-safe publishing into the named broker."""

    def __init__(self, settings: Settings) -> None:
        self.state = memory_state(_name_of(settings.url))

    def publish(self, messages: Sequence[Message]) -> None:
        loop = _loop()
        for message in messages:
            self.state.publish(message, loop)

    def close(self) -> None:
        pass


class MemoryAdapter:
    def create_broker(self, settings: Settings) -> MemoryBroker:
        return MemoryBroker(settings)

    def create_sync_transport(self, settings: Settings) -> MemorySyncTransport:
        return MemorySyncTransport(settings)
