"""Our binary-mode headers are what the CloudEvents SDK writes and reads; event ids."""

import itertools
import time
import uuid
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from eventbus import Event
from eventbus.messages import build_message
from eventbus.protocol import Message
from eventbus.wire import _Clock, _Ids, from_amqp, from_kafka_headers, to_amqp, to_kafka_headers


class Paid(Event, stream="orders", type="order.paid"):
    order_id: str
    amount: float


def message() -> Message:
    return build_message(
        Paid(order_id="o-1", amount=9.5),
        source="/billing",
        max_bytes=10_000,
        key="o-1",
        headers={"tenant": "acme"},
        correlation_id="c-1",
    )


def test_sdk_reads_our_kafka_record() -> None:
    m = message()
    record = ce_kafka.KafkaMessage(
        # as a consumer reads them: librdkafka writes the str values as UTF-8
        headers={name: value.encode() for name, value in to_kafka_headers(m.attributes)},
        key=(m.key or "").encode(),
        value=m.body,
    )
    event = ce_kafka.from_binary(record, JSONFormat(), CloudEvent)
    assert event.get_id() == m.attributes["id"]
    assert event.get_type() == "order.paid"
    assert event.get_source() == "/billing"
    assert event.get_data() == {"order_id": "o-1", "amount": 9.5}
    assert event.get_extension("partitionkey") == "o-1"
    assert event.get_extension("correlationid") == "c-1"
    assert event.get_extension("tenant") == "acme"
    assert event.get_dataschema() == "urn:eventbus:schema:orders:order.paid"


def test_we_read_the_sdks_kafka_record() -> None:
    event = CloudEvent(
        {
            "id": "e-9",
            "source": "/sdk",
            "type": "order.paid",
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "partitionkey": "o-2",
        },
        {"order_id": "o-2", "amount": 1.0},
    )
    record = ce_kafka.to_binary(event, JSONFormat())
    attributes, attempt = from_kafka_headers(list(record.headers.items()), record.key)
    assert attributes["id"] == "e-9" and attributes["type"] == "order.paid"
    assert attributes["partitionkey"] == "o-2" and attempt == 1
    assert Paid.model_validate_json(record.value) == Paid(order_id="o-2", amount=1.0)


def test_sdk_reads_our_amqp_message() -> None:
    m = message()
    headers, content_type = to_amqp(m.attributes)
    event = ce_rabbitmq.from_binary(
        ce_rabbitmq.RabbitMQMessage(headers=headers, content_type=content_type, body=m.body),
        JSONFormat(),
        CloudEvent,
    )
    assert event.get_id() == m.attributes["id"]
    assert event.get_type() == "order.paid"
    assert event.get_extension("tenant") == "acme"
    assert event.get_dataschema() == "urn:eventbus:schema:orders:order.paid"
    assert headers["ce-dataschema"] == "urn:eventbus:schema:orders:order.paid"
    assert event.get_data() == {"order_id": "o-1", "amount": 9.5}


def test_we_read_the_sdks_amqp_message() -> None:
    event = CloudEvent(
        {
            "id": "e-1",
            "source": "/sdk",
            "type": "order.paid",
            "specversion": "1.0",
            "datacontenttype": "application/json",
        },
        {"order_id": "o-3", "amount": 2.0},
    )
    msg = ce_rabbitmq.to_binary(event, JSONFormat())
    attributes, _ = from_amqp(msg.headers, msg.content_type)
    assert attributes["id"] == "e-1" and attributes["datacontenttype"] == "application/json"


def test_plain_amqp_message_falls_back_to_routing_key_and_message_id() -> None:
    attributes, attempt = from_amqp({}, None, message_id="m-1", routing_key="order.paid")
    assert attributes == {"id": "m-1", "type": "order.paid"}
    assert attempt == 1


def test_attempt_header_round_trip_and_garbage() -> None:
    headers = to_kafka_headers({"type": "t"}, attempt=3)
    assert from_kafka_headers(headers, None)[1] == 3
    assert from_kafka_headers([("x-eventbus-attempt", b"lots")], None)[1] == 1
    amqp_headers, _ = to_amqp({"type": "t"}, attempt=2)
    assert from_amqp(amqp_headers, None)[1] == 2


