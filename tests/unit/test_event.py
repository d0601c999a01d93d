import pytest

from eventbus import Envelope, Event, EventBus, SubscriptionError
from eventbus.event import declared_events, validate_extension
from eventbus.messages import build_message


class Created(Event, stream="shop", type="order.created"):
    order_id: str


class Other(Event, stream="billing", type="invoice.sent"):
    invoice_id: str


def test_declared_stream_and_type() -> None:
    assert Created.__stream__ == "shop"
    assert Created.__event_type__ == "order.created"


@pytest.mark.parametrize("bad", ["", "order created", "order.*", "a.#"])
def test_invalid_type_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):

        class Bad(Event, stream="s", type=bad):
            pass


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert Created.model_validate_json(b'{"order_id": "1", "new": 2}') == Created(order_id="1")


@pytest.mark.parametrize("bad", ["Tenant", "x-tenant", "id", "type", "a" * 21])
def test_custom_header_names_follow_cloudevents(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_extension(bad)


def test_message_attributes() -> None:
    m = build_message(
        Created(order_id="1"), source="svc", max_bytes=1000, key=17, headers={"tenant": "a"}
    )
    assert m.stream == "shop" and m.type == "order.created" and m.key == "17"
    assert m.body == b'{"order_id":"1"}'
    assert m.attributes["partitionkey"] == "17"
    assert m.attributes["tenant"] == "a"
    assert m.attributes["specversion"] == "1.0"
    env = Envelope.from_attributes(m.attributes, m.body, m.stream)
    assert env.key == "17" and env.extensions == {"tenant": "a"} and env.data == {"order_id": "1"}
    assert m.attributes["dataschema"] == env.dataschema == "urn:eventbus:schema:shop:order.created"


def test_dataschema_is_a_core_attribute_not_a_custom_header() -> None:
    with pytest.raises(ValueError):
        validate_extension("dataschema")


def test_declared_events_are_recorded_weakly_in_declaration_order() -> None:
    class First(Event, stream="declared-test", type="first.happened"):
        pass

    class Second(Event, stream="declared-test", type="second.happened"):
        pass

    class Undeclared(Event):
        pass

    mine = [c for c in declared_events() if c.__stream__ == "declared-test"]
    assert mine == [First, Second]
    assert Created in declared_events() and Undeclared not in declared_events()


def test_event_without_declaration_cannot_be_published() -> None:
    class Plain(Event):
        x: int

    with pytest.raises(TypeError, match="stream/type"):
        build_message(Plain(x=1), source="s", max_bytes=100)


def test_handler_shapes() -> None:
    bus = EventBus("memory://shapes")

    async def mixed(event: Created | Other) -> None: ...

    with pytest.raises(SubscriptionError, match="mixes streams"):
        bus.subscribe(group="g")(mixed)

    async def untyped(envelope: Envelope) -> None: ...

    with pytest.raises(SubscriptionError, match="needs a stream"):
        bus.subscribe(group="g")(untyped)

    async def three(event: Created, ctx: object, extra: int) -> None: ...

    with pytest.raises(SubscriptionError, match=r"\(event, ctx\)"):
        bus.subscribe(group="g")(three)

    async def not_event(event: int) -> None: ...

    with pytest.raises(SubscriptionError, match="Event subclass"):
        bus.subscribe(group="g")(not_event)

    async def typed(event: Created) -> None: ...

    bus.subscribe(group="g")(typed)
    with pytest.raises(SubscriptionError, match="already has handler"):
        bus.subscribe(group="g")(typed)
    with pytest.raises(ValueError):
        bus.subscribe(group="bad group")(typed)
