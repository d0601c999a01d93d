"""`eventbus asyncapi`: the AsyncAPI 3.0 document of a bus, checked for what it says
(channels, messages, operations, the failure topology, headers, no secrets) and read by
three consumers: the official AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs, with
jsonschema), the official parser (npm @asyncapi/parser, run with node) and
asyncapi-python's parser. The npm packages come from scripts/asyncapi-specs.sh; a test
fails, never skips, when it cannot get them. No broker is needed: making a bus connects to
nothing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from asyncapi_python_codegen.parser import extract_all_operations
from pydantic import BaseModel

from eventbus import ConfigurationError, Context, Envelope, Event, EventBus, RetryPolicy
from eventbus.adapters.kafka.names import (
    DUE_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    dlq_topic,
    replay_topic,
    retry_topic,
)
from eventbus.adapters.rabbitmq.properties import ROUTING_KEY_HEADER
from eventbus.adapters.rabbitmq.topology import GroupTopology
from eventbus.asyncapi import (
    DEAD_LETTER_DESCRIPTIONS,
    KAFKA_DUE_HEADER,
    KAFKA_ORIGIN_OFFSET_HEADER,
    KAFKA_ORIGIN_PARTITION_HEADER,
    RABBITMQ_ROUTING_KEY_HEADER,
    asyncapi_document,
    render,
    retry_channel_names,
    server_of,
)
from eventbus.deadletter import DEAD_LETTER_HEADERS
from eventbus.event import schema_id
from eventbus.messages import build_message

ROOT = Path(__file__).resolve().parents[2]
ORDERS, TREES, MISC = "apidoc-orders", "apidoc-trees", "apidoc-misc"

RABBITMQ = "amqp://shop:s3cr3t-pw@rabbit.example:5673/shop"
KAFKA = "kafka://kafka-1.example:9092,kafka-2.example:9093"
MEMORY = "memory://apidoc"
URLS = [RABBITMQ, KAFKA, MEMORY]


class Address(BaseModel):
    street: str
    city: str


class OrderCreated(Event, stream=ORDERS, type="order.created"):
    """An order was placed."""

    order_id: str
    total: float
    ship_to: Address | None = None


class OrderPaid(Event, stream=ORDERS, type="order.paid"):
    order_id: str
    amount: float


class OrderShipped(Event, stream=ORDERS, type="order.shipped"):
    """Declared on a stream the bus reads, subscribed by no typed handler."""

    order_id: str


class Node(Event, stream=TREES, type="node.added"):
    """A recursive model: pydantic's schema is a $ref into its own $defs."""

    name: str
    children: list[Node] = []


class Unrelated(Event, stream="apidoc-unrelated", type="thing.happened"):
    thing: str


async def charge(event: OrderCreated | OrderPaid, ctx: Context) -> None:
    """Typed, delayed retries: 3 tries, so 2 retry tiers."""


def audit(envelope: Envelope) -> None:
    """Untyped, every order event, in-process retries."""


def anything(envelope: Envelope) -> None:
    """Untyped, on a stream no class declares."""


async def grow(node: Node) -> None:
    """Typed, never retried."""


def make_bus(url: str) -> EventBus:
    bus = EventBus(url)
    bus.add_handler(charge, group="billing", retry=RetryPolicy(attempts=3, backoff=1, delayed=True))
    bus.add_handler(audit, ORDERS, "order.#", group="audit")
    bus.add_handler(anything, MISC, "x.*", group="anything")
    bus.add_handler(grow, group="gardener", retry=RetryPolicy(attempts=1))
    return bus


def document(url: str) -> dict[str, Any]:
    return asyncapi_document(make_bus(url), title="Shop", version="2.1.0")


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """What a `#/...` reference points at in `doc`."""
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def keys(node: Any) -> set[str]:
    """Every key of every object in `node`."""
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in keys(v)}
    return set()


# --- what the document says ---------------------------------------------------------------


@pytest.mark.parametrize("url", URLS)
def test_every_reference_resolves_and_no_pydantic_defs_remain(url: str) -> None:
    doc = document(url)
    found = refs(doc)
    assert found
    for ref in found:
        resolve(doc, ref)
    assert "$defs" not in keys(doc)
    assert not [r for r in found if r.startswith("#/$defs")]