def test_kafka_headers_read_the_same_on_the_fast_and_the_careful_path() -> None:
    """Known names and UTF-8 values take one comprehension; anything else (a name not
    seen before, a None value, invalid UTF-8, in any header) is read header by header.
    Both give the same attributes, attempt and defects."""
    from eventbus.wire import _kafka_attributes

    records: list[tuple[list[tuple[str, bytes | None]], bytes | None]] = [
        ([("ce_id", b"e-1"), ("ce_type", b"t"), ("content-type", b"application/json")], b"k"),
        ([("ce_id", b"e-1"), ("x-eventbus-attempt", b"4"), ("ce_type", b"t")], None),
        ([("ce_type", b"t"), ("x-other", b"ignored"), ("ce_type", b"t2")], b"k"),  # last wins
        ([("ce_id", b"e-1"), ("ce_NewExt", b"v")], b"k"),  # a name met for the first time
        ([("ce_id", None), ("ce_type", b"t")], None),
        ([("ce_id", b"\xff"), ("ce_type", b"t")], b"\xfe"),
        ([("x-not-ours", b"\xff"), ("ce_type", b"t")], b"k"),  # bad bytes we never read
        ([], b"k"),
    ]
    for _ in range(2):  # the second round meets every name again: the fast path
        for headers, key in records:
            fast_defects: list[str] = []
            attributes, attempt = from_kafka_headers(headers, key, fast_defects)
            careful_defects: list[str] = []
            expected, expected_attempt = _kafka_attributes(headers, careful_defects)
            if key is not None:
                expected["partitionkey"] = key.decode("utf-8", "replace")
                if key == b"\xfe":
                    careful_defects.append("record key is not valid UTF-8")
            assert (attributes, attempt) == (expected, expected_attempt)
            assert fast_defects == careful_defects
    assert from_kafka_headers(records[1][0], None)[1] == 4
    assert from_kafka_headers(records[2][0], b"k")[0] == {"type": "t2", "partitionkey": "k"}
    assert from_kafka_headers(records[3][0], b"k")[0]["newext"] == "v"
    assert from_kafka_headers(records[6][0], b"k")[0] == {"type": "t", "partitionkey": "k"}


def test_event_ids_are_uuid4_shaped_and_sort_by_creation_across_the_counters_carry() -> None:
    """The low 48 bits are written zero-padded (12 hex digits), and the fixed head changes
    when the counter carries into bit 48: ids stay valid UUIDs and keep sorting."""
    ids = _Ids()
    made = []
    for start in (0, 0xABC, (1 << 48) - 2):
        ids.counter = itertools.count(start)
        ids._head(start)
        made += [ids.next() for _ in range(4)]
    for made_id in made:
        parsed = uuid.UUID(made_id)
        assert str(parsed) == made_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert made[0].endswith("-000000000000") and made[4].endswith("-000000000abc")
    assert made[9].endswith("-ffffffffffff") and made[10].endswith("-000000000000")
    assert made == sorted(made) and len(set(made)) == len(made)


def test_event_ids_of_a_forked_process_start_elsewhere() -> None:
    """`reset` (run in every forked child) draws a new random prefix and counter."""
    ids = _Ids()
    before = ids.next()
    ids.reset()
    after = ids.next()
    assert before[:18] != after[:18] and uuid.UUID(after).version == 4


def test_event_times_are_what_datetime_writes_for_each_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The clock's text, made once per second and millisecond, is `isoformat` of that
    millisecond with a `Z`: across milliseconds, seconds, days and a leap day, called
    again within a millisecond, and after a step back (a clock set back)."""
    clock = _Clock()
    moments = [
        1_764_586_955_123,  # 2025-12-01T11:02:35.123Z
        1_764_586_955_123,  # the same millisecond again: the cached text
        1_764_586_955_999,
        1_764_586_956_000,  # the next second
        1_764_633_599_999,  # a day's last millisecond
        1_764_633_600_000,  # the next day
        1_709_251_199_007,  # 2024-02-29T23:59:59.007Z: a leap day
        1_764_586_955_122,  # back in time
        0,
    ]
    for ms in moments:
        monkeypatch.setattr(time, "time_ns", lambda ms=ms: ms * 1_000_000 + 999_999)
        expected = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        assert clock.now() == expected.replace("+00:00", "Z")
