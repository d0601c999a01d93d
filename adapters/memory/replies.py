"""Request/reply on `memory://`: every requesting bus has an in-process inbox, and a reply
is handed to it directly (on the requester's event loop), never queued on a stream.

Inboxes are named `replies.<n>` in the named broker they belong to; a reply to an inbox
that is gone (its bus stopped) cannot be sent, which the kernel counts as undeliverable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from dataclasses import dataclass

from eventbus.toolkit import Message, ReceiveReply, Reply

from .state import MemoryState

_numbers = itertools.count(1)
_lock = threading.Lock()
#: (broker name, address) -> the inbox
_inboxes: dict[tuple[str, str], Inbox] = {}


@dataclass(slots=True)
class Inbox:
    address: str
    loop: asyncio.AbstractEventLoop
    receive: ReceiveReply


class MemoryReplyChannel:
    """A requesting bus's inbox; requests are published into the named broker as usual."""

    def __init__(self, world: MemoryState, receive: ReceiveReply) -> None:
        self.world = world
        self.address = f"replies.{next(_numbers)}"
        self._loop = asyncio.get_running_loop()
        with _lock:
            _inboxes[(world.name, self.address)] = Inbox(self.address, self._loop, receive)

    async def publish(self, message: Message) -> None:
        self.world.publish(message, self._loop)

    async def close(self) -> None:
        with _lock:
            _inboxes.pop((self.world.name, self.address), None)


def send_reply(world: MemoryState, address: str, message: Message) -> None:
    """Hand a reply to the inbox `address` of the named broker `world`."""
    with _lock:
        inbox = _inboxes.get((world.name, address))
    if inbox is None:
        raise LookupError(f"no reply inbox {address!r} on memory://{world.name}: its bus stopped")
    reply = Reply(dict(message.attributes), message.body)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is inbox.loop:
        inbox.receive(reply)
        return
    with contextlib.suppress(RuntimeError):  # that loop is closed: the requester is gone
        inbox.loop.call_soon_threadsafe(inbox.receive, reply)
