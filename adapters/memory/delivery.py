"""`MemoryDelivery`: one event handed to a member, settled on the in-process broker.

Exactly-once subscriptions: the events a handler publishes are staged here and published
by `ack` in the same synchronous step that settles the delivery (nothing can interleave
on the event loop), so both happen or neither does; any other settlement drops them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.toolkit import (
    ATTEMPT_HEADER,
    DeadLetter,
    Delivery,
    Message,
)

from .state import Entry, Partition

if TYPE_CHECKING:
    from .consumer import MemoryMember


class MemoryDelivery(Delivery):
    __slots__ = ("_entry", "_member", "_partition", "_staged")

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
        self._staged: list[Message] | None = None

    async def ack(self) -> None:
        staged, self._staged = self._staged, None
        member = self._member
        if member.settled(self._partition, self._entry) and staged:
            publish = member.group.state.publish
            for message in staged:
                publish(message, member.loop)

    async def stage(self, message: Message) -> None:
        if self._staged is None:
            self._staged = [message]
        else:
            self._staged.append(message)

    def unstage(self) -> None:
        self._staged = None

    async def nack(self) -> None:
        self._staged = None
        if self._member.settled(self._partition, self._entry):
            self._partition.requeue(self._entry)
            owner = self._partition.owner
            if owner is not None:
                owner.wake(None)

    async def retry_later(self, attempt: int, delay: float) -> None:
        self._staged = None
        entry = self._entry
        copy = Entry(entry.seq, entry.body, entry.attributes, entry.key, attempt)
        group = self._member.group
        group.state.schedule(group, copy, delay)
        self._member.settled(self._partition, entry)

    async def dead_letter(self, info: dict[str, str]) -> None:
        self._staged = None
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
