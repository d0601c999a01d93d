"""Wire compatibility: kcat and the CloudEvents SDK read what we publish, and we consume
what they write (CloudEvents Kafka binding, binary mode)."""

import asyncio
import json
import shutil
from typing import Any

import pytest
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from eventbus import Context, Event
from eventbus.testing.conformance import unique, until
from eventbus.testing.conformance.telemetry import Spans

from .harness import BOOTSTRAP, KafkaHarness, raw_produce
from .support import read_topic

pytestmark = pytest.mark.kafka


def kcat() -> str:
    path = shutil.which("kcat")
    assert path, "kcat is not installed: run scripts/kafka.sh (it installs Debian's kcat)"
    return path


async def run(*args: str, stdin: bytes = b"") -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode == 0, f"{args[0]} failed: {err.decode()}"
    return out


async def read_with_the_sdk(stream: str) -> Any:
    """The stream's one record, as the CloudEvents SDK reads it (binary mode)."""
    [message] = await asyncio.to_thread(read_topic, stream, 1)
    return from_binary(
        KafkaMessage(
            headers={k: v for k, v in message.headers()},  # type: ignore[attr-defined]
            key=message.key(),  # type: ignore[attr-defined]
            value=message.value(),  # type: ignore[attr-defined]
        ),
        JSONFormat(),
    )


async def test_kcat_record_is_handled_by_a_typed_subscriber(kafka: KafkaHarness) -> None:
    stream = unique("kcat")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str
        total: float

    got: list[tuple[str, float, str | None, str]] = []
    bus = kafka.bus()

    @bus.subscribe(group=unique("g"))
    async def handle(event: Created, ctx: Context) -> None:
        got.append((event.order_id, event.total, ctx.envelope.key, ctx.envelope.type))

    async with bus:
        body = json.dumps({"order_id": "kc-1", "total": 9.5}).encode()
        await run(
            kcat(), "-P", "-b", BOOTSTRAP, "-t", stream, "-k", "kc-1",
            "-H", "ce_type=order.created", stdin=body + b"\n",
        )  # fmt: skip
        await until(lambda: len(got) == 1, what="the kcat record")
    assert got == [("kc-1", 9.5, "kc-1", "order.created")]


async def test_kcat_reads_the_cloudevents_headers_we_publish(kafka: KafkaHarness) -> None:
    stream = unique("kcat")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    bus = kafka.bus()
    async with bus:
        sent = await bus.publish(Created(order_id="o-9"), key="o-9", correlation_id="c-1")
    out = await run(
        kcat(), "-C", "-b", BOOTSTRAP, "-t", stream, "-o", "beginning", "-c", "1", "-e", "-J"
    )
    record = json.loads(out.decode().splitlines()[0])
    flat = record["headers"]
    headers = dict(zip(flat[::2], flat[1::2], strict=True))
    assert headers["ce_id"] == sent.id
    assert headers["ce_type"] == "order.created"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_source"] == bus.settings.source
    assert headers["ce_time"].endswith("Z")
    assert headers["ce_correlationid"] == "c-1"
    assert headers["content-type"] == "application/json"
    assert record["key"] == "o-9"
    assert json.loads(record["payload"]) == {"order_id": "o-9"}


async def test_required_attributes_only_on_the_wire(kafka: KafkaHarness) -> None:
    """`optional_attributes=False`: kcat sees the four required CloudEvents headers and
    nothing else of eventbus's, and the CloudEvents SDK still reads the event."""
    stream = unique("lean")

    class Created(Event, stream=stream, type="order.created"):
        order_id: str

    bus = kafka.bus(optional_attributes=False)
    async with bus:
        sent = await bus.publish(Created(order_id="o-7"), key="o-7")
    out = await run(
        kcat(), "-C", "-b", BOOTSTRAP, "-t", stream, "-o", "beginning", "-c", "1", "-e", "-J"
    )
    record = json.loads(out.decode().splitlines()[0])
    flat = record["headers"]
    headers = dict(zip(flat[::2], flat[1::2], strict=True))
    assert headers == {
        "ce_id": sent.id,
        "ce_source": bus.settings.source,
        "ce_specversion": "1.0",
        "ce_type": "order.created",
    }
    parsed = await read_with_the_sdk(stream)
    assert parsed.get_id() == sent.id
    assert parsed.get_data() == {"order_id": "o-7"}


async def test_cloudevents_sdk_parses_what_we_publish(kafka: KafkaHarness) -> None:
    stream = unique("sdk")

    class Paid(Event, stream=stream, type="order.paid"):
        order_id: str
        amount: int

    spans = Spans()  # tracing on: the traceparent extension is part of what the SDK reads
    bus = kafka.bus(tracer_provider=spans.provider)
    async with bus:
        sent = await bus.publish(
            Paid(order_id="p-1", amount=3), key="p-1", headers={"tenant": "t1"}
        )
    [span] = spans.named(f"publish {stream}")
    parsed = await read_with_the_sdk(stream)
    assert parsed.get_id() == sent.id
    assert parsed.get_type() == "order.paid"
    assert parsed.get_source() == bus.settings.source
    assert parsed.get_data() == {"order_id": "p-1", "amount": 3}
    assert parsed.get_extension("partitionkey") == "p-1"
    assert parsed.get_extension("tenant") == "t1"
    traceparent = parsed.get_extension("traceparent")
    assert traceparent.startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")


async def test_an_event_written_by_the_cloudevents_sdk_is_consumed(kafka: KafkaHarness) -> None:
    stream = unique("sdk")

    class Paid(Event, stream=stream, type="order.paid"):
        order_id: str
        amount: int

    got: list[tuple[object, str, str, str | None]] = []
    bus = kafka.bus()

    @bus.subscribe(group=unique("g"))
    async def handle(event: Paid, ctx: Context) -> None:
        got.append((event, ctx.envelope.id, ctx.envelope.source, ctx.envelope.key))

    event = CloudEvent(
        attributes={
            "id": "sdk-1",
            "type": "order.paid",
            "source": "/billing",
            "datacontenttype": "application/json",
            "partitionkey": "p-2",
        },
        data={"order_id": "p-2", "amount": 7},
    )
    message = to_binary(event, JSONFormat())
    key = message.key.encode() if isinstance(message.key, str) else message.key
    async with bus:
        await asyncio.to_thread(
            raw_produce, stream, message.value, key, list(message.headers.items())
        )
        await until(lambda: len(got) == 1, what="the SDK's event")
    assert got == [(Paid(order_id="p-2", amount=7), "sdk-1", "/billing", "p-2")]
