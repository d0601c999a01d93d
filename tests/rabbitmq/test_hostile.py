"""Hostile input on the real broker, RabbitMQ-specific (issue #9; the broker-neutral part is
eventbus/testing/conformance/hostile.py): bytes in AMQP fields that the client's frame decoder
chokes on, forged transport bookkeeping, id-less messages, copies whose queue was deleted,
and publishes too large for a frame.

Foreign producers are raw pika, with properties written byte by byte (`rawamqp`).

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import json
import time
from collections import defaultdict
from typing import Any

import pika
import pytest

from eventbus import Context, Envelope, Event, Reject, RetryPolicy, SyncPublisher
from eventbus.deadletter import DEAD_LETTER_HEADERS
from eventbus.errors import PublishError, UnroutableError
from eventbus.testing.conformance import make_events, until, wait_dead

from . import rawamqp
from .conftest import Broker
from .rawamqp import RawProperties, longstr, nested_table
from .support import broker_of

pytestmark = pytest.mark.rabbitmq


def body_of(order_id: str) -> bytes:
    return json.dumps({"order_id": order_id}).encode()


async def inject(stream: str, routing_key: str | bytes, body: bytes, props: Any = None) -> None:
    await asyncio.to_thread(rawamqp.publish, stream, routing_key, body, props)


# --- 1: invalid UTF-8 where the AMQP frame decoder reads text ------------------------------


async def test_invalid_utf8_in_frames_is_dead_lettered_and_the_connection_stays_up(
    rabbit: Broker, pika_channel: Any
) -> None:
    """Each poison message used to make pamqp raise in the frame reader: the connection
    dropped, the broker redelivered the same message, forever. Now each is dead-lettered
    with the reason, on the one connection the bus opened, while events flow around it."""
    ev = make_events(rabbit.stream())
    got: list[str] = []
    bus = rabbit.bus()

    @bus.subscribe(ev.stream, "#", group="audit")
    async def audit(envelope: Envelope) -> None:
        got.append(envelope.data["order_id"])

    poison: dict[str, tuple[bytes, RawProperties]] = {
        "message_id": (b"order.created", RawProperties(message_id=b"id-\xff\xfe")),
        "header name": (
            b"order.created",
            RawProperties(message_id=b"m2", headers=[(b"x-bad-\xc3\x28", longstr(b"v"))]),
        ),
        "header value": (  # a long string (S), as most clients write text
            b"order.created",
            RawProperties(message_id=b"m3", headers=[(b"ce-tenant", longstr(b"\xc3\x28"))]),
        ),
        "routing key": (b"order.\xff", RawProperties(message_id=b"m4")),
        "nesting": (
            b"order.created",
            RawProperties(message_id=b"m5", headers=[(b"x-deep", nested_table(5000))]),
        ),
    }
    async with bus:
        link = broker_of(bus).link
        for n, (routing_key, props) in enumerate(poison.values()):
            await inject(ev.stream, routing_key, body_of(f"poison{n}"), props)
            await bus.publish(ev.Created(order_id=f"after{n}"), key="k")
        # a timestamp out of datetime's range is not part of the event: handled as usual
        await inject(
            ev.stream,
            b"order.created",
            body_of("stamped"),
            RawProperties(message_id=b"m6", timestamp=2**64 - 1),
        )
        await bus.publish(ev.Created(order_id="last"), key="k")
        dead = await wait_dead(bus, ev.stream, "audit", len(poison))
        await until(lambda: "last" in got, what="the events behind the poison")
        assert bus.health().ok, bus.health()
        assert link.generation == 1, "the connection was lost and re-opened"
        raw = await asyncio.to_thread(_get_all, pika_channel, f"{ev.stream}.audit.dlq")
    assert got == [*(f"after{n}" for n in range(len(poison))), "stamped", "last"]
    assert sorted(d.body for d in dead) == sorted(body_of(f"poison{n}") for n in range(5))
    reasons = {d.body: d.headers["x-exception-message"] for d in dead}
    for n, field in enumerate(poison):
        reason = reasons[body_of(f"poison{n}")]
        assert {d.headers["x-exception-type"] for d in dead} == {"eventbus.DecodeError"}
        if field == "nesting":
            assert "nested too deeply" in reason, reason
        else:
            assert "not valid UTF-8" in reason, (field, reason)
    # the dead letters themselves are valid AMQP text: the bad bytes as \xNN escapes
    by_body = {body: props for _, props, body in raw}
    assert by_body[body_of("poison0")].message_id == "id-\\xff\\xfe"
    assert "x-bad-\\xc3(" in by_body[body_of("poison1")].headers
    assert by_body[body_of("poison3")].headers["x-original-routing-key"] == "order.\\xff"
    assert "\\xNN escapes" in by_body[body_of("poison0")].headers["x-exception-message"]
    # a long string that is not text is kept, byte for byte (as a byte array)
    assert by_body[body_of("poison2")].headers["ce-tenant"] == b"\xc3\x28"


def _get_all(channel: Any, queue: str) -> list[tuple[Any, Any, bytes]]:
    got: list[tuple[Any, Any, bytes]] = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((method, props, body))


async def test_invalid_utf8_message_on_a_delayed_retry_group_is_dead_lettered(
    rabbit: Broker,
) -> None:
    """A typed group with delayed retries: the poison never reaches the handler, the
    dead letter is listed and replayable, and a retry copy of a message with a header
    value that is not text (kept as bytes) can be published."""
    ev = make_events(rabbit.stream())
    tries: list[tuple[str, int]] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g", retry=RetryPolicy(attempts=2, backoff=0.05, delayed=True))
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        tries.append((event.order_id, ctx.attempt))
        if ctx.attempt == 1:
            raise RuntimeError("once")

    async with bus:
        await inject(
            ev.stream, b"order.created", body_of("poison"), RawProperties(message_id=b"\x80")
        )
        # binary in a header that is no CloudEvents attribute: fine, and copied as it is
        await inject(
            ev.stream,
            b"order.created",
            body_of("binary"),
            RawProperties(message_id=b"b1", headers=[(b"x-blob", longstr(b"\xff"))]),
        )
        [dead] = await wait_dead(bus, ev.stream, "g", 1)
        await until(lambda: ("binary", 2) in tries, what="the retry of the binary one")
        assert dead.headers["x-exception-type"] == "eventbus.DecodeError"
        assert dead.attributes["id"] == "\\x80"
        assert await bus.replay_dead_letters(ev.stream, "g") == 1
        await until(lambda: ("poison", 2) in tries, what="the replayed one")
    assert tries == [("binary", 1), ("binary", 2), ("poison", 1), ("poison", 2)]


# --- 11: transport bookkeeping is not taken from foreign producers -------------------------


@pytest.mark.parametrize("partitions", [None, 2])
async def test_forged_bookkeeping_on_the_stream_is_ignored(
    rabbit: Broker, partitions: int | None
) -> None:
    """A message on the stream carrying `x-eventbus-attempt: 99`, an `x-death` naming the
    group's wait queue and a routing-key header runs the whole (delayed) retry policy;
    the attempt count is trusted on the copies coming back from the wait queues. Forged
    dead-letter headers never survive into the dead letter."""
    ev = make_events(rabbit.stream())
    attempts: list[int] = []
    bus = rabbit.bus()
    options: dict[str, Any] = {} if partitions is None else {"partitions": partitions}

    @bus.subscribe(group="g", retry=RetryPolicy(attempts=3, backoff=0.05, delayed=True), **options)
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        attempts.append(ctx.attempt)
        raise RuntimeError("always")

    forged: dict[str, Any] = {name: "forged" for name in DEAD_LETTER_HEADERS}
    forged["X-Original-Stream"] = "forged"
    forged["x-eventbus-attempt"] = 99
    forged["x-eventbus-routing-key"] = "order.forged"
    forged["x-death"] = [
        {
            "count": 1,
            "reason": "expired",
            "queue": f"{ev.stream}.g.retry.1",
            "exchange": "",
            "routing-keys": [f"{ev.stream}.g.retry.1"],
        }
    ]
    async with bus:
        await asyncio.to_thread(
            rawamqp.publish,
            ev.stream,
            "order.created",
            body_of("f"),
            pika.BasicProperties(message_id="forger-1", headers=forged),
        )
        [dead] = await wait_dead(bus, ev.stream, "g", 1)
    assert attempts == [1, 2, 3]
    headers = dead.headers
    assert headers["x-attempts"] == "3"
    assert headers["x-original-stream"] == ev.stream
    assert headers["x-original-group"] == "g"
    assert headers["x-original-routing-key"] == "order.created"
    assert headers["x-exception-type"] == "RuntimeError"
    assert "X-Original-Stream" not in headers
    assert not [v for n, v in headers.items() if v == "forged"], headers


# --- 8: id-less messages get one stable id ---------------------------------------------------


async def test_id_less_messages_get_one_stable_id_each(rabbit: Broker) -> None:
    """Three identical plain-pika messages without any id: three ids, each the same on
    the delayed retry and on the redelivery after the first bus stopped mid-handler."""
    ev = make_events(rabbit.stream())
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    hanging = asyncio.Event()
    first = rabbit.bus(shutdown_timeout=0.2)

    @first.subscribe(group="g", retry=RetryPolicy(attempts=2, backoff=0.05, delayed=True))
    async def once(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        seen["first"].append((ctx.envelope.id, ctx.attempt))
        if ctx.attempt == 1:
            raise RuntimeError("once")
        if len(seen["first"]) == 6:  # the third retry: stop here, the bus stops around it
            hanging.set()
            await asyncio.Event().wait()

    async with first:
        for _ in range(3):
            await inject(ev.stream, "order.created", body_of("same"))
        await asyncio.wait_for(hanging.wait(), 30)
    tries = seen["first"]
    ids = {event_id for event_id, _ in tries}
    assert len(ids) == 3 and all(ids)
    for event_id in ids:
        assert sorted(a for i, a in tries if i == event_id) == [1, 2]
    stopped_at = tries[-1][0]

    second = rabbit.bus()

    @second.subscribe(group="g", retry=RetryPolicy(attempts=2, backoff=0.05, delayed=True))
    async def again(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        seen["second"].append((ctx.envelope.id, ctx.attempt))

    async with second:
        await until(lambda: len(seen["second"]) == 1, what="the redelivery")
    assert seen["second"] == [(stopped_at, 2)]


async def test_an_empty_ce_id_is_stamped_too(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    ids: list[str] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        ids.append(ctx.envelope.id)

    async with bus:
        await asyncio.to_thread(
            rawamqp.publish,
            ev.stream,
            "order.created",
            body_of("empty"),
            pika.BasicProperties(headers={"ce-id": "", "ce-type": "order.created"}),
        )
        await until(lambda: len(ids) == 1)
    assert ids[0]


async def test_id_less_message_too_large_to_stamp_is_dead_lettered(rabbit: Broker) -> None:
    """An id-less message whose headers fill the frame: the copy with an id would not fit,
    so it is dead-lettered with the reason (its copy keeps what fits), and what follows
    flows."""
    ev = make_events(rabbit.stream())
    got: list[str] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        got.append(event.order_id)

    pad = b"p" * 130_980  # the original fits in a frame; with an id and more it does not
    async with bus:
        await inject(
            ev.stream,
            b"order.created",
            body_of("huge"),
            RawProperties(headers=[(b"x-pad", longstr(pad))]),
        )
        await bus.publish(ev.Created(order_id="after"))
        [dead] = await wait_dead(bus, ev.stream, "g", 1)
        await until(lambda: got == ["after"])
        assert broker_of(bus).link.generation == 1
    assert dead.body == body_of("huge")
    assert dead.headers["x-exception-type"] == "eventbus.DecodeError"
    assert "no id" in dead.reason and "frame" in dead.reason, dead.reason
    assert "x-pad" not in dead.headers  # left out: the dead letter would not fit either


# --- 4: a copy whose queue was deleted ------------------------------------------------------


async def test_deleted_dead_letter_and_wait_queues_are_declared_again(
    rabbit: Broker, pika_channel: Any
) -> None:
    ev = make_events(rabbit.stream())
    handled: list[tuple[str, int]] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g", retry=RetryPolicy(attempts=2, backoff=0.05, delayed=True))
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        if event.order_id == "reject":
            raise Reject("not wanted")
        if event.order_id == "retry" and ctx.attempt == 1:
            raise RuntimeError("later")
        handled.append((event.order_id, ctx.attempt))

    async with bus:
        pika_channel.queue_delete(f"{ev.stream}.g.dlq")
        pika_channel.queue_delete(f"{ev.stream}.g.retry.1")
        await bus.publish_many(
            [(ev.Created(order_id=o), "k") for o in ("reject", "retry", "after")]
        )
        await until(
            lambda: ("retry", 2) in handled and ("after", 1) in handled,
            what="the retry and the event behind",
        )
        [dead] = await wait_dead(bus, ev.stream, "g", 1)
        assert bus.health().ok, bus.health()
    assert dead.reason == "eventbus.Reject: not wanted"


async def test_a_copy_to_a_missing_queue_says_so(rabbit: Broker) -> None:
    from pamqp import commands as spec

    ev = make_events(rabbit.stream())
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        pass

    async with bus:
        props = spec.Basic.Properties(message_id="copy-1")
        with pytest.raises(UnroutableError, match=r"queue .no-such-queue.*does not exist"):
            await broker_of(bus).publisher.send("", "no-such-queue", b"{}", props)
        await bus.publish(ev.Created(order_id="still fine"))


# --- 10: too large for a frame ----------------------------------------------------------------


async def test_keys_and_headers_too_large_for_a_frame_are_refused_at_once(
    rabbit: Broker,
) -> None:
    ev = make_events(rabbit.stream())

    class LongType(Event, stream=ev.stream, type="order." + "x" * 300):
        order_id: str

    got: list[str] = []
    bus = rabbit.bus(publish_timeout=20)

    @bus.subscribe(ev.stream, "#", group="g")
    async def handle(envelope: Envelope) -> None:
        got.append(envelope.data["order_id"])

    attempts: dict[str, tuple[Event, dict[str, Any]]] = {
        "key": (ev.Created(order_id="big key"), {"key": "k" * 200_000}),
        "headers": (
            ev.Created(order_id="big headers"),
            {"headers": {f"h{i}": "v" * 20_000 for i in range(8)}},
        ),
        "type": (LongType(order_id="long type"), {}),
        "id": (ev.Created(order_id="long id"), {"id": "i" * 300}),
    }
    errors: dict[str, str] = {}
    async with bus:
        for what, (event, options) in attempts.items():
            started = time.monotonic()
            with pytest.raises(PublishError) as info:
                await bus.publish(event, **options)
            assert time.monotonic() - started < 1, what
            errors[what] = str(info.value)
        await bus.publish(ev.Created(order_id="fine"), key="k" * 60_000)
        await until(lambda: got == ["fine"])
        assert broker_of(bus).link.generation == 1, "the broker closed the connection"

        def sync() -> None:
            with SyncPublisher(rabbit.url) as publisher:
                for event, options in attempts.values():
                    with pytest.raises(PublishError):
                        publisher.publish(event, **options)
                publisher.publish(ev.Created(order_id="sync fine"))  # still usable

        await asyncio.to_thread(sync)
        await until(lambda: got == ["fine", "sync fine"])
    assert "frame_max 131072" in errors["key"] and "frame_max" in errors["headers"]
    assert "routing key" in errors["type"] and "255" in errors["type"]
    assert "255" in errors["id"]