def test_one_channel_per_stream_with_the_rabbitmq_exchange() -> None:
    doc = document(RABBITMQ)
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "Shop" and doc["info"]["version"] == "2.1.0"
    assert doc["servers"] == {
        "rabbitmq": {
            "host": "rabbit.example:5673",
            "protocol": "amqp",
            "pathname": "/shop",
            "description": doc["servers"]["rabbitmq"]["description"],
        }
    }
    streams = {k: c for k, c in doc["channels"].items() if "x-eventbus-group" not in c}
    assert sorted(streams) == [MISC, ORDERS, TREES]
    orders = streams[ORDERS]
    assert orders["address"] == ORDERS
    assert orders["bindings"]["amqp"] == {
        "is": "routingKey",
        "exchange": {
            "name": ORDERS,
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "shop",
        },
        "bindingVersion": "0.3.0",
    }
    assert sorted(orders["messages"]) == ["OrderCreated", "OrderPaid", "OrderShipped"]
    assert "apidoc-unrelated" not in doc["channels"]  # declared, but on no stream of the bus


def test_kafka_channels_are_topics_and_memory_channels_stream_names() -> None:
    kafka = document(KAFKA)
    assert kafka["servers"]["kafka"]["host"] == "kafka-1.example:9092,kafka-2.example:9093"
    assert kafka["servers"]["kafka"]["protocol"] == "kafka"
    assert kafka["channels"][ORDERS]["bindings"] == {
        "kafka": {"topic": ORDERS, "bindingVersion": "0.5.0"}
    }
    memory = document(MEMORY)
    assert memory["servers"]["memory"]["protocol"] == "memory"
    assert memory["channels"][ORDERS]["address"] == ORDERS
    assert "bindings" not in memory["channels"][ORDERS]


def test_a_message_per_event_type_with_its_schema_and_dataschema() -> None:
    doc = document(KAFKA)
    message = doc["components"]["messages"]["OrderCreated"]
    assert message["x-eventbus-type"] == "order.created"
    assert message["x-eventbus-stream"] == ORDERS
    assert message["description"] == "An order was placed."
    payload = resolve(doc, message["payload"]["$ref"])
    sent = build_message(OrderCreated(order_id="o-1", total=3.5), source="s", max_bytes=10_000)
    assert payload["$id"] == sent.attributes["dataschema"] == schema_id(ORDERS, "order.created")
    assert message["x-eventbus-dataschema"] == payload["$id"]
    # nested models moved to components/schemas, shared by name
    assert doc["components"]["schemas"]["Address"]["properties"]["city"] == {
        "title": "City",
        "type": "string",
    }
    assert message["headers"]["properties"]["ce_type"]["const"] == "order.created"
    assert message["headers"]["properties"]["ce_dataschema"]["const"] == payload["$id"]
    assert message["correlationId"]["location"] == "$message.header#/ce_correlationid"
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
    # a recursive model: its own schema, referring to itself by its components key
    node = doc["components"]["schemas"]["Node"]
    assert node["$id"] == schema_id(TREES, "node.added")
    assert node["properties"]["children"]["items"] == {"$ref": "#/components/schemas/Node"}


def payload_validator(doc: dict[str, Any], key: str) -> jsonschema.Draft7Validator:
    """A validator of the payload of message `key`, its references resolved against the
    document as AsyncAPI tools do (the `$id`s name the schemas; they are not the base of
    the document's `#/components/...` references, so they are left out here)."""
    components = copy.deepcopy(doc["components"])
    for schema in components["schemas"].values():
        schema.pop("$id", None)
    ref = doc["components"]["messages"][key]["payload"]["$ref"]
    return jsonschema.Draft7Validator({"$ref": ref, "components": components})


def test_the_payload_schema_describes_what_the_bus_writes() -> None:
    doc = document(RABBITMQ)
    body = build_message(
        OrderCreated(order_id="o-1", total=2.0, ship_to=Address(street="Main", city="X")),
        source="s",
        max_bytes=10_000,
    ).body
    validator = payload_validator(doc, "OrderCreated")
    assert list(validator.iter_errors(json.loads(body))) == []
    assert list(validator.iter_errors({"order_id": "o-1", "total": 1, "ship_to": {"x": 1}}))
    tree = Node(name="a", children=[Node(name="b", children=[Node(name="c")])])
    nodes = payload_validator(doc, "Node")
    assert list(nodes.iter_errors(json.loads(tree.model_dump_json()))) == []
    assert list(nodes.iter_errors({"name": "a", "children": [{"x": 1}]})) != []


