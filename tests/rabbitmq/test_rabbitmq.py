"""RabbitMQ-specific behaviour: topology, wire interop, dead letters on the broker,
partitions, bad input, unroutable events, the sync face and secrets.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import json
from collections import defaultdict
from typing import Any

import pika
import pytest
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from eventbus import Context, Envelope, Reject, RetryPolicy, SyncPublisher
from eventbus.errors import ConfigurationError, UnroutableError
from eventbus.testing.conformance import make_events, until
from eventbus.testing.conformance.telemetry import Spans

from .conftest import Broker
from .support import list_names

pytestmark = pytest.mark.rabbitmq

DL_HEADERS = {
    "x-original-stream",
    "x-original-type",
    "x-original-group",
    "x-original-routing-key",
    "x-exception-type",
    "x-exception-message",
    "x-exception-stacktrace",
    "x-attempts",
    "x-dead-lettered-at",
}


def pika_get_all(channel: Any, queue: str) -> list[tuple[Any, Any, bytes]]:
    """Every message of a queue, read with plain pika and acknowledged."""
    got: list[tuple[Any, Any, bytes]] = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return got
        got.append((method, props, body))


async def pika_wait(channel: Any, queue: str, count: int) -> list[tuple[Any, Any, bytes]]:
    found: list[tuple[Any, Any, bytes]] = []

    def check() -> bool:
        found.extend(pika_get_all(channel, queue))
        return len(found) >= count

    await until(check, what=f"{count} messages in {queue}")
    return found


async def test_topology_names_and_queue_arguments(rabbit: Broker, pika_channel: Any) -> None:
    ev = make_events(rabbit.stream())
    bus = rabbit.bus()

    tries: list[int] = []

    @bus.subscribe(group="billing", retry=RetryPolicy(attempts=3, backoff=0.5, delayed=True))
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("once")

    async with bus:
        s = ev.stream
        for queue in (f"{s}.billing", f"{s}.billing.dlq"):
            pika_channel.queue_declare(queue, passive=True)  # raises if missing
        pika_channel.exchange_declare(s, passive=True)
        # a group that never retried holds two queues: the wait queues come with the
        # first retry that needs them
        assert not [q for q in list_names("list_queues") if q.startswith(f"{s}.billing.retry")]
        await bus.publish(ev.Created(order_id="r"))
        await until(lambda: tries == [1, 2], what="the retry through the first wait queue")
        pika_channel.queue_declare(f"{s}.billing.retry.1", passive=True)
        # redeclaring with other arguments is refused: the queue is quorum + SAC
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            pika_channel.queue_declare(f"{s}.billing", durable=True)
        assert info.value.reply_code == 406


async def test_unroutable_event_is_an_error(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        pass

    async with bus:
        with pytest.raises(UnroutableError, match="reached no queue"):
            await bus.publish(ev.Shipped(order_id="nobody"))
        await bus.publish(ev.Created(order_id="someone"))  # the channel still works
    relaxed = rabbit.bus(mandatory=False)
    async with relaxed:
        await relaxed.publish(ev.Shipped(order_id="dropped"))
    assert not relaxed.broker.capabilities.unroutable_is_error


async def test_poison_event_goes_to_dlq_with_headers_and_others_flow(
    rabbit: Broker, pika_channel: Any
) -> None:
    ev = make_events(rabbit.stream())
    handled: list[str] = []
    tries: list[int] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g", retry=RetryPolicy(attempts=3, backoff=0.01))
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        if event.order_id == "poison":
            tries.append(ctx.attempt)
            raise ValueError("cannot digest this")
        handled.append(event.order_id)

    async with bus:
        sent = await bus.publish(ev.Created(order_id="poison"), key="k")
        await bus.publish_many([(ev.Created(order_id=f"ok{i}"), "k") for i in range(20)])
        await until(lambda: len(handled) == 20, what="the events behind the poison one")
        [(_method, props, body)] = await pika_wait(pika_channel, f"{ev.stream}.g.dlq", 1)
    assert tries == [1, 2, 3]
    assert handled == [f"ok{i}" for i in range(20)]
    assert body == sent.body
    headers = props.headers
    assert set(headers) >= DL_HEADERS
    assert headers["x-exception-type"] == "ValueError"
    assert headers["x-exception-message"] == "cannot digest this"
    assert "Traceback" in headers["x-exception-stacktrace"]
    assert headers["x-attempts"] == "3"
    assert headers["x-original-routing-key"] == "order.created"
    assert headers["x-original-group"] == "g"
    assert headers["ce-id"] == sent.id and props.message_id == sent.id
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2


async def test_plain_pika_event_is_handled_and_dead_letter_is_readable_by_pika(
    rabbit: Broker, pika_channel: Any
) -> None:
    ev = make_events(rabbit.stream())
    got: list[tuple[str, str]] = []
    bus = rabbit.bus()

    @bus.subscribe(group="typed")
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        if event.order_id == "refuse":
            raise Reject("not for us")
        got.append((event.order_id, ctx.envelope.id))

    async with bus:
        for order_id in ("plain-1", "refuse"):
            pika_channel.basic_publish(
                ev.stream,
                "order.created",
                json.dumps({"order_id": order_id}).encode(),
                pika.BasicProperties(message_id=f"mid-{order_id}"),
            )
        pika_channel.basic_publish(  # no properties at all
            ev.stream, "order.created", b'{"order_id": "bare"}'
        )
        await until(lambda: len(got) == 2, what="both plain events")
        [(_, props, body)] = await pika_wait(pika_channel, f"{ev.stream}.typed.dlq", 1)
    assert got[0] == ("plain-1", "mid-plain-1")
    assert got[1][0] == "bare"
    assert json.loads(body) == {"order_id": "refuse"}
    assert props.headers["x-exception-type"] == "eventbus.Reject"
    assert props.headers["x-exception-message"] == "not for us"
    assert props.headers["x-original-routing-key"] == "order.created"
    assert props.message_id == "mid-refuse"


async def test_cloudevents_sdk_reads_ours_and_we_read_the_sdk(
    rabbit: Broker, pika_channel: Any
) -> None:
    ev = make_events(rabbit.stream())
    got: list[tuple[Any, Envelope]] = []
    spans = Spans()  # tracing on: the traceparent extension is part of what the SDK reads
    bus = rabbit.bus(tracer_provider=spans.provider)

    @bus.subscribe(group="g")
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        got.append((event, ctx.envelope))

    async with bus:
        tap = f"{ev.stream}.tap"
        pika_channel.queue_declare(tap, durable=False, exclusive=True)
        pika_channel.queue_bind(tap, ev.stream, "#")
        sent = await bus.publish(
            ev.Created(order_id="o-9", n=3),
            key="o-9",
            headers={"tenant": "acme"},
            correlation_id="c-1",
        )
        [(method, props, body)] = await pika_wait(pika_channel, tap, 1)
        parsed = from_binary(
            RabbitMQMessage(
                headers={k: str(v) for k, v in props.headers.items()},
                content_type=props.content_type,
                body=body,
            ),
            JSONFormat(),
        )
        assert method.routing_key == "order.created"
        assert parsed.get_id() == sent.id
        assert parsed.get_type() == "order.created"
        assert parsed.get_source() == bus.settings.source
        [span] = spans.named(f"publish {ev.stream}")
        assert parsed.get_extension("traceparent").startswith(
            f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-"
        )
        assert parsed.get_datacontenttype() == "application/json"
        assert parsed.get_data() == {"order_id": "o-9", "n": 3, "total": 0.0}
        assert parsed.get_extension("partitionkey") == "o-9"
        assert parsed.get_extension("tenant") == "acme"
        assert parsed.get_extension("correlationid") == "c-1"
        assert parsed.get_time() is not None

        sdk_event = CloudEvent(
            attributes={
                "type": "order.created",
                "source": "/sdk",
                "id": "sdk-1",
                "datacontenttype": "application/json",
                "partitionkey": "o-10",
            },
            data={"order_id": "o-10", "n": 4},
        )
        message = to_binary(sdk_event, JSONFormat())
        pika_channel.basic_publish(
            ev.stream,
            "order.created",
            message.body,
            pika.BasicProperties(headers=message.headers, content_type=message.content_type),
        )
        await until(lambda: len(got) == 2, what="the SDK's event")
    event, envelope = got[1]
    assert event == ev.Created(order_id="o-10", n=4)
    assert envelope.id == "sdk-1" and envelope.source == "/sdk" and envelope.key == "o-10"


async def test_partitions_keep_order_per_key_across_members(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    seen: dict[str, list[int]] = defaultdict(list)
    members: dict[str, set[int]] = defaultdict(set)
    buses = []
    for member in range(4):
        bus = rabbit.bus()

        def make(m: int) -> Any:
            async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
                await asyncio.sleep(0)
                seen[event.order_id].append(event.n)
                members[event.order_id].add(m)

            return handle

        bus.add_handler(make(member), group="scaled", partitions=4, concurrency=4)
        buses.append(bus)
    for bus in buses:
        await bus.start()
    keys = [f"key-{k}" for k in range(50)]
    await buses[0].publish_many(
        [(ev.Created(order_id=key, n=n), key) for n in range(20) for key in keys]
    )
    await until(lambda: sum(map(len, seen.values())) >= 1000, timeout=60, what="1000 events")
    for bus in buses:
        await bus.stop()
    for key in keys:
        assert seen[key] == list(range(20)), f"order broken for {key}: {seen[key]}"
        assert len(members[key]) == 1, f"{key} was handled by members {members[key]}"


async def test_bad_input_is_dead_lettered_with_reason(rabbit: Broker, pika_channel: Any) -> None:
    ev = make_events(rabbit.stream())
    got: list[str] = []
    bus = rabbit.bus(max_message_bytes=1024)

    @bus.subscribe(group="g")
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        got.append(event.order_id)

    bad = {
        b"{not json": "eventbus.DecodeError",
        b'{"n": "not a number"}': "pydantic.ValidationError",
        json.dumps({"order_id": "big", "pad": "x" * 2000}).encode(): "eventbus.MessageTooLarge",
    }
    async with bus:
        for body in bad:
            pika_channel.basic_publish(ev.stream, "order.created", body)
        await bus.publish(ev.Created(order_id="fine"))
        await until(lambda: got == ["fine"], what="the good event after the bad ones")
        dead = await pika_wait(pika_channel, f"{ev.stream}.g.dlq", 3)
    reasons = {body: props.headers["x-exception-type"] for _, props, body in dead}
    assert reasons == bad
    for _, props, _ in dead:
        assert props.headers["x-exception-message"]


async def test_sync_face_publishes_with_confirms(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    got: list[tuple[str, str | None]] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g")
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        got.append((event.order_id, ctx.envelope.key))

    async with bus:

        def publish() -> None:
            with SyncPublisher(rabbit.url) as publisher:
                publisher.publish(ev.Created(order_id="s1"), key="k1")
                publisher.publish_many([ev.Created(order_id="s2"), ev.Created(order_id="s3")])
                with pytest.raises(UnroutableError):
                    publisher.publish(ev.Shipped(order_id="nobody"))
                publisher.publish(ev.Created(order_id="s4"))  # still usable

        await asyncio.to_thread(publish)
        await until(lambda: len(got) == 4, what="the sync-published events")
    assert got == [("s1", "k1"), ("s2", None), ("s3", None), ("s4", None)]


async def test_delayed_retry_off_the_tiers_uses_its_own_wait_queue(
    rabbit: Broker, pika_channel: Any
) -> None:
    from eventbus import Retry

    ev = make_events(rabbit.stream())
    tries: list[int] = []
    bus = rabbit.bus()

    @bus.subscribe(group="g", retry=RetryPolicy(attempts=3, backoff=5.0, delayed=True))
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(after=0.2)

    async with bus:
        await bus.publish(ev.Created(order_id="r"))
        await until(lambda: tries == [1, 2], what="the retry after 0.2 s, not the 5 s tier")
        pika_channel.queue_declare(f"{ev.stream}.g.delay.200ms", passive=True)


async def test_dead_letter_replay_on_a_partitioned_group(rabbit: Broker) -> None:
    ev = make_events(rabbit.stream())
    broken = True
    handled: list[tuple[str, int]] = []
    bus = rabbit.bus()

    @bus.subscribe(group="p", partitions=3, retry=RetryPolicy(attempts=1))
    async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
        if broken:
            raise RuntimeError("down")
        handled.append((event.order_id, ctx.attempt))

    async with bus:
        await bus.publish_many([(ev.Created(order_id=f"d{i}"), f"k{i}") for i in range(6)])

        async def dead_count() -> int:
            return len([d async for d in bus.dead_letters(ev.stream, "p")])

        deadline = asyncio.get_running_loop().time() + 30
        while await dead_count() < 6:
            assert asyncio.get_running_loop().time() < deadline, "no 6 dead letters"
            await asyncio.sleep(0.05)
        letters = [d async for d in bus.dead_letters(ev.stream, "p")]
        assert {d.envelope.type for d in letters} == {"order.created"}
        assert all(d.reason.startswith("RuntimeError: down") for d in letters)
        broken = False
        assert await bus.replay_dead_letters(ev.stream, "p") == 6
        await until(lambda: len(handled) == 6, what="the replayed events")
        assert await dead_count() == 0
    assert sorted(handled) == [(f"d{i}", 1) for i in range(6)]


async def test_configuration_errors_name_the_option(rabbit: Broker) -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_RABBITMQ_PREFETCH"):
        rabbit.bus(prefetch=0)
    with pytest.raises(ConfigurationError, match="prefetchh"):
        rabbit.bus(prefetchh=10)
    ev = make_events(rabbit.stream())
    bus = rabbit.bus()

    @bus.subscribe(group="g", partitionz=4)
    async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
        pass

    with pytest.raises(ConfigurationError, match="partitionz"):
        await bus.start()
