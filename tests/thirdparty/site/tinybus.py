"""`tinybus://`: a third-party adapter as small as the contract allows, written outside
eventbus against its adapter protocol only, and installed through the `eventbus.adapters`
entry point (see the dist-info beside this file).

One in-process queue per group; members of a group compete for it, and an event is not
handed out while another event of its key is in flight, so per-key order holds across
members. No delayed retries (its capabilities say so), no transport headers.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from eventbus.protocol import (
    Capabilities,
    Consumer,
    DeadLetter,
    Deliver,
    Delivery,
    Message,
    SubscriptionSpec,
    supervise,
)
from eventbus.routing import matches_any
from eventbus.settings import Settings
from eventbus.wire import derived_id


@dataclass
class _Entry:
    seq: int
    body: bytes
    attributes: dict[str, str]
    key: str | None
    attempt: int = 1
    redelivered: bool = False


@dataclass
class _Group:
    patterns: tuple[str, ...]
    queue: list[_Entry] = field(default_factory=list)
    busy_keys: set[str] = field(default_factory=set)
    wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)

    def take(self) -> _Entry | None:
        for i, entry in enumerate(self.queue):
            if entry.key is None or entry.key not in self.busy_keys:
                if entry.key is not None:
                    self.busy_keys.add(entry.key)
                return self.queue.pop(i)
        return None

    def put(self, entry: _Entry) -> None:
        """In sequence order (a given-back entry returns to its place)."""
        index = len(self.queue)
        while index and self.queue[index - 1].seq > entry.seq:
            index -= 1
        self.queue.insert(index, entry)
        for loop, event in list(self.wakers):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop is closed
                self.wakers.remove((loop, event))


class _World:
    """One named tinybus broker (`tinybus://name`), shared by every bus of the process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.groups: dict[tuple[str, str], _Group] = {}
        self.dead: dict[tuple[str, str], list[DeadLetter]] = {}
        self.seq = itertools.count(1)

    def publish(
        self, stream: str, body: bytes, attributes: dict[str, str], key: str | None
    ) -> None:
        with self.lock:
            seq = next(self.seq)
            if not attributes.get("id"):
                attributes = {**attributes, "id": derived_id("tinybus", self.name, seq)}
            event_type = attributes.get("type", "")
            for (group_stream, _), group in self.groups.items():
                if group_stream == stream and (
                    not event_type or matches_any(group.patterns, event_type)
                ):
                    group.put(_Entry(seq, body, attributes, key))


_WORLDS: dict[str, _World] = {}


def world(url: str) -> _World:
    name = url.partition("://")[2].strip("/") or "default"
    return _WORLDS.setdefault(name, _World(name))


class TinyDelivery(Delivery):
    __slots__ = ("_entry", "_group", "_member")

    def __init__(self, member: _Member, entry: _Entry) -> None:
        super().__init__(
            stream=member.spec.stream,
            body=entry.body,
            attributes=entry.attributes,
            key=entry.key,
            attempt=entry.attempt,
            redelivered=entry.redelivered,
        )
        self._member = member
        self._entry = entry

    def _done(self) -> bool:
        return self._member.settle(self._entry)

    async def ack(self) -> None:
        self._done()

    async def nack(self) -> None:
        if self._done():
            self._entry.redelivered = True
            with self._member.world.lock:
                self._member.group.put(self._entry)

    async def retry_later(self, attempt: int, delay: float) -> None:
        raise NotImplementedError("tinybus has no delayed retries (capabilities say so)")

    async def dead_letter(self, info: dict[str, str]) -> None:
        if not self._done():
            return
        entry, spec = self._entry, self._member.spec
        with self._member.world.lock:
            self._member.world.dead.setdefault((spec.stream, spec.group), []).append(
                DeadLetter(
                    stream=spec.stream,
                    group=spec.group,
                    body=entry.body,
                    headers=dict(info),
                    attributes=dict(entry.attributes),
                    key=entry.key,
                )
            )