@pytest.mark.parametrize(
    ("url", "names", "absent"),
    [
        (
            KAFKA,
            ["ce_id", "ce_source", "ce_specversion", "ce_type", "ce_time", "content-type"],
            "ce_partitionkey",  # the record key carries it
        ),
        (
            RABBITMQ,
            ["ce-id", "ce-source", "ce-specversion", "ce-type", "ce-time", "ce-partitionkey"],
            "ce-datacontenttype",  # the content_type property carries it
        ),
        (MEMORY, ["id", "source", "specversion", "type", "time", "partitionkey"], "ce_id"),
    ],
)
def test_cloudevents_headers_as_each_broker_names_them(
    url: str, names: list[str], absent: str
) -> None:
    headers = document(url)["components"]["schemas"]["CloudEventsHeaders"]
    prefix = names[0][:-2]
    expected = {
        *names,
        *(f"{prefix}{a}" for a in ("dataschema", "correlationid", "causationid")),
        *(f"{prefix}{a}" for a in ("traceparent", "tracestate")),
    }
    assert expected <= set(headers["properties"])
    assert absent not in headers["properties"]
    assert headers["required"] == [f"{prefix}{a}" for a in ("id", "source", "specversion", "type")]
    assert headers["properties"][f"{prefix}specversion"]["const"] == "1.0"


