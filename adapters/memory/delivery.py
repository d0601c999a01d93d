"""`MemoryDelivery`: one event handed to a member, settled on the in-process broker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.toolkit import (
    ATTEMPT_HEADER,
    DeadLetter,
    Delivery,
)

from .state import Entry, Partition

if TYPE_CHECKING:
    from .consumer import MemoryMember


class MemoryDelivery(Delivery):
    __slots__ = ("_entry", "_member", "_partition")

    def __init__(self, member: MemoryMember, partition: Partition, entry: Entry) -> None:
        Delivery.__init__(  # positional: this runs once per delivered event
            self,
            member.group.stream,
            entry.body,
            entry.attributes,
            {},
            entry.key,
            entry.attempt,
            partition.index,
            None,
            None,
            entry.redelivered,
        )
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
        copy = Entry(entry.seq, entry.body, entry.attributes, entry.key, attempt)
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
        dead = DeadLetter(
            stream=group.stream,
            group=group.name,
            body=entry.body,
            headers=headers,
            attributes=dict(entry.attributes),
            key=entry.key,
            position=next(state.dead_seq),
        )
        with state.lock:
            state.dead.setdefault((group.stream, group.name), []).append(dead)
        self._member.settled(self._partition, entry)
