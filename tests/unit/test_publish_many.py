"""`publish_many` in chunks (the kernel's part, on the embedded memory:// broker; the
conformance suite checks order and chunking on every broker): what a failure in the
middle of a long iterable says, and that nothing after it was read or sent."""

from collections.abc import Iterator

import pytest

import eventbus.bus
import eventbus.sync
from eventbus import Event, EventBus, MessageTooLarge, PublishError, SyncPublisher
from eventbus.protocol import Message
from eventbus.testing.conformance import unique
from eventbus.types import PublishNext


class Step(Event, stream="publish-many", type="step.done"):
    n: int
    pad: str = ""


@pytest.fixture(autouse=True)
def chunk_of_four(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventbus.bus, "PUBLISH_MANY_CHUNK", 4)
    monkeypatch.setattr(eventbus.sync, "PUBLISH_MANY_CHUNK", 4)


class Source:
    """Events 0..count-1, counting how many were read."""

    def __init__(self, count: int, big: int | None = None) -> None:
        self.count, self.big, self.read = count, big, 0

    def __iter__(self) -> Iterator[Step]:
        for n in range(self.count):
            self.read += 1
            yield Step(n=n, pad="x" * 2000 if n == self.big else "")


async def test_a_chunk_refused_by_the_publish_middleware_names_what_is_stored() -> None:
    async def refuse_ten(message: Message, call_next: PublishNext) -> None:
        if b'"n":10' in message.body:
            raise ValueError("no 10")
        await call_next(message)

    bus = EventBus(f"memory://{unique()}", publish_middleware=[refuse_ten])
    handled: list[int] = []

    @bus.subscribe(group="g")
    async def handle(event: Step) -> None:
        handled.append(event.n)

    source = Source(20)
    async with bus:
        with pytest.raises(ValueError, match="no 10") as caught:
            await bus.publish_many(source)
        assert source.read == 11  # the failing chunk up to the failure; nothing after it
    assert caught.value.__notes__ == [
        "publish_many: the 8 events before this chunk are stored; none after it was sent"
    ]
    assert handled == list(range(8))


async def test_a_chunk_the_broker_fails_stops_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = EventBus(f"memory://{unique()}")
    source = Source(20)
    calls: list[int] = []
    async with bus:
        publish_many = bus.broker.publish_many

        async def second_fails(messages: list[Message]) -> None:
            calls.append(len(messages))
            if len(calls) == 2:
                raise PublishError("the broker refused it")
            await publish_many(messages)

        monkeypatch.setattr(bus.broker, "publish_many", second_fails)
        with pytest.raises(PublishError, match="refused") as caught:
            await bus.publish_many(source)
    assert calls == [4, 4]
    assert source.read == 8
    assert caught.value.__notes__ == [
        "publish_many: the 4 events before this chunk are stored; none after it was sent"
    ]


async def test_a_length_that_fills_its_last_chunk_makes_no_empty_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = EventBus(f"memory://{unique()}")
    calls: list[int] = []
    async with bus:
        publish_many = bus.broker.publish_many

        async def spy(messages: list[Message]) -> None:
            calls.append(len(messages))
            await publish_many(messages)

        monkeypatch.setattr(bus.broker, "publish_many", spy)
        assert len(await bus.publish_many(Source(8))) == 8
        assert await bus.publish_many([]) == []
    assert calls == [4, 4]


def test_the_sync_face_stops_at_the_failing_chunk() -> None:
    source = Source(20, big=9)
    with SyncPublisher(f"memory://{unique()}", max_message_bytes=1000) as publisher:
        with pytest.raises(MessageTooLarge) as caught:
            publisher.publish_many(source)
        assert publisher.publish_many(Source(8)) != []
    assert source.read == 10
    assert caught.value.__notes__ == [
        "publish_many: the 8 events before this chunk are stored; none after it was sent"
    ]
