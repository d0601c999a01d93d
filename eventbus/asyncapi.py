"""The AsyncAPI 3.0 document of a bus: `asyncapi_document(bus)`, `eventbus asyncapi`.

What the document holds, for the broker of the bus's URL:

- one server: the broker's host and port from the URL (never the user or the password);
- one channel per stream the bus uses: the topic exchange on RabbitMQ (the event type is
  the routing key), the topic on Kafka, the stream's name on memory;
- one message per event type, named after its Event class: the payload is the JSON
  Schema of the class (its `$id` is the CloudEvents `dataschema` every event carries,
  `urn:eventbus:schema:<stream>:<type>`), the headers are the CloudEvents binary-mode
  headers as the broker carries them (`ce_*` on Kafka, `ce-*` on RabbitMQ);
- operations: `send.<Message>` for every event type of a stream, `receive.<stream>.<group>`
  for every subscription (its group, patterns, handler and retry policy);
- the failure topology, which no other generator documents: for every subscription its
  dead-letter channel `<stream>.<group>.dlq` with the dead-letter headers and, with
  `RetryPolicy(delayed=True)`, its retry channels named as the adapter names them
  (RabbitMQ wait queues `<stream>.<group>.retry.<n>` numbered from 1, Kafka retry topics
  numbered from 0, plus the Kafka replay topic `<stream>.<group>.replay`).

The broker-specific names are written here from the adapters' conventions (the kernel
imports no adapter); tests compare them with the adapters' own functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote, unquote

from .bus import EventBus, Subscription
from .deadletter import DEAD_LETTER_HEADERS
from .errors import ConfigurationError
from .event import Event, declared_events, schema_id
from .retry import RetryPolicy
from .routing import matches_any
from .toolkit import dead_letter_name, replay_name, retry_name
from .wire import AMQP_PREFIX, ATTEMPT_HEADER, KAFKA_CONTENT_TYPE, KAFKA_PREFIX

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
KAFKA_BINDING_VERSION = "0.5.0"

#: transport headers the adapters add to the copies they make (see their modules)
RABBITMQ_ROUTING_KEY_HEADER = "x-eventbus-routing-key"
KAFKA_DUE_HEADER = "x-eventbus-due"
KAFKA_ORIGIN_PARTITION_HEADER = "x-eventbus-origin-partition"
KAFKA_ORIGIN_OFFSET_HEADER = "x-eventbus-origin-offset"

#: what each dead-letter header says (every name of `DEAD_LETTER_HEADERS` is here)
DEAD_LETTER_DESCRIPTIONS = {
    "x-original-stream": "the stream the event was read from",
    "x-original-type": "the event type (as received; empty when the event had none)",
    "x-original-group": "the group whose handler gave up on the event",
    "x-original-partition": "Kafka: the partition of the stream the record was read from",
    "x-original-offset": "Kafka: the offset of the record in that partition",
    "x-original-routing-key": "RabbitMQ: the routing key the message was published with",
    "x-exception-type": "the qualified name of the exception, or the reason's kind (for an "
    "event that could not be decoded)",
    "x-exception-message": "the exception's message or the reason (at most 2048 characters)",
    "x-exception-stacktrace": "the formatted stack trace (its last 8192 characters; shortened "
    "when the dead letter would not fit the broker's size limit)",
    "x-attempts": "how many times the handler ran the event (decimal)",
    "x-dead-lettered-at": "when it was dead-lettered, RFC 3339 UTC",
}

#: the CloudEvents attributes eventbus writes or reads, with what they say
_ATTRIBUTES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("id", "the event id: unique per event, kept by retries and redeliveries", {}),
    ("source", "who published it: the EVENTBUS_SOURCE of the publisher", {}),
    ("specversion", "CloudEvents version", {"const": "1.0"}),
    ("type", "the event type (on RabbitMQ also the routing key)", {}),
    (
        "time",
        "when it was published, RFC 3339 UTC (written unless the publisher turned "
        "optional_attributes off)",
        {},
    ),
    (
        "datacontenttype",
        "the payload's media type",
        {"const": "application/json"},
    ),
    (
        "dataschema",
        "the id of the payload's JSON Schema, urn:eventbus:schema:<stream>:<type>: the $id "
        "of the message's payload schema in this document",
        {"format": "uri"},
    ),
    (
        "partitionkey",
        "the key given to publish: events with one key are handled in order within a group",
        {},
    ),
    ("correlationid", "the correlation id (set for you when a handler publishes)", {}),
    ("causationid", "the id of the event whose handler published this one", {}),
    ("traceparent", "W3C trace context of the publish span (when tracing is on)", {}),
    ("tracestate", "W3C trace state (when tracing is on and the trace has one)", {}),
)
_REQUIRED_ATTRIBUTES = ("id", "source", "specversion", "type")


@dataclass(frozen=True, slots=True)
class _Broker:
    """How one kind of broker carries events and names a group's side channels."""

    key: str  #: the server's name in the document
    label: str
    protocol: str
    #: prefix of the CloudEvents attribute headers ("" = the attributes travel as they are)
    prefix: str
    #: the header that carries `datacontenttype` (None: a message property, AMQP)
    content_type_header: str | None
    #: the partition key travels as a header (RabbitMQ, memory) or as the record key (Kafka)
    key_in_header: bool
    #: the number of the first delayed-retry channel (None: delayed retries are not
    #: channels, e.g. memory's timers)
    first_tier: int | None
    #: replayed dead letters go through `<stream>.<group>.replay`
    replay_channel: bool
    #: headers the adapter adds to a delayed-retry copy, besides the attempt count
    retry_headers: Mapping[str, str] = field(default_factory=dict)
    #: dead-letter headers this broker writes
    dead_letter_headers: tuple[str, ...] = ()