def test_send_and_receive_operations() -> None:
    doc = document(RABBITMQ)
    ops = doc["operations"]
    send = ops["send.OrderPaid"]
    assert send["action"] == "send"
    assert send["channel"] == {"$ref": f"#/channels/{ORDERS}"}
    assert send["messages"] == [{"$ref": f"#/channels/{ORDERS}/messages/OrderPaid"}]
    assert send["bindings"]["amqp"]["cc"] == ["order.paid"]  # the type is the routing key
    assert {k for k in ops if k.startswith("send.") and "." not in k[5:]} == {
        "send.OrderCreated",
        "send.OrderPaid",
        "send.OrderShipped",
        "send.Node",
    }
    billing = ops[f"receive.{ORDERS}.billing"]
    assert billing["action"] == "receive"
    assert billing["x-eventbus-group"] == "billing"
    assert billing["x-eventbus-handler"] == f"{__name__}.charge"
    assert billing["x-eventbus-patterns"] == ["order.created", "order.paid"]
    assert billing["x-eventbus-queues"] == [f"{ORDERS}.billing"]
    assert [resolve(doc, m["$ref"]) for m in billing["messages"]] == [
        {"$ref": "#/components/messages/OrderCreated"},
        {"$ref": "#/components/messages/OrderPaid"},
    ]
    assert billing["x-eventbus-retry"]["tiers"] == [1.0, 2.0]
    # untyped: every declared event its patterns match
    audit_op = ops[f"receive.{ORDERS}.audit"]
    assert [m["$ref"].rsplit("/", 1)[1] for m in audit_op["messages"]] == [
        "OrderCreated",
        "OrderPaid",
        "OrderShipped",
    ]
    assert audit_op["x-eventbus-patterns"] == ["order.#"]
    # untyped on a stream no class declares: a catch-all message
    misc = ops[f"receive.{MISC}.anything"]
    [ref] = misc["messages"]
    assert resolve(doc, ref["$ref"]) == {"$ref": f"#/components/messages/{MISC}.event"}
    kafka = document(KAFKA)["operations"][f"receive.{ORDERS}.billing"]
    assert kafka["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["billing"]}


def side_channels(doc: dict[str, Any], group: str) -> list[str]:
    return [k for k, c in doc["channels"].items() if c.get("x-eventbus-group") == group]


def test_failure_topology_on_rabbitmq_is_the_adapters() -> None:
    doc = document(RABBITMQ)
    policy = RetryPolicy(attempts=3, backoff=1, delayed=True)
    topology = GroupTopology(
        stream=ORDERS,
        group="billing",
        patterns=("order.created", "order.paid"),
        queue_type="quorum",
        single_active_consumer=True,
        partitions=None,
        tiers=tuple(policy.tiers()),
    )
    waits = [name for name, _ in topology.tier_queues()]
    assert waits == [f"{ORDERS}.billing.retry.1", f"{ORDERS}.billing.retry.2"]
    assert side_channels(doc, "billing") == [*waits, topology.dlq]
    assert set(topology.all_queues()) - set(doc["channels"]) == {f"{ORDERS}.billing"}
    wait = doc["channels"][waits[1]]
    assert wait["x-eventbus-delay-ms"] == 2000
    assert wait["bindings"]["amqp"]["is"] == "queue"
    assert wait["bindings"]["amqp"]["queue"]["name"] == waits[1]
    assert f"send.{waits[0]}" in doc["operations"]
    assert f"receive.{waits[0]}" not in doc["operations"]  # the broker moves it back
    # in-process retries and no retries: a dead-letter channel only
    assert side_channels(doc, "audit") == [f"{ORDERS}.audit.dlq"]
    assert side_channels(doc, "gardener") == [f"{TREES}.gardener.dlq"]
    assert retry_channel_names("amqp", ORDERS, "billing", policy) == waits


def test_failure_topology_on_kafka_is_the_adapters() -> None:
    doc = document(KAFKA)
    policy = RetryPolicy(attempts=3, backoff=1, delayed=True)
    retries = [retry_topic(ORDERS, "billing", n) for n in range(len(policy.tiers()))]
    assert retries == [f"{ORDERS}.billing.retry.0", f"{ORDERS}.billing.retry.1"]
    replay, dlq = replay_topic(ORDERS, "billing"), dlq_topic(ORDERS, "billing")
    assert side_channels(doc, "billing") == [*retries, replay, dlq]
    assert doc["channels"][dlq]["bindings"] == {"kafka": {"topic": dlq, "bindingVersion": "0.5.0"}}
    ops = doc["operations"]
    # the group's consumer reads its retry and replay topics: receive operations too
    assert {f"send.{retries[0]}", f"receive.{retries[0]}", f"receive.{replay}"} <= set(ops)
    assert f"send.{replay}" not in ops
    assert side_channels(doc, "audit") == [f"{ORDERS}.audit.replay", f"{ORDERS}.audit.dlq"]
    assert retry_channel_names("kafka", ORDERS, "billing", policy) == retries


def test_failure_topology_on_memory_has_no_retry_channels() -> None:
    doc = document(MEMORY)
    assert side_channels(doc, "billing") == [f"{ORDERS}.billing.dlq"]
    assert "timers" in doc["operations"][f"receive.{ORDERS}.billing"]["description"]


def test_dead_letter_and_retry_headers() -> None:
    assert set(DEAD_LETTER_DESCRIPTIONS) == set(DEAD_LETTER_HEADERS)
    assert (KAFKA_DUE_HEADER, KAFKA_ORIGIN_PARTITION_HEADER, KAFKA_ORIGIN_OFFSET_HEADER) == (
        DUE_HEADER,
        ORIGIN_PARTITION_HEADER,
        ORIGIN_OFFSET_HEADER,
    )
    assert RABBITMQ_ROUTING_KEY_HEADER == ROUTING_KEY_HEADER
    kafka = document(KAFKA)
    dead = kafka["components"]["schemas"]["DeadLetterHeaders"]
    assert set(dead["properties"]) == set(DEAD_LETTER_HEADERS) - {"x-original-routing-key"}
    assert {"x-original-stream", "x-exception-type", "x-attempts"} <= set(dead["required"])
    message = resolve(
        kafka, kafka["channels"][f"{ORDERS}.billing.dlq"]["messages"]["deadLetter"]["$ref"]
    )
    assert message["headers"]["allOf"] == [{"$ref": "#/components/schemas/DeadLetterHeaders"}]
    retry = kafka["components"]["schemas"]["RetryHeaders"]["properties"]
    assert set(retry) == {
        "x-eventbus-attempt",
        DUE_HEADER,
        ORIGIN_PARTITION_HEADER,
        ORIGIN_OFFSET_HEADER,
    }
    rabbit = document(RABBITMQ)["components"]["schemas"]
    assert set(rabbit["RetryHeaders"]["properties"]) == {"x-eventbus-attempt", ROUTING_KEY_HEADER}
    assert "x-original-routing-key" in rabbit["DeadLetterHeaders"]["properties"]
    assert "x-original-offset" not in rabbit["DeadLetterHeaders"]["properties"]


@pytest.mark.parametrize(
    ("url", "scheme", "host", "path"),
    [
        ("amqp://u:p@ss/w#rd?x@rabbit:5673/vh?heartbeat=5", "amqp", "rabbit:5673", "/vh"),
        ("amqps://u:pw@rabbit/", "amqps", "rabbit:5671", "/"),
        ("amqp://rabbit", "amqp", "rabbit:5672", ""),
        ("kafka://user:s@cret@k1:9092,k2:9092", "kafka", "k1:9092,k2:9092", ""),
        ("memory://", "memory", "", ""),
    ],
)
def test_server_is_host_and_path_only(url: str, scheme: str, host: str, path: str) -> None:
    assert server_of(url, scheme) == (host, path)


@pytest.mark.parametrize(
    "url",
    ["amqp://shop:p@ss/w#rd?s3@rabbit:5672/shop", "kafka://svc:k4fka-s3cret@k1:9092"],
)
def test_no_password_reaches_the_document(url: str) -> None:
    text = json.dumps(asyncapi_document(make_bus(url)))
    for secret in ("p@ss", "w#rd", "s3@", "k4fka-s3cret", "shop:", "svc:"):
        assert secret not in text


def test_events_parameter_and_publish_only_buses() -> None:
    bus = make_bus(MEMORY)
    assert "apidoc-unrelated" not in asyncapi_document(bus)["channels"]
    extra = asyncapi_document(bus, events=[Unrelated])
    assert extra["channels"]["apidoc-unrelated"]["messages"] == {
        "Unrelated": {"$ref": "#/components/messages/Unrelated"}
    }
    assert "send.Unrelated" in extra["operations"]
    assert "apidoc-unrelated" in asyncapi_document(bus, all_events=True)["channels"]
    publisher = asyncapi_document(EventBus(MEMORY))  # no subscription: every declared event
    assert {ORDERS, TREES, "apidoc-unrelated"} <= set(publisher["channels"])
    with pytest.raises(ConfigurationError, match="no stream/type"):

        class Bare(Event):
            x: int

        asyncapi_document(bus, events=[Bare])


def placed_on(stream: str, field_type: type[Any]) -> type[Event]:
    """A class named `Placed` on `stream`, holding a model named `Item`."""

    class Item(BaseModel):
        value: field_type  # type: ignore[valid-type]

    class Placed(Event, stream=stream, type="placed"):
        item: Item

    return Placed


def test_same_names_on_two_streams_are_kept_apart() -> None:
    first, second, same = (
        placed_on("apidoc-a", str),
        placed_on("apidoc-b", int),
        placed_on("apidoc-c", str),
    )
    doc = asyncapi_document(EventBus(MEMORY), events=[first, second, same])
    messages = doc["components"]["messages"]
    assert [messages[k]["x-eventbus-stream"] for k in ("Placed", "Placed_2", "Placed_3")] == [
        "apidoc-a",
        "apidoc-b",
        "apidoc-c",
    ]
    schemas = doc["components"]["schemas"]
    # two different models named Item, and the third one equal to the first: shared
    assert schemas["Item"]["properties"]["value"]["type"] == "string"
    assert schemas["Item_2"]["properties"]["value"]["type"] == "integer"
    assert "Item_3" not in schemas
    item_of = {
        k: schemas[k]["properties"]["item"]["$ref"] for k in ("Placed", "Placed_2", "Placed_3")
    }
    assert item_of == {
        "Placed": "#/components/schemas/Item",
        "Placed_2": "#/components/schemas/Item_2",
        "Placed_3": "#/components/schemas/Item",
    }
    for ref in refs(doc):
        resolve(doc, ref)


def wrapped_on(stream: str, field_type: type[Any]) -> type[Event]:
    """A class whose `Outer` model is the same on every stream but holds an `Inner` that
    is not."""

    class Inner(BaseModel):
        value: field_type  # type: ignore[valid-type]

    class Outer(BaseModel):
        inner: Inner

    class Wrapped(Event, stream=stream, type="wrapped"):
        outer: Outer

    return Wrapped


def test_a_model_is_not_shared_when_a_model_it_refers_to_differs() -> None:
    first, second = wrapped_on("apidoc-w1", str), wrapped_on("apidoc-w2", int)
    doc = asyncapi_document(EventBus(MEMORY), events=[first, second])
    schemas = doc["components"]["schemas"]
    assert schemas["Outer"]["properties"]["inner"] == {"$ref": "#/components/schemas/Inner"}
    assert schemas["Outer_2"]["properties"]["inner"] == {"$ref": "#/components/schemas/Inner_2"}
    assert schemas["Inner_2"]["properties"]["value"]["type"] == "integer"
    assert schemas["Wrapped_2"]["properties"]["outer"] == {"$ref": "#/components/schemas/Outer_2"}


def test_yaml_rendering_and_its_absence() -> None:
    doc = document(KAFKA)
    text = render(doc, "yaml")
    assert "&id" not in text and "*id" not in text  # plain YAML, no anchors
    assert yaml.safe_load(text) == doc
    assert json.loads(render(doc)) == doc


def test_yaml_without_pyyaml_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigurationError, match="PyYAML"):
        render({"asyncapi": "3.0.0"}, "yaml")


