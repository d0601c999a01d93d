"""Batched publishing (`Publisher.send_many`, `frames.write_batch`): many publishes in one
write, each still confirmed, returned or refused on its own, in the order of the call,
within the confirm window; and the same outcome through aiormq's own publish when the
channel cannot take a batch. A single publish is written as a batch of one, and holds
no write coroutine while it awaits its confirm.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import gc
import types
from typing import Any

import pytest
import structlog.testing
from pamqp import commands as spec

from eventbus import Event
from eventbus.adapters.rabbitmq import frames, publisher
from eventbus.adapters.rabbitmq.publisher import _Pending
from eventbus.errors import PublishError, UnroutableError
from eventbus.testing.conformance import make_events, until

from .conftest import Broker
from .support import broker_of

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(params=["batched", "one by one"])
def batching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a batch is written: in one go, and through aiormq's `basic_publish`."""
    if request.param == "one by one":
        monkeypatch.setattr(frames, "batching", lambda channel: False)
        monkeypatch.setattr(frames, "_warned", [True])  # reported: see the test below
    return str(request.param)


async def test_a_channel_that_cannot_take_a_batch_is_reported_once_and_still_publishes(
    rabbit: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aiormq whose channel lacks an attribute the batch writes through: the batch goes
    one publish at a time, and a warning names the attribute, once per process."""
    ev, seen, bus = recording(rabbit)
    monkeypatch.setattr(frames, "_NEEDED", (*frames._NEEDED, "no_such_attribute"))
    monkeypatch.setattr(frames, "_warned", [])
    async with bus:
        with structlog.testing.capture_logs() as logs:
            await bus.publish_many([ev.Created(order_id=f"f{i}") for i in range(5)])
            await bus.publish_many([ev.Created(order_id=f"g{i}") for i in range(5)])
        await until(lambda: len(seen) == 10, what="both batches")
    warnings = [log for log in logs if log["event"] == "publish.batching_unavailable"]
    assert len(warnings) == 1, logs
    assert warnings[0]["missing"] == ["no_such_attribute"]
    assert warnings[0]["log_level"] == "warning"
    assert seen == [*(f"f{i}" for i in range(5)), *(f"g{i}" for i in range(5))]


def recording(rabbit: Broker, **options: Any) -> tuple[Any, list[str], Any]:
    """(events, the order ids group `g` handled in turn, the bus)."""
    ev = make_events(rabbit.stream())
    seen: list[str] = []
    bus = rabbit.bus(**options)

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        seen.append(event.order_id)

    return ev, seen, bus


def publisher_channel(bus: Any) -> Any:
    channel = broker_of(bus).publisher._channel
    assert channel is not None
    return channel


async def test_a_batch_larger_than_the_window_arrives_whole_and_in_order(
    rabbit: Broker, batching: str
) -> None:
    ev, seen, bus = recording(rabbit, confirm_window=7)
    async with bus:
        await bus.publish_many([(ev.Created(order_id=f"o{i}"), "k") for i in range(300)])
        assert broker_of(bus).publisher._window._value == 7  # every slot given back
        await until(lambda: len(seen) == 300, what="300 events")
        channel = publisher_channel(bus)
        # nothing kept to match returns with once the publishes are confirmed
        assert channel.message_id_delivery_tag == {}
        assert channel.confirmations == {}
        # the delivery tags still count as the broker does: a later publish is confirmed
        await bus.publish(ev.Created(order_id="o300"), key="k")
        await until(lambda: len(seen) == 301, what="the publish after the batch")
    assert seen == [f"o{i}" for i in range(301)]


async def test_one_unroutable_event_fails_alone_and_the_rest_is_stored(
    rabbit: Broker, batching: str
) -> None:
    ev, seen, bus = recording(rabbit, confirm_window=16)
    batch: list[Any] = [ev.Created(order_id=f"a{i}") for i in range(40)]
    batch.insert(17, ev.Shipped(order_id="nobody"))  # no group takes this type
    async with bus:
        with pytest.raises(UnroutableError, match="reached no queue") as info:
            await bus.publish_many(batch)
        assert "1 of" not in str(info.value)  # a single failure is raised as it is
        await until(lambda: len(seen) == 40, what="the 40 routable events")
        assert publisher_channel(bus).message_id_delivery_tag == {}
    assert seen == [f"a{i}" for i in range(40)]


async def test_an_event_that_cannot_travel_is_refused_and_the_others_go(rabbit: Broker) -> None:
    ev, seen, bus = recording(rabbit)
    batch = [(ev.Created(order_id=f"b{i}"), f"k{i}") for i in range(10)]
    batch[3] = (ev.Created(order_id="long key"), "k" * 300_000)  # over one AMQP frame
    batch[6] = (ev.Created(order_id="also"), "k" * 300_000)
    async with bus:
        with pytest.raises(PublishError, match=r"2 of 10 events failed; first: .*frame"):
            await bus.publish_many(batch)
        await until(lambda: len(seen) == 8, what="the 8 events that fit")
    assert sorted(seen) == sorted(f"b{i}" for i in range(10) if i not in (3, 6))


async def test_bodies_larger_than_a_frame_are_split_and_arrive_intact(
    rabbit: Broker, batching: str
) -> None:
    class Noted(Event, stream=rabbit.stream(), type="order.noted"):
        order_id: str
        note: str

    seen: dict[str, int] = {}
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: Noted) -> None:
        seen[event.order_id] = len(event.note)

    sizes = [0, 10, 131_072 - 9, 131_072, 300_000, 5]  # around frame_max (131072)
    async with bus:
        await bus.publish_many(
            [Noted(order_id=f"s{i}", note="x" * size) for i, size in enumerate(sizes)]
        )
        await until(lambda: len(seen) == len(sizes), what="every size")
    assert seen == {f"s{i}": size for i, size in enumerate(sizes)}


async def test_large_events_go_in_writes_of_bounded_size_and_small_ones_in_one(
    rabbit: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of 100 KB events is not one buffer of megabytes: each write carries at
    most `WRITE_BYTES` of bodies past its first publish. A window of small events still
    goes in one write. Both arrive whole and in order."""

    class Noted(Event, stream=rabbit.stream(), type="order.noted"):
        order_id: str
        note: str

    writes: list[list[int]] = []
    write_batch = frames.write_batch

    async def recorded(channel: Any, publishes: Any) -> list[Any]:
        writes.append([len(p.body) for p in publishes])
        return await write_batch(channel, publishes)

    monkeypatch.setattr(publisher, "write_batch", recorded)
    seen: list[str] = []
    bus = rabbit.bus(confirm_window=64)

    @bus.subscribe(group="g")
    async def handle(event: Noted) -> None:
        seen.append(event.order_id)

    async with bus:
        await bus.publish_many([Noted(order_id=f"s{i}", note="x") for i in range(50)])
        assert len(writes) == 1 and len(writes[0]) == 50
        writes.clear()
        big = [Noted(order_id=f"b{i}", note="x" * 100_000) for i in range(40)]
        await bus.publish_many(big)
        await until(lambda: len(seen) == 90, what="every event")
    assert len(writes) > 1 and sum(len(w) for w in writes) == 40
    assert all(sum(w[:-1]) < publisher.WRITE_BYTES for w in writes), writes
    assert seen == [*(f"s{i}" for i in range(50)), *(f"b{i}" for i in range(40))]


async def test_a_cancelled_batch_leaves_the_channel_counting_right(rabbit: Broker) -> None:
    """Cancelled while part of it waits for the window: what was written stays written,
    the rest is never written, and later publishes are confirmed (a delivery tag taken
    and not written would shift every later confirm onto the wrong publish)."""
    ev, seen, bus = recording(rabbit, confirm_window=4)
    async with bus:
        task = asyncio.create_task(
            bus.publish_many([ev.Created(order_id=f"c{i}") for i in range(5_000)])
        )
        await until(lambda: len(seen) >= 20, what="part of the batch handled")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        publisher = broker_of(bus).publisher
        assert publisher._pending == {}
        assert publisher._window._value == 4
        await bus.publish_many([ev.Created(order_id=f"after{i}") for i in range(10)])
        await bus.publish(ev.Created(order_id="last"))
        await until(lambda: "last" in seen, what="the publishes after the cancelled batch")
        assert publisher_channel(bus).message_id_delivery_tag == {}
    handled_before = [s for s in seen if s.startswith("c")]
    assert handled_before == [f"c{i}" for i in range(len(handled_before))]  # a prefix, in order
    assert len(handled_before) < 5_000
    assert seen[len(handled_before) :] == [*(f"after{i}" for i in range(10)), "last"]


async def test_a_batch_cancelled_before_its_frames_were_queued_gives_its_tags_back(
    rabbit: Broker,
) -> None:
    """Cancelled while waiting for room in the connection's frame queue: nothing was
    written, so the delivery tags taken are given back (the broker numbers only what it
    received) and nothing is left to match a return with."""
    ev, seen, bus = recording(rabbit)
    async with bus:
        await bus.publish(ev.Created(order_id="first"))
        channel = publisher_channel(bus)
        tag = channel.delivery_tag
        own = channel.write_queue
        full: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        full.put_nowait(None)
        channel.write_queue = full  # the writer is busy: no room for the batch's frames
        entries = [
            _Pending(
                ev.stream,
                "order.created",
                b"{}",
                spec.Basic.Properties(message_id=f"never{i}", delivery_mode=2),
                True,
                ev.stream,
                channel,
            )
            for i in range(3)
        ]
        task = asyncio.create_task(frames.write_batch(channel, entries))
        await until(lambda: bool(full._putters), what="the batch waiting for room")  # type: ignore[attr-defined]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        channel.write_queue = own
        assert channel.delivery_tag == tag
        assert channel.confirmations == {}
        assert channel.message_id_delivery_tag == {}
        assert all(entry.match is None for entry in entries)
        await bus.publish_many([ev.Created(order_id="second"), ev.Created(order_id="third")])
        await until(lambda: len(seen) == 3, what="the publishes after the cancelled batch")
    assert seen == ["first", "second", "third"]


async def test_a_single_publish_in_flight_holds_no_write_coroutine(rabbit: Broker) -> None:
    """An awaited publish in flight holds its entry and its confirmation future, not a
    write coroutine with aiormq's frames, timer and lock context: a busy service's
    concurrent publishes live long enough to be promoted, and every object they hold
    makes the collector's full passes come sooner (see `Publisher._send`)."""
    ev, seen, bus = recording(rabbit, confirm_window=1024)
    count = 300

    def writes() -> int:
        return sum(
            1
            for o in gc.get_objects()
            if isinstance(o, types.CoroutineType)
            and o.cr_frame is not None
            and o.cr_code.co_name in {"write", "basic_publish"}
        )

    async with bus:
        await bus.publish(ev.Created(order_id="first"))  # the exchange is declared
        publishing = [
            asyncio.create_task(bus.publish(ev.Created(order_id=f"o{i}"))) for i in range(count)
        ]
        await asyncio.sleep(0)  # each publish wrote its frames and awaits its confirm
        waiting = sum(1 for task in publishing if not task.done())
        held = writes()
        await asyncio.gather(*publishing)
        await until(lambda: len(seen) == count + 1, what="every publish")
    assert waiting > count // 2, f"only {waiting} of {count} publishes were in flight"
    assert held == 0, f"{held} write coroutines held by {waiting} publishes in flight"
    assert sorted(seen) == sorted(["first", *(f"o{i}" for i in range(count))])