#: the dead-letter headers of every broker (Kafka adds partition and offset, RabbitMQ the
#: routing key)
_BROKER_SPECIFIC = {"x-original-partition", "x-original-offset", "x-original-routing-key"}
_COMMON_DEAD = tuple(h for h in DEAD_LETTER_HEADERS if h not in _BROKER_SPECIFIC)

_RABBITMQ = _Broker(
    key="rabbitmq",
    label="RabbitMQ",
    protocol="amqp",
    prefix=AMQP_PREFIX,
    content_type_header=None,
    key_in_header=True,
    first_tier=1,
    replay_channel=False,
    retry_headers={
        RABBITMQ_ROUTING_KEY_HEADER: "the routing key the event was first published with "
        "(the copy travels through the default exchange)",
    },
    dead_letter_headers=(*_COMMON_DEAD, "x-original-routing-key"),
)
_KAFKA = _Broker(
    key="kafka",
    label="Kafka",
    protocol="kafka",
    prefix=KAFKA_PREFIX,
    content_type_header=KAFKA_CONTENT_TYPE,
    key_in_header=False,
    first_tier=0,
    replay_channel=True,
    retry_headers={
        KAFKA_DUE_HEADER: "epoch milliseconds before which the record is not handled (its "
        "partition is paused until then)",
        KAFKA_ORIGIN_PARTITION_HEADER: "the partition of the stream the event was first read from",
        KAFKA_ORIGIN_OFFSET_HEADER: "its offset there",
    },
    dead_letter_headers=(*_COMMON_DEAD, "x-original-partition", "x-original-offset"),
)
_MEMORY = _Broker(
    key="memory",
    label="memory",
    protocol="memory",
    prefix="",
    content_type_header="datacontenttype",
    key_in_header=True,
    first_tier=None,
    replay_channel=False,
    dead_letter_headers=_COMMON_DEAD,
)
_BROKERS = {"amqp": _RABBITMQ, "amqps": _RABBITMQ, "kafka": _KAFKA, "memory": _MEMORY}


def _broker_of(scheme: str) -> _Broker:
    known = _BROKERS.get(scheme)
    if known is None:  # a third-party adapter: its attributes as they are, its own names
        return _Broker(
            key=scheme,
            label=scheme,
            protocol=scheme,
            prefix="",
            content_type_header="datacontenttype",
            key_in_header=True,
            first_tier=None,
            replay_channel=False,
            dead_letter_headers=tuple(DEAD_LETTER_HEADERS),
        )
    if scheme == "amqps":
        return replace(known, protocol="amqps")
    return known


def retry_channel_names(scheme: str, stream: str, group: str, policy: RetryPolicy) -> list[str]:
    """The delayed-retry channels of a group on the broker of `scheme`, one per tier of
    `policy` (none unless `policy.delayed`): RabbitMQ wait queues `<stream>.<group>.retry.1`
    up, Kafka retry topics `<stream>.<group>.retry.0` up; memory retries on timers."""
    first = _broker_of(scheme).first_tier
    if first is None or not policy.delayed:
        return []
    return [retry_name(stream, group, first + n) for n in range(len(policy.tiers()))]


# --- the document ------------------------------------------------------------------------


