"""Many confirmed publishes in one write, on an aiormq channel.

aiormq's `basic_publish` is one coroutine per message: it takes the channel's lock, starts
a timer, queues one frame set for the connection's writer task, which writes it to the
socket on its own (a system call per message), and every caller awaits its confirm in a
task of its own. At the rates a batch reaches, that machinery costs more CPU than the
AMQP encoding and the broker's round trip together: a batch of publishes, written as
`write_batch` writes them, takes about half the client CPU per event.

`write_batch` does what `basic_publish` does for each message, for all of them under one
hold of the lock: the next delivery tag, a confirmation future registered where the
channel's reader resolves it (`confirmations`), the message id mapped to the tag so that a
`basic.return` fails the right publish (`message_id_delivery_tag`), and the frames (the
body split at the negotiated frame size); then it queues all the frames as one write. The
broker numbers publishes in the order they reach it, so the tags taken under the lock are
the broker's.

These are aiormq's channel attributes, not its documented API: `batching(channel)` checks
that they are there, and without them each publish goes through `basic_publish` as
before (slower, the same outcome), and a warning names what is missing, once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Iterator, Sequence
from importlib.metadata import version as _version
from typing import Any, Protocol, cast
from uuid import uuid4

from aiormq.abc import AbstractChannel, ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from eventbus.toolkit import get_logger

#: the aiormq channel attributes a batch writes through
_NEEDED = (
    "confirmations",
    "message_id_delivery_tag",
    "delivery_tag",
    "write_queue",
    "max_content_size",
    "number",
    "lock",
    "create_future",
    "publisher_confirms",
)


class Publish(Protocol):
    """One publish of a batch (the publisher's pending entry)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties
    mandatory: bool
    #: (channel, delivery tag) of the write, set by `write_batch` (see `unmatch`)
    match: tuple[AbstractChannel, int] | None

    def write(self, channel: AbstractChannel) -> Awaitable[Any]: ...


class _Watch:
    """The tasks writing on one channel now: the channel's closing cancels them.

    One future of the channel's own per channel (aiormq rejects all of them when the
    channel closes, at once if it is closed already), not one per write: a write only
    enters and leaves `tasks`. Not `channel.closing`: before aiormq 7.2 that is the
    channel's closing future itself."""

    __slots__ = ("closed", "tasks")

    def __init__(self, channel: AbstractChannel) -> None:
        #: task -> whether the closing cancelled it
        self.tasks: dict[asyncio.Task[Any], bool] = {}
        self.closed: asyncio.Future[Any] = cast(Any, channel).create_future()
        self.closed.add_done_callback(self._on_closed)

    def _on_closed(self, future: asyncio.Future[Any]) -> None:
        for task in list(self.tasks):
            if not task.done():
                self.tasks[task] = True
                task.cancel("eventbus: the channel closed under a waiting write")


_watches: weakref.WeakKeyDictionary[AbstractChannel, _Watch] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def lost_with(channel: AbstractChannel) -> Iterator[None]:
    """A write on `channel` that is still waiting when the channel closes ends with
    `ChannelInvalidStateError` (the publisher's "lost": the recovery writes it again).

    aiormq rejects a closed channel's confirmations, but not a write that waits for its
    lock or for room in the connection's frame queue (ten frames): once the connection
    died, nothing empties that queue, and such a write would wait forever. The block runs
    in the caller's task, so the write still queues its frames before that task first
    suspends (the publisher's wire order relies on it)."""
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("lost_with needs a running task")
    watch = _watches.get(channel)
    if watch is None:
        watch = _watches[channel] = _Watch(channel)
    if watch.closed.done():  # closed already: a write now would wait forever
        raise ChannelInvalidStateError("the channel is closed")
    tasks = watch.tasks
    if task in tasks:  # nested in a write of the same task: that one watches
        yield
        return
    tasks[task] = False
    try:
        yield
    except asyncio.CancelledError:
        if tasks.get(task) and task.uncancel() == 0:  # ours alone, not the caller's
            raise ChannelInvalidStateError("the channel closed while the write waited") from None
        raise
    finally:
        del tasks[task]


def batching(channel: AbstractChannel) -> bool:
    """Whether `write_batch` can write on this channel in one go."""
    return getattr(channel, "publisher_confirms", False) is True and not _missing(channel)


def _missing(channel: AbstractChannel) -> list[str]:
    return [name for name in _NEEDED if not hasattr(channel, name)]


#: whether the fallback was reported (once per process)
_warned: list[bool] = []


def _fall_back(channel: AbstractChannel) -> None:
    if _warned:
        return
    _warned.append(True)
    get_logger().warning(
        "publish.batching_unavailable",
        reason="this aiormq channel lacks what a batch writes through: each publish of a "
        "batch goes through basic_publish (the same outcome, about twice the CPU)",
        missing=_missing(channel),
        confirms=getattr(channel, "publisher_confirms", None),
        aiormq=_version("aiormq"),
    )


async def write_batch(channel: AbstractChannel, publishes: Sequence[Publish]) -> list[Any]:
    """Write `publishes` in order on `channel` (in confirm mode); -> a future per publish
    that resolves as `basic_publish` would (the broker's ack or nack; `PublishError` when
    it was returned; the channel's error when it closed first). Raises, with nothing
    written, when the channel is closed, or when cancelled before the frames were queued."""
    if not batching(channel):
        _fall_back(channel)
        return [asyncio.ensure_future(publish.write(channel)) for publish in publishes]
    with lost_with(channel):
        return await _queued(channel, publishes)


async def _queued(channel: AbstractChannel, publishes: Sequence[Publish]) -> list[Any]:
    """`write_batch` on a channel that can take it: the frames queued, the futures."""
    ch: Any = channel
    frames: list[Any] = []
    futures: list[asyncio.Future[Any]] = []
    async with ch.lock:
        confirmations = ch.confirmations
        tags = ch.message_id_delivery_tag
        first = ch.delivery_tag
        size = ch.max_content_size
        tag = first
        try:
            for publish in publishes:
                properties = publish.properties
                if not properties.message_id:  # as aiormq does: a return needs an id
                    properties.message_id = uuid4().hex
                tag += 1
                future = ch.create_future()
                confirmations[tag] = future
                tags[properties.message_id] = tag
                publish.match = (channel, tag)
                futures.append(future)
                body = publish.body
                frames.append(
                    spec.Basic.Publish(
                        exchange=publish.exchange,
                        routing_key=publish.routing_key,
                        mandatory=publish.mandatory,
                    )
                )
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                if len(body) < size:
                    if body:
                        frames.append(ContentBody(body))
                else:
                    parts = range(0, len(body), size)
                    frames.extend(ContentBody(body[i : i + size]) for i in parts)
            ch.delivery_tag = tag
            frame = ChannelFrame.marshall(channel_number=ch.number, frames=frames)
            await ch.write_queue.put(frame)
        except BaseException:
            # nothing reached the writer: give the tags back, as basic_publish does
            if ch.delivery_tag == tag:
                ch.delivery_tag = first
            for offset, publish in enumerate(publishes[: len(futures)]):
                confirmations.pop(first + offset + 1, None)
                unmatch(publish)
                futures[offset].cancel()
            raise
    return futures


def unmatch(publish: Publish) -> None:
    """`publish` is finished: its message id no longer names its delivery tag (aiormq's
    `basic_publish` does the same for its own)."""
    match = publish.match
    if match is None:
        return
    publish.match = None
    channel, tag = match
    tags: dict[str, int] | None = getattr(channel, "message_id_delivery_tag", None)
    message_id = publish.properties.message_id
    if tags is not None and message_id is not None and tags.get(message_id) == tag:
        del tags[message_id]
