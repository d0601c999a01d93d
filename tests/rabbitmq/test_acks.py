"""Coalesced acks (`adapters/rabbitmq/attachment.py`): the items of a batch are acked with
one `basic.ack(multiple=True)`, and a multiple ack never covers a message that was not
handled (rejected to the dead letters, or still unsettled).

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import aiormq.channel
import pytest

from eventbus import BatchContext, Reject
from eventbus.testing.conformance import make_events, until

from .conftest import Broker
from .support import raw_connection

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int, bool]]]:
    """Every `basic.ack` this process writes: (channel, delivery tag, multiple)."""
    written: list[tuple[int, int, bool]] = []
    original = aiormq.channel.Channel.basic_ack

    async def basic_ack(
        self: Any, delivery_tag: int, multiple: bool = False, wait: bool = True
    ) -> None:
        written.append((id(self), delivery_tag, multiple))
        await original(self, delivery_tag, multiple=multiple, wait=wait)

    monkeypatch.setattr(aiormq.channel.Channel, "basic_ack", basic_ack)
    yield written


def ready_messages(queue: str) -> int:
    connection = raw_connection()
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return int(declared.method.message_count or 0)
    finally:
        connection.close()


async def test_a_batch_is_acked_with_multiple_acks(
    rabbit: Broker, acks: list[tuple[int, int, bool]]
) -> None:
    ev = make_events(rabbit.stream())
    handled: list[int] = []
    bus = rabbit.bus(prefetch=200)

    @bus.subscribe(group="g", batch_size=50, batch_timeout=0.2)
    async def handle(events: list[ev.Created], ctx: BatchContext) -> None:  # type: ignore[name-defined]
        handled.extend(e.n for e in events)

    async with bus:
        await bus.publish_many(ev.Created(order_id=f"o-{i}", n=i) for i in range(200))
        await until(lambda: len(handled) >= 200, what="200 events handled")
    # the bus stopped: its channel closed, and whatever it had not acked is ready again
    assert await asyncio.to_thread(ready_messages, f"{ev.stream}.g") == 0
    assert sorted(handled) == list(range(200))
    assert any(multiple for _, _, multiple in acks), acks
    assert len(acks) < 200 // 5, f"{len(acks)} acks for 200 events in batches of 50"


async def test_a_multiple_ack_never_covers_a_rejected_item(
    rabbit: Broker, acks: list[tuple[int, int, bool]]
) -> None:
    """Every seventh item is rejected (dead-lettered: a copy, then its own ack); the others
    are acked together around them. Nothing is left unacked, nothing acked twice (a second
    ack of a tag would close the channel)."""
    ev = make_events(rabbit.stream())
    handled: list[int] = []
    bus = rabbit.bus(prefetch=200)

    @bus.subscribe(group="g", batch_size=50, batch_timeout=0.2)
    async def handle(events: list[ev.Created], ctx: BatchContext) -> None:  # type: ignore[name-defined]
        for e in events:
            if e.n % 7 == 0:
                ctx.fail(e, Reject("every seventh is invalid"))
            else:
                handled.append(e.n)

    async with bus:
        await bus.publish_many(ev.Created(order_id=f"o-{i}", n=i) for i in range(200))
        await until(lambda: len(handled) >= 200 - 29, what="the valid events handled")
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(ready_messages, f"{ev.stream}.g.dlq") < 29:
            assert time.monotonic() < deadline, "29 dead letters within 30 s"
            await asyncio.sleep(0.05)
        async with contextlib.aclosing(bus.dead_letters(ev.stream, "g")) as letters:
            dead_letters = [int(d.envelope.data["n"]) async for d in letters]
    assert await asyncio.to_thread(ready_messages, f"{ev.stream}.g") == 0
    assert sorted(handled) == [n for n in range(200) if n % 7], "each valid event once"
    assert sorted(dead_letters) == [n for n in range(200) if n % 7 == 0]
    per_channel: dict[int, list[int]] = {}
    for channel, tag, _ in acks:
        per_channel.setdefault(channel, []).append(tag)
    assert all(len(t) == len(set(t)) for t in per_channel.values()), "no tag acked twice"
    assert any(multiple for _, _, multiple in acks), acks