def asyncapi_document(
    bus: EventBus,
    *,
    events: Iterable[type[Event]] = (),
    all_events: bool = False,
    title: str | None = None,
    version: str = "1.0.0",
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `bus` (a JSON-ready dict; see the module docstring).

    The event classes documented: those of the typed subscriptions, `events`, and every
    Event class declared in the process (`eventbus.event.declared_events`) on a stream the
    bus uses; with `all_events`, or when the bus has no subscription and `events` is
    empty (a service that only publishes), every declared class. Nothing connects to the
    broker."""
    return _Builder(bus, list(events), all_events, title, version).build()


def render(document: Mapping[str, Any], format: str = "json") -> str:
    """`document` as JSON (2-space indent) or YAML (needs PyYAML; a ConfigurationError
    says so when it is missing)."""
    if format == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if format != "yaml":
        raise ConfigurationError(f"unknown format {format!r}: json or yaml")
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            "--format yaml needs PyYAML, which is not installed: pip install pyyaml "
            "(or write JSON, which every AsyncAPI tool reads)"
        ) from None

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: plain YAML
            return True

    text: str = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return text


def server_of(url: str, scheme: str) -> tuple[str, str]:
    """(host[:port], path) of a broker URL, without user, password, query or fragment.

    A password may hold any character ('@', '/', '?', '#' unencoded too): the host follows
    the last '@' of the authority, as `eventbus.settings.redact_url` reads it."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.split("\n", 1)[0]
    at = rest.rfind("@")
    if at >= 0:
        rest = rest[at + 1 :]
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found >= 0:
            end = min(end, found)
    host, remainder = rest[:end], rest[end:]
    path = remainder.split("?", 1)[0].split("#", 1)[0] if remainder.startswith("/") else ""
    if scheme in ("amqp", "amqps") and host and ":" not in host.rsplit("]", 1)[-1]:
        host = f"{host}:{5671 if scheme == 'amqps' else 5672}"
    return host, path


def _unique(base: str, taken: set[str]) -> str:
    """`base`, or `base_2`, `base_3`... whichever is free; then taken."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _ref(*path: str) -> dict[str, str]:
    """A Reference Object to `#/<path...>` (JSON Pointer escaping applied)."""
    escaped = (p.replace("~", "~0").replace("/", "~1") for p in path)
    return {"$ref": "#/" + "/".join(escaped)}


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{name}" if module else str(name)


def _seconds(value: float) -> str:
    return f"{value:g} s"


class _Builder:
    """One document: the parts are built in order (streams, messages, channels,
    operations) into the dicts below."""

    def __init__(
        self,
        bus: EventBus,
        events: list[type[Event]],
        all_events: bool,
        title: str | None,
        version: str,
    ) -> None:
        self.settings = bus.settings
        self.scheme = bus.settings.scheme
        self.broker = _broker_of(self.scheme)
        self.subscriptions = bus.subscriptions
        self.extra = events
        self.all_events = all_events
        self.title = title
        self.version = version
        self.schemas: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        #: (stream, type) -> the message key of its class
        self.keys: dict[tuple[str, str], str] = {}
        #: stream -> message key of its catch-all envelope message (made on demand)
        self.any_keys: dict[str, str] = {}
        #: the failure topology's shared messages: name -> message key
        self.side_keys: dict[str, str] = {}
        self.message_names: set[str] = set()
        self.schema_names: set[str] = set()
        #: the components/schemas keys of nested models (pydantic's $defs)
        self.definitions: set[str] = set()
        for reserved in ("CloudEventsHeaders", "RetryHeaders", "DeadLetterHeaders"):
            self.schema_names.add(reserved)

    # --- naming helpers ---

    def header(self, attribute: str) -> str:
        """The header name of a CloudEvents attribute on this broker."""
        if attribute == "datacontenttype" and self.broker.content_type_header:
            return self.broker.content_type_header
        return self.broker.prefix + attribute

    @property
    def vhost(self) -> str:
        _, path = server_of(self.settings.url, self.scheme)
        return unquote(path[1:]) if len(path) > 1 else "/"

    # --- the parts ---

    def build(self) -> dict[str, Any]:
        classes = self.collect_classes()
        streams = sorted({s.stream for s in self.subscriptions} | {c.__stream__ for c in classes})
        for cls in sorted(classes, key=lambda c: (c.__stream__, c.__event_type__)):
            self.add_event(cls)
        self.schemas.update(self.header_schemas())
        for stream in streams:
            self.add_stream(stream, [c for c in classes if c.__stream__ == stream])
        for sub in self.subscriptions:
            self.add_subscription(sub)
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": self.info(streams),
            "defaultContentType": "application/json",
            "servers": {self.broker.key: self.server()},
            "channels": self.channels,
            "operations": self.operations,
            "components": {
                "schemas": dict(sorted(self.schemas.items())),
                "messages": self.messages,
            },
        }

    def collect_classes(self) -> list[type[Event]]:
        """One class per (stream, type): a typed subscription's first, then `events`, then
        the latest declared one."""
        chosen: dict[tuple[str, str], type[Event]] = {}
        candidates: list[type[Event]] = []
        for sub in self.subscriptions:
            candidates.extend((sub.types or {}).values())
        for cls in self.extra:
            if not (isinstance(cls, type) and issubclass(cls, Event)):
                raise ConfigurationError(f"events= takes Event classes, not {cls!r}")
            if not cls.__stream__ or not cls.__event_type__:
                raise ConfigurationError(
                    f"{cls.__name__} has no stream/type: declare "
                    f"class {cls.__name__}(Event, stream='...', type='...')"
                )
            candidates.append(cls)
        used = {s.stream for s in self.subscriptions} | {c.__stream__ for c in candidates}
        everything = self.all_events or not used  # a bus that only publishes: all of them
        declared = [c for c in declared_events() if everything or c.__stream__ in used]
        candidates.extend(reversed(declared))  # the latest declaration of a type wins
        for cls in candidates:
            chosen.setdefault((cls.__stream__, cls.__event_type__), cls)
        return list(chosen.values())

    def info(self, streams: list[str]) -> dict[str, Any]:
        groups = len(self.subscriptions)
        return {
            "title": self.title or self.settings.source,
            "version": self.version,
            "description": (
                f"The events of an eventbus application on {self.broker.label}: "
                f"{len(streams)} stream(s), {groups} subscription(s). Events travel as "
                "CloudEvents 1.0 in binary mode; every subscription's retry and dead-letter "
                "channels are documented with it. Written by `eventbus asyncapi`."
            ),
            "x-eventbus-broker": self.broker.key,
        }

    def server(self) -> dict[str, Any]:
        host, _ = server_of(self.settings.url, self.scheme)
        server: dict[str, Any] = {"host": host or "localhost", "protocol": self.broker.protocol}
        if self.broker is _MEMORY:
            server["host"] = host or "local"
            server["description"] = (
                "The in-process memory broker (memory://): streams, groups, retries and "
                "dead letters live in this process."
            )
        elif self.broker.key == "rabbitmq":
            if self.vhost != "/":
                server["pathname"] = "/" + quote(self.vhost, safe="")
            server["description"] = (
                f"RabbitMQ, vhost {self.vhost!r}: one durable topic exchange per stream, one "
                "queue per group (or per partition of a group)."
            )
        elif self.broker.key == "kafka":
            protocol = str(
                self.settings.options.get("security_protocol")
                or os.environ.get("EVENTBUS_KAFKA_SECURITY_PROTOCOL")
                or ""
            ).upper()
            if protocol in ("SSL", "SASL_SSL"):
                server["protocol"] = "kafka-secure"
            server["description"] = (
                "Kafka bootstrap servers: one topic per stream, one consumer group per group."
            )
        return server

    # --- messages ---

    def add_event(self, cls: type[Event]) -> None:
        stream, etype = cls.__stream__, cls.__event_type__
        key = _unique(cls.__name__, self.message_names)
        self.keys[(stream, etype)] = key
        schema_key = self.add_payload_schema(cls, key)
        sid = schema_id(stream, etype)
        message: dict[str, Any] = {
            "name": key,
            "title": cls.__name__,
            "summary": f"{etype} on stream {stream}",
        }
        doc = cls.__dict__.get("__doc__")
        if doc and doc.strip():
            message["description"] = doc.strip()
        message.update(
            {
                "contentType": "application/json",
                "headers": self.event_headers(etype, sid),
                "payload": _ref("components", "schemas", schema_key),
                "correlationId": self.correlation_id(),
            }
        )
        bindings = self.message_bindings()
        if bindings:
            message["bindings"] = bindings
        message["x-eventbus-stream"] = stream
        message["x-eventbus-type"] = etype
        message["x-eventbus-class"] = _qualname(cls)
        message["x-eventbus-dataschema"] = sid
        self.messages[key] = message

    def any_message(self, stream: str) -> str:
        """The message of an event of `stream` no declared class describes (what an
        untyped handler may get): any JSON payload."""
        if stream in self.any_keys:
            return self.any_keys[stream]
        key = self.any_keys[stream] = _unique(f"{stream}.event", self.message_names)
        message: dict[str, Any] = {
            "name": key,
            "title": f"Any event on stream {stream}",
            "summary": "an event of a type no Event class in this document declares",
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/CloudEventsHeaders"},
            "payload": {"description": "any JSON value (the handler reads an Envelope)"},
            "correlationId": self.correlation_id(),
        }
        bindings = self.message_bindings()
        if bindings:
            message["bindings"] = bindings
        message["x-eventbus-stream"] = stream
        self.messages[key] = message
        return key

    def correlation_id(self) -> dict[str, str]:
        return {
            "description": "the correlation id: one for every event that follows from one request",
            "location": f"$message.header#/{self.header('correlationid')}",
        }

    def message_bindings(self) -> dict[str, Any]:
        if self.broker is _KAFKA:
            return {
                "kafka": {
                    "key": {
                        "type": "string",
                        "description": "the record key: the partition key given to publish "
                        "(absent without one); one key, one partition, one order",
                    },
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        return {}

    def event_headers(self, etype: str, sid: str) -> dict[str, Any]:
        return {
            "type": "object",
            "allOf": [{"$ref": "#/components/schemas/CloudEventsHeaders"}],
            "properties": {
                self.header("type"): {"type": "string", "const": etype},
                self.header("dataschema"): {"type": "string", "const": sid},
            },
        }

    def add_payload_schema(self, cls: type[Event], key: str) -> str:
        """The class's JSON Schema (as `to_json` writes it: serialization mode) under
        components/schemas `key`, its `$id` the event's dataschema; pydantic's `$defs` move
        to components/schemas too (an identical definition is shared; another one of the
        same name gets a suffix) and every `$ref` is rewritten to match."""
        by_alias = bool(cls.model_config.get("serialize_by_alias", False))
        raw = cls.model_json_schema(by_alias=by_alias, mode="serialization")
        defs: dict[str, Any] = raw.pop("$defs", {})
        top = raw
        own = ""
        if set(raw) == {"$ref"} and raw["$ref"].startswith("#/$defs/"):
            own = raw["$ref"][len("#/$defs/") :]  # a recursive model: its schema is a $def
            top = defs.pop(own)
        schema_key = _unique(key, self.schema_names)
        # a definition is shared with the one of its name already in the document when
        # they are equal once rewritten, which they are not when one of its references
        # goes to a definition that is not shared: drop those until none is left
        shared = {name for name in defs if name in self.definitions}
        while True:
            tentative = {name: name if name in shared else f"\0{name}" for name in defs}
            if own:
                tentative[own] = schema_key
            unequal = {
                name for name in shared if _rewrite(defs[name], tentative) != self.schemas[name]
            }
            if not unequal:
                break
            shared -= unequal
        renamed = {
            name: name if name in shared else _unique(name, self.schema_names) for name in defs
        }
        if own:
            renamed[own] = schema_key
        for name, definition in defs.items():
            if name not in shared:
                self.definitions.add(renamed[name])
                self.schemas[renamed[name]] = _rewrite(definition, renamed)
        schema = _rewrite(top, renamed)
        self.schemas[schema_key] = {"$id": schema_id(cls.__stream__, cls.__event_type__), **schema}
        return schema_key

    def header_schemas(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        for name, description, extra in _ATTRIBUTES:
            if name == "partitionkey" and not self.broker.key_in_header:
                continue
            if name == "datacontenttype" and self.broker.content_type_header is None:
                continue
            attributes[self.header(name)] = {"type": "string", "description": description, **extra}
        if self.broker.prefix:
            custom = f"^{self.broker.prefix}[a-z0-9]{{1,20}}$"
        else:
            custom = "^[a-z0-9]{1,20}$"
        ce: dict[str, Any] = {
            "type": "object",
            "title": f"CloudEvents 1.0 binary mode ({self.broker.label})",
            "description": self.headers_description(),
            "properties": attributes,
            "required": [self.header(a) for a in _REQUIRED_ATTRIBUTES],
            "patternProperties": {
                custom: {
                    "type": "string",
                    "description": "custom headers given to publish(headers=...): CloudEvents "
                    "extensions, 1-20 lower-case letters or digits",
                }
            },
        }
        retry_props: dict[str, Any] = {
            ATTEMPT_HEADER: {
                "type": "string",
                "pattern": "^[0-9]+$",
                "description": "the try the copy will be when it is handled (2 and up)",
            }
        }
        for name, description in self.broker.retry_headers.items():
            retry_props[name] = {"type": "string", "description": description}
        dead_props = {
            name: {"type": "string", "description": DEAD_LETTER_DESCRIPTIONS[name]}
            for name in self.broker.dead_letter_headers
        }
        dead_props["x-attempts"]["pattern"] = "^[0-9]+$"
        dead_props["x-dead-lettered-at"]["format"] = "date-time"
        return {
            "CloudEventsHeaders": ce,
            "RetryHeaders": {
                "type": "object",
                "title": "Delayed-retry headers",
                "description": "What a delayed-retry copy carries besides the event's own "
                "headers, which it keeps.",
                "properties": retry_props,
                "required": [ATTEMPT_HEADER],
            },
            "DeadLetterHeaders": {
                "type": "object",
                "title": "Dead-letter headers",
                "description": "What a dead letter carries besides the event's own headers: "
                "where it was read, why it was given up, after how many tries. Always "
                "written by eventbus, never copied from the message; stripped again when the "
                "dead letter is replayed.",
                "properties": dead_props,
                "required": [
                    "x-original-stream",
                    "x-original-type",
                    "x-original-group",
                    "x-exception-type",
                    "x-exception-message",
                    "x-attempts",
                    "x-dead-lettered-at",
                ],
            },
        }

    def headers_description(self) -> str:
        if self.broker is _KAFKA:
            return (
                "Kafka record headers: the CloudEvents attributes as ce_<name>, the content "
                "type as content-type; the partition key is the record key."
            )
        if self.broker.key == "rabbitmq":
            return (
                "AMQP 0-9-1 headers: the CloudEvents attributes as ce-<name>; the content "
                "type is the content_type property, the id also the message_id property, "
                "the type also the routing key; messages are persistent (delivery mode 2)."
            )
        return "The CloudEvents attributes, by name (the broker keeps them as they are)."

    # --- channels ---

    def server_refs(self) -> list[dict[str, str]]:
        return [_ref("servers", self.broker.key)]

    def add_stream(self, stream: str, classes: list[type[Event]]) -> None:
        messages = {
            self.keys[(c.__stream__, c.__event_type__)]: _ref(
                "components", "messages", self.keys[(c.__stream__, c.__event_type__)]
            )
            for c in sorted(classes, key=lambda c: c.__event_type__)
        }
        channel: dict[str, Any] = {"address": stream, "title": f"Stream {stream}"}
        if self.broker.key == "rabbitmq":
            channel["description"] = (
                f"The durable topic exchange `{stream}`: an event is published with its type "
                "as the routing key; each group's queue is bound with its patterns."
            )
            channel["bindings"] = {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": stream,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": self.vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            }
        elif self.broker is _KAFKA:
            channel["description"] = (
                f"The topic `{stream}`: the event type is the ce_type header, the partition "
                "key the record key; every group is a consumer group reading it whole."
            )
            channel["bindings"] = {
                "kafka": {"topic": stream, "bindingVersion": KAFKA_BINDING_VERSION}
            }
        else:
            channel["description"] = f"The stream `{stream}`."
        channel["servers"] = self.server_refs()
        channel["messages"] = messages
        self.channels[stream] = channel
        for key in messages:
            etype = self.messages[key]["x-eventbus-type"]
            operation: dict[str, Any] = {
                "action": "send",
                "channel": _ref("channels", stream),
                "title": f"Publish {key}",
                "summary": f"bus.publish({key}(...)): {etype} on {stream}",
                "messages": [_ref("channels", stream, "messages", key)],
            }
            if self.broker.key == "rabbitmq":
                operation["bindings"] = {
                    "amqp": {
                        "cc": [etype],
                        "deliveryMode": 2,
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                }
            self.operations[_unique(f"send.{key}", set(self.operations))] = operation

    def add_subscription(self, sub: Subscription) -> None:
        stream, group = sub.stream, sub.group
        channel = self.channels[stream]
        if sub.types is not None:
            keys = [self.keys[(stream, t)] for t in sorted(sub.types)]
        else:
            keys = [
                key
                for key in channel["messages"]
                if matches_any(sub.patterns, self.messages[key]["x-eventbus-type"])
            ]
            if not keys:
                any_key = self.any_message(stream)
                channel["messages"][any_key] = _ref("components", "messages", any_key)
                keys = [any_key]
        handler = _qualname(sub.handler)
        policy = sub.retry
        retries = retry_channel_names(self.scheme, stream, group, policy)
        dlq = dead_letter_name(stream, group)
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": _ref("channels", stream),
            "title": f"Group {group}",
            "summary": f"{handler} handles {', '.join(sub.patterns)} of {stream}",
            "description": self.subscription_description(sub, retries, dlq),
            "messages": [_ref("channels", stream, "messages", key) for key in keys],
        }
        if self.broker is _KAFKA:
            operation["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": [group]},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        elif self.broker.key == "rabbitmq":
            operation["bindings"] = {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}}
        operation["x-eventbus-group"] = group
        operation["x-eventbus-handler"] = handler
        operation["x-eventbus-patterns"] = list(sub.patterns)
        operation["x-eventbus-concurrency"] = sub.concurrency
        operation["x-eventbus-retry"] = _policy(policy)
        if self.broker.key == "rabbitmq":
            operation["x-eventbus-queues"] = self.group_queues(sub)
        operation["x-eventbus-dead-letters"] = dlq
        self.operations[_unique(f"receive.{stream}.{group}", set(self.operations))] = operation
        self.add_failure_topology(sub, keys, retries, dlq)

    def group_queues(self, sub: Subscription) -> list[str]:
        base = f"{sub.stream}.{sub.group}"
        partitions = sub.options.get("partitions")
        if isinstance(partitions, int) and partitions > 0:
            return [f"{base}.{i}" for i in range(partitions)]
        return [base]

    def subscription_description(self, sub: Subscription, retries: list[str], dlq: str) -> str:
        policy = sub.retry
        lines = [
            f"Group `{sub.group}` runs `{_qualname(sub.handler)}` for the events of "
            f"`{sub.stream}` whose type matches {', '.join(f'`{p}`' for p in sub.patterns)}"
            + (
                " (typed: the payload is validated against the class)."
                if sub.types
                else " (untyped: the handler reads an Envelope)."
            ),
        ]
        if self.broker.key == "rabbitmq":
            queues = ", ".join(f"`{q}`" for q in self.group_queues(sub))
            fed = (
                "fed through its consistent-hash exchanges"
                if len(self.group_queues(sub)) > 1 or "partitions" in sub.options
                else "bound to the exchange with the patterns"
            )
            lines.append(f"It consumes the queue(s) {queues}, {fed}.")
        elif self.broker is _KAFKA:
            lines.append(f"It is the consumer group `{sub.group}`.")
        if policy.attempts == 1:
            lines.append("A failed event is not retried.")
        elif not policy.delayed:
            lines.append(
                f"A failed event is retried in-process, {policy.attempts} tries in all "
                f"(backoff {_seconds(policy.backoff)} x{policy.multiplier:g}, at most "
                f"{_seconds(policy.max_backoff)}): the order of its key is kept."
            )
        elif retries:
            tiers = ", ".join(
                f"`{name}` ({_seconds(delay)})"
                for name, delay in zip(retries, policy.tiers(), strict=True)
            )
            lines.append(
                f"A failed event is handed back to the broker for a delayed retry, "
                f"{policy.attempts} tries in all, through {tiers}: the order of its key is "
                "not kept."
            )
            if self.broker.key == "rabbitmq":
                lines.append(
                    f"A `Retry(after=...)` delay off these tiers waits in "
                    f"`{sub.stream}.{sub.group}.delay.<ms>ms`, declared when needed."
                )
        else:
            lines.append(
                f"A failed event is retried after a delay on the broker's timers, "
                f"{policy.attempts} tries in all: the order of its key is not kept."
            )
        lines.append(
            f"Then, or at once for `Reject`, an exception outside `RetryPolicy.on` or an "
            f"event that cannot be decoded, it is dead-lettered to `{dlq}`."
        )
        return "\n".join(lines)

    def add_failure_topology(
        self, sub: Subscription, keys: list[str], retries: list[str], dlq: str
    ) -> None:
        stream, group = sub.stream, sub.group
        covered = ", ".join(keys)
        tiers = sub.retry.tiers() if retries else []
        for n, (name, delay) in enumerate(zip(retries, tiers, strict=True)):
            tier = n + (self.broker.first_tier or 0)
            description = (
                f"Delayed retries of group `{group}`, tier {tier}: a failed event ({covered}) "
                f"waits {_seconds(delay)} here"
            )
            if self.broker.key == "rabbitmq":
                description += (
                    " (the queue's x-message-ttl), then RabbitMQ dead-letters it back into "
                    "the group's queue. Nobody consumes this queue."
                )
            else:
                description += (
                    f"; the group's consumer reads the topic and holds a record until it is "
                    f"due ({KAFKA_DUE_HEADER})."
                )
            self.add_side_channel(
                name,
                f"Retry tier {tier} of {stream}/{group}",
                description,
                "retry",
                self.retry_message(),
                sub,
                read=self.broker is _KAFKA,
                extra={"x-eventbus-delay-ms": round(delay * 1000), "x-eventbus-tier": tier},
            )
        if self.broker.replay_channel:
            self.add_side_channel(
                replay_name(stream, group),
                f"Replayed dead letters of {stream}/{group}",
                f"`bus.replay_dead_letters('{stream}', '{group}')` (or `eventbus dlq replay`) "
                f"copies the dead letters of `{dlq}` here, without their dead-letter headers; "
                f"only group `{group}` reads it.",
                "replay",
                self.replay_message(),
                sub,
                read=True,
                write=False,
            )
        if self.broker.key == "rabbitmq":
            replay = "into the group's queue"
        elif self.broker.replay_channel:
            replay = f"through `{replay_name(stream, group)}`"
        else:
            replay = "into the group"
        self.add_side_channel(
            dlq,
            f"Dead letters of {stream}/{group}",
            f"What group `{group}` gave up on ({covered}, or anything that could not be "
            f"decoded): the body byte-identical, the event's headers and the dead-letter "
            f"headers. List them with `eventbus dlq list --stream {stream} --group {group}` "
            f"(`bus.dead_letters`); `eventbus dlq replay` puts them back {replay}.",
            "deadLetter",
            self.dead_letter_message(),
            sub,
            read=False,
        )

    def add_side_channel(
        self,
        name: str,
        title: str,
        description: str,
        message_key: str,
        component: str,
        sub: Subscription,
        *,
        read: bool,
        write: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """A channel of one group's failure topology, with the operations of the bus on it
        (`send.<channel>` when the bus writes it, `receive.<channel>` when it reads it)."""
        channel: dict[str, Any] = {"address": name, "title": title, "description": description}
        if self.broker.key == "rabbitmq":
            channel["bindings"] = {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": name,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": self.vhost,
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            }
        elif self.broker is _KAFKA:
            channel["bindings"] = {
                "kafka": {"topic": name, "bindingVersion": KAFKA_BINDING_VERSION}
            }
        channel["servers"] = self.server_refs()
        channel["messages"] = {message_key: _ref("components", "messages", component)}
        channel["x-eventbus-stream"] = sub.stream
        channel["x-eventbus-group"] = sub.group
        channel.update(extra or {})
        channel_key = _unique(name, set(self.channels))
        self.channels[channel_key] = channel
        message_ref = [_ref("channels", channel_key, "messages", message_key)]
        if write:
            send: dict[str, Any] = {
                "action": "send",
                "channel": _ref("channels", channel_key),
                "title": title,
                "messages": message_ref,
                "x-eventbus-group": sub.group,
            }
            self.operations[_unique(f"send.{channel_key}", set(self.operations))] = send
        if read:
            receive: dict[str, Any] = {
                "action": "receive",
                "channel": _ref("channels", channel_key),
                "title": title,
                "messages": [dict(m) for m in message_ref],
                "x-eventbus-group": sub.group,
            }
            if self.broker is _KAFKA:
                receive["bindings"] = {
                    "kafka": {
                        "groupId": {"type": "string", "enum": [sub.group]},
                        "bindingVersion": KAFKA_BINDING_VERSION,
                    }
                }
            self.operations[_unique(f"receive.{channel_key}", set(self.operations))] = receive

    def retry_message(self) -> str:
        return self.side_message(
            "DelayedRetry",
            "A delayed retry",
            "A copy of an event that failed, to be handled again later: the body and the "
            "event's headers as received, plus the retry headers.",
            "RetryHeaders",
            {"description": "the event's body, byte-identical"},
        )

    def replay_message(self) -> str:
        return self.side_message(
            "ReplayedDeadLetter",
            "A replayed dead letter",
            "A dead letter put back for its group: the body and the event's headers as they "
            "were dead-lettered, without the dead-letter headers.",
            None,
            {"description": "the event's body, byte-identical"},
        )

    def dead_letter_message(self) -> str:
        return self.side_message(
            "DeadLetter",
            "A dead letter",
            "An event its group gave up on. The body is byte-identical to what was received "
            "(usually the event's JSON, but anything for an event that could not be "
            "decoded); the event's own headers are kept, the dead-letter headers added.",
            "DeadLetterHeaders",
            {"description": "the body as received, byte for byte"},
        )

    def side_message(
        self,
        name: str,
        title: str,
        description: str,
        headers: str | None,
        payload: dict[str, Any],
    ) -> str:
        """A message of the failure topology, made once per document."""
        if name in self.side_keys:
            return self.side_keys[name]
        key = self.side_keys[name] = _unique(name, self.message_names)
        # the event's own headers are kept as they came (CloudEventsHeaders for an event
        # eventbus published; whatever a plain client sent otherwise): not required here
        header_schema: dict[str, Any] = {
            "type": "object",
            "description": "the event's own headers as received (see CloudEventsHeaders)"
            + (", and these" if headers else ""),
        }
        if headers is not None:
            header_schema["allOf"] = [_ref("components", "schemas", headers)]
        message: dict[str, Any] = {
            "name": key,
            "title": title,
            "description": description,
            "headers": header_schema,
            "payload": payload,
        }
        bindings = self.message_bindings()
        if bindings:
            message["bindings"] = bindings
        self.messages[key] = message
        return key


def _policy(policy: RetryPolicy) -> dict[str, Any]:
    described: dict[str, Any] = {
        "attempts": policy.attempts,
        "delayed": policy.delayed,
        "backoff": policy.backoff,
        "multiplier": policy.multiplier,
        "maxBackoff": policy.max_backoff,
        "on": [_qualname(exc) for exc in policy.on],
    }
    if policy.delayed:
        described["tiers"] = policy.tiers()
    return described


def _rewrite(node: Any, renamed: Mapping[str, str]) -> Any:
    """A copy of a pydantic schema with `#/$defs/<name>` refs pointing into
    components/schemas (under the names `renamed` gives)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                name = value[len("#/$defs/") :]
                out[key] = _ref("components", "schemas", renamed.get(name, name))["$ref"]
            else:
                out[key] = _rewrite(value, renamed)
        return out
    if isinstance(node, list):
        return [_rewrite(item, renamed) for item in node]
    return node
