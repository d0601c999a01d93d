"""`MemoryBroker`: the `Broker` of `memory://`, on a named in-process broker (`state`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from eventbus.toolkit import (
    DEAD_LETTER_HEADERS,
    Capabilities,
    Consumer,
    DeadLetter,
    Deliver,
    LinkState,
    Message,
    ReceiveReply,
    Select,
    Settings,
    SubscriptionSpec,
    parse_options,
    subscription_options,
    supervise,
)

from .consumer import MemoryConsumer, MemoryMember
from .replies import MemoryReplyChannel, send_reply
from .settings import MemoryOptions, SubscriptionOptions
from .state import Entry, memory_state, name_of


class MemoryBroker:
    """The `Broker` of `memory://`."""

    capabilities = Capabilities(
        shared_across_processes=False,
        delayed_retry=True,
        request_reply=True,
        replays_history_to_new_groups=False,
        unroutable_is_error=False,
        binary_headers=False,
        transactions=True,  # staged events are published in the step that acks
        system="memory",
    )

    def __init__(self, settings: Settings) -> None:
        self.partitions = parse_options(
            MemoryOptions, settings.options, label="memory:// option", prefix="memory:// "
        ).partitions
        self.world = memory_state(name_of(settings.url))
        self._loop: asyncio.AbstractEventLoop | None = None

    def state(self) -> LinkState:
        return LinkState(True, "in process")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        if self._loop is not None:
            self.world.flush_delayed(self._loop)

    async def publish(self, message: Message) -> None:
        self.world.publish(message, self._loop)

    async def publish_many(self, messages: list[Message]) -> None:
        publish = self.world.publish
        loop = self._loop
        for message in messages:
            publish(message, loop)

    # --- request/reply: an in-process inbox per requesting bus (`replies`) ----------------

    async def reply_channel(self, receive: ReceiveReply) -> MemoryReplyChannel:
        return MemoryReplyChannel(self.world, receive)

    async def send_reply(self, address: str, message: Message) -> None:
        send_reply(self.world, address, message)

    async def subscribe(self, spec: SubscriptionSpec, deliver: Deliver) -> Consumer:
        options = subscription_options(SubscriptionOptions, spec, "memory://")
        partitions = options.partitions or self.partitions
        state = self.world
        group = state.group(spec.stream, spec.group, partitions)
        state.bind(group, spec.patterns)
        member = MemoryMember(group, deliver)
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
        state = self.world
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
        with self.world.lock:
            letters = list(self.world.dead.get((stream, group), ()))
        for dead in letters:
            yield dead

    async def replay_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        state = self.world
        target = state.groups.get(stream, {}).get(group)
        if target is None:  # nobody to replay to: keep them
            return 0
        chosen = self._take(stream, group, select)
        for dead in chosen:
            attributes = {k: v for k, v in dead.attributes.items() if k not in DEAD_LETTER_HEADERS}
            target.put(Entry(next(state.seq), dead.body, attributes, dead.key, 1), self._loop)
        return len(chosen)

    async def purge_dead_letters(
        self, stream: str, group: str, select: Select | None = None
    ) -> int:
        return len(self._take(stream, group, select))

    def _take(self, stream: str, group: str, select: Select | None) -> list[DeadLetter]:
        """Remove the selected dead letters of a group; the others stay, in order (and so
        do those dead-lettered meanwhile: `select` runs without the lock)."""
        state = self.world
        with state.lock:
            letters = state.dead.get((stream, group))
            if not letters:
                return []
            seen = list(letters)
        chosen = seen if select is None else [dead for dead in seen if select(dead)]
        if not chosen:
            return []
        with state.lock:
            current = state.dead.get((stream, group), [])
            present = {id(dead) for dead in current}
            chosen = [dead for dead in chosen if id(dead) in present]  # not taken meanwhile
            taken = {id(dead) for dead in chosen}
            state.dead[(stream, group)] = [d for d in current if id(d) not in taken]
        return chosen