# --- the consumers ------------------------------------------------------------------------


def npm_packages(what: str) -> str:
    """scripts/asyncapi-specs.sh: the npm packages, installed once into the cache."""
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "asyncapi-specs.sh"), what],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/asyncapi-specs.sh did not run: {exc}")
    if done.returncode != 0:
        pytest.fail(f"scripts/asyncapi-specs.sh failed ({done.returncode}):\n{done.stderr}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def official_schema() -> jsonschema.Draft7Validator:
    """The bundled AsyncAPI 3.0.0 schema: draft-07, every definition embedded under its
    `$id` (http://asyncapi.com/definitions/3.0.0/...), which the validator resolves
    without fetching anything."""
    schema = json.loads(Path(npm_packages("schema")).read_text())
    assert schema["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("url", URLS)
def test_the_official_json_schema_accepts_the_document(
    official_schema: jsonschema.Draft7Validator, url: str
) -> None:
    doc = document(url)
    error = jsonschema.exceptions.best_match(official_schema.iter_errors(doc))
    assert error is None, f"{error.json_path}: {error.message}" if error else ""


def test_the_official_json_schema_is_no_rubber_stamp(
    official_schema: jsonschema.Draft7Validator,
) -> None:
    doc = document(RABBITMQ)
    broken = copy.deepcopy(doc)
    broken["channels"][ORDERS]["bindings"]["amqp"]["exchange"]["type"] = "fan-in"
    assert not official_schema.is_valid(broken)
    broken = copy.deepcopy(doc)
    broken["operations"]["send.OrderPaid"]["action"] = "publish"  # AsyncAPI 2 wording
    assert not official_schema.is_valid(broken)


@pytest.fixture(scope="module")
def parser_modules() -> str:
    return npm_packages("parser")


def official_parser(modules: str, doc: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    file = tmp_path / "asyncapi.json"
    file.write_text(json.dumps(doc))
    try:
        done = subprocess.run(
            ["node", str(Path(__file__).with_name("asyncapi_parse.cjs")), modules, str(file)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"node could not run the AsyncAPI parser: {exc}")
    if done.returncode != 0:
        pytest.fail(f"the AsyncAPI parser failed ({done.returncode}):\n{done.stderr}")
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


@pytest.mark.parametrize("url", [RABBITMQ, KAFKA])
def test_the_official_parser_reads_the_document(
    parser_modules: str, url: str, tmp_path: Path
) -> None:
    parsed = official_parser(parser_modules, document(url), tmp_path)
    problems = [d for d in parsed["diagnostics"] if d["severity"] in ("error", "warning")]
    assert problems == [] and parsed["parsed"]
    assert parsed["version"] == "3.0.0"
    channels = parsed["channels"]
    assert channels[ORDERS]["address"] == ORDERS
    assert channels[ORDERS]["messages"] == ["OrderCreated", "OrderPaid", "OrderShipped"]
    assert channels[f"{ORDERS}.billing.dlq"]["messages"] == ["deadLetter"]
    messages = parsed["messages"]
    # the parser's id of the payload schema is the dataschema every event carries
    assert messages["OrderPaid"]["payloadId"] == schema_id(ORDERS, "order.paid")
    assert messages["Node"]["payloadType"] == "object"
    billing = parsed["operations"][f"receive.{ORDERS}.billing"]
    assert billing == {
        "action": "receive",
        "channels": [ORDERS],
        "messages": ["OrderCreated", "OrderPaid"],
    }


def test_the_official_parser_rejects_a_dangling_reference(
    parser_modules: str, tmp_path: Path
) -> None:
    doc = document(MEMORY)
    doc["operations"]["send.OrderPaid"]["messages"] = [
        {"$ref": f"#/channels/{ORDERS}/messages/NoSuchEvent"}
    ]
    parsed = official_parser(parser_modules, doc, tmp_path)
    assert not parsed["parsed"]
    assert any(d["severity"] == "error" for d in parsed["diagnostics"])


def test_asyncapi_python_reads_the_document(tmp_path: Path) -> None:
    file = tmp_path / "asyncapi.json"
    file.write_text(json.dumps(document(RABBITMQ)))
    operations = extract_all_operations(file)
    receive = operations[f"receive.{ORDERS}.billing"]
    assert receive.action == "receive"
    assert receive.channel.address == ORDERS
    exchange = receive.channel.bindings.amqp.exchange
    assert (exchange.name, exchange.type.value, exchange.durable) == (ORDERS, "topic", True)
    assert sorted(receive.channel.messages) == ["OrderCreated", "OrderPaid", "OrderShipped"]
    send = operations["send.OrderCreated"]
    assert send.action == "send" and send.bindings.amqp.cc == ["order.created"]
    # references are left as they are: the payload names the class's schema
    payload = send.channel.messages["OrderCreated"].payload
    assert payload == {"$ref": "#/components/schemas/OrderCreated"}
    dead = operations[f"send.{ORDERS}.billing.dlq"].channel
    assert dead.address == f"{ORDERS}.billing.dlq"
    assert dead.bindings.amqp.queue.name == f"{ORDERS}.billing.dlq"
    assert [m.name for m in dead.messages.values()] == ["DeadLetter"]
    waits = [op.channel.address for key, op in operations.items() if ".retry." in key]
    assert waits == [f"{ORDERS}.billing.retry.1", f"{ORDERS}.billing.retry.2"]


# --- the command --------------------------------------------------------------------------


def eventbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbus", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_the_document(
    tmp_path: Path, official_schema: jsonschema.Draft7Validator
) -> None:
    out = tmp_path / "tickets.json"
    done = eventbus("asyncapi", "tests.unit.asyncapi_app:bus", "-o", str(out))
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert official_schema.is_valid(doc)
    assert doc["servers"]["rabbitmq"]["host"] == "127.0.0.1:5672"
    assert "cli-secret-9" not in out.read_text()
    assert sorted(doc["channels"]) == [
        "apidoc-cli-tickets",
        "apidoc-cli-tickets.archive.dlq",
        "apidoc-cli-tickets.triage.dlq",
        "apidoc-cli-tickets.triage.retry.1",
    ]
    assert doc["operations"]["receive.apidoc-cli-tickets.triage"]["x-eventbus-handler"] == (
        "tests.unit.asyncapi_app.triage"
    )
    as_yaml = tmp_path / "tickets.yaml"  # the suffix picks the format
    done = eventbus("asyncapi", "tests.unit.asyncapi_app:bus", "-o", str(as_yaml))
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(as_yaml.read_text()) == doc
    done = eventbus("asyncapi", "tests.unit.asyncapi_app:bus", "--format", "json")
    assert done.returncode == 0 and json.loads(done.stdout) == doc


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    done = eventbus("asyncapi", "tests.unit.no_such_module:bus")
    assert done.returncode == 2
    assert done.stderr.startswith("eventbus: error: cannot import 'tests.unit.no_such_module'")
    done = eventbus(
        "asyncapi", "tests.unit.asyncapi_app:bus", "-o", str(tmp_path / "missing" / "x.json")
    )
    assert done.returncode == 2
    assert done.stderr.startswith("eventbus: error: cannot write")
