"""A subscribed bus instance in a group (`MemoryMember`, a competing consumer) and the
`Consumer` the kernel stops."""

from __future__ import annotations

import asyncio
import contextlib

from eventbus.toolkit import (
    ConsumerState,
    Deliver,
    finish_task,
)

from .delivery import MemoryDelivery
from .state import Entry, Group, Partition


class MemoryMember:
    """One subscribed bus instance in a group (a competing consumer)."""

    def __init__(self, group: Group, deliver: Deliver) -> None:
        self.group = group
        self.deliver = deliver
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.owned: list[Partition] = []
        self.unacked: dict[int, tuple[Partition, Entry]] = {}
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

    def _next(self) -> tuple[Partition, Entry] | None:
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

    def settled(self, partition: Partition, entry: Entry) -> bool:
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
    def __init__(self, member: MemoryMember) -> None:
        self._member = member

    def state(self) -> ConsumerState:
        member = self._member
        if member.paused:
            return ConsumerState(False, "paused (the bus is stopping)")
        return ConsumerState(True)

    async def backlog(self) -> dict[str, int]:
        """Events queued for the group and not yet delivered, per partition."""
        group = self._member.group
        with group.state.lock:
            return {f"{group.stream}[{p.index}]": len(p.queue) for p in group.partitions}

    async def pause(self) -> None:
        member = self._member
        member.paused = True
        member.event.set()

    async def close(self) -> None:
        member = self._member
        member.paused = True
        member.event.set()
        await finish_task(member.task)
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