class _Member:
    def __init__(self, world: _World, spec: SubscriptionSpec, deliver: Deliver) -> None:
        self.world = world
        self.spec = spec
        self.deliver = deliver
        self.wake = asyncio.Event()
        self.paused = False
        self.unsettled: dict[int, _Entry] = {}
        with world.lock:
            group = world.groups.get((spec.stream, spec.group))
            if group is None:
                group = world.groups[(spec.stream, spec.group)] = _Group(spec.patterns)
            group.wakers.append((asyncio.get_running_loop(), self.wake))
        self.group = group
        self.task = asyncio.create_task(self.run())
        supervise(self.task, spec, "tinybus member", lambda: self.paused)

    async def run(self) -> None:
        while not self.paused:
            with self.world.lock:
                entry = self.group.take()
                if entry is not None:
                    self.unsettled[entry.seq] = entry
            if entry is None:
                self.wake.clear()
                await self.wake.wait()
                continue
            await self.deliver(TinyDelivery(self, entry))

    def settle(self, entry: _Entry) -> bool:
        with self.world.lock:
            if self.unsettled.pop(entry.seq, None) is None:
                return False
            if entry.key is not None:
                self.group.busy_keys.discard(entry.key)
            for loop, event in self.group.wakers:
                loop.call_soon_threadsafe(event.set)
            return True


class TinyConsumer:
    def __init__(self, member: _Member) -> None:
        self.member = member

    async def pause(self) -> None:
        self.member.paused = True
        self.member.wake.set()

    async def close(self) -> None:
        member = self.member
        member.paused = True
        member.wake.set()
        if not member.task.done():
            member.task.cancel()
            await asyncio.gather(member.task, return_exceptions=True)
        with member.world.lock:
            for entry in list(member.unsettled.values()):
                member.unsettled.pop(entry.seq)
                if entry.key is not None:
                    member.group.busy_keys.discard(entry.key)
                entry.redelivered = True
                member.group.put(entry)
            member.group.wakers = [w for w in member.group.wakers if w[1] is not member.wake]


class TinyBroker:
    capabilities = Capabilities(
        shared_across_processes=False, delayed_retry=False, binary_headers=False
    )

    def __init__(self, settings: Settings) -> None:
        self.world = world(settings.url)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, message: Message) -> None:
        self.world.publish(message.stream, message.body, message.attributes, message.key)

    async def publish_many(self, messages: Sequence[Message]) -> None:
        for message in messages:
            await self.publish(message)

    async def subscribe(self, spec: SubscriptionSpec, deliver: Deliver) -> Consumer:
        return TinyConsumer(_Member(self.world, spec, deliver))

    async def dead_letters(self, stream: str, group: str) -> AsyncIterator[DeadLetter]:
        with self.world.lock:
            letters = list(self.world.dead.get((stream, group), ()))
        for letter in letters:
            yield letter

    async def replay_dead_letters(self, stream: str, group: str) -> int:
        with self.world.lock:
            letters = self.world.dead.pop((stream, group), [])
            target = self.world.groups.get((stream, group))
            if target is None:  # nobody to replay to: keep them
                self.world.dead[(stream, group)] = letters
                return 0
            for letter in letters:
                target.put(_Entry(next(self.world.seq), letter.body, letter.attributes, letter.key))
        return len(letters)


class TinySyncTransport:
    def __init__(self, settings: Settings) -> None:
        self.world = world(settings.url)

    def publish(self, messages: Sequence[Message]) -> None:
        for m in messages:
            self.world.publish(m.stream, m.body, m.attributes, m.key)

    def close(self) -> None:
        pass


class TinyAdapter:
    def create_broker(self, settings: Settings) -> TinyBroker:
        return TinyBroker(settings)

    def create_sync_transport(self, settings: Settings) -> TinySyncTransport:
        return TinySyncTransport(settings)


adapter = TinyAdapter()
