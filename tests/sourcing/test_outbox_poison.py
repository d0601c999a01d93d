"""An outbox event that can never be published is parked, and the relay keeps publishing
everything behind it at full speed; transient failures are retried, never parked
(issue #9, "poison-proof"). On SQLite, PostgreSQL and the memory store."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import structlog

from eventbus import Context, Event, EventBus
from eventbus.errors import BusClosed, PublishError, UnroutableError
from eventbus.log import configure
from eventbus.protocol import Message
from eventbus.sourcing import EventCodec, EventStore, NewEvent, OutboxRelay

from .conftest import POSTGRES_DSN
from .support import make_store, unique_schema

LIMIT = 1000  # EVENTBUS_MAX_MESSAGE_BYTES of the buses below


class Note(Event, stream="notes", type="note.written"):
    n: int
    text: str = ""


CODEC = EventCodec([Note])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres), "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "sqlite":
        s = make_store(("sqlite", f"{tmp_path}/outbox.db"))
    elif request.param == "postgresql":
        s = make_store(("postgresql", POSTGRES_DSN, unique_schema()))
    else:
        s = make_store(("memory",))
    await s.open()
    try:
        yield s
    finally:
        if request.param == "postgresql":
            await s.database.drop_schema()  # type: ignore[union-attr]
        await s.close()


async def queue(store: EventStore, n: int, key: str, *, text: str = "") -> int:
    """Append note `n` with the outbox; returns its position."""
    [stored] = await store.append(
        f"notes-{key}", [CODEC.encode(Note(n=n, text=text), key=key)], None, publish=True
    )
    return stored.position


class Received:
    """What a group on the bus got: the note numbers per key, in arrival order."""

    def __init__(self, bus: EventBus) -> None:
        self.by_key: dict[str, list[int]] = {}
        self.count = 0
        self._arrived = asyncio.Condition()

        @bus.subscribe(group="g")
        async def on_note(event: Note, ctx: Context) -> None:
            async with self._arrived:
                self.by_key.setdefault(ctx.envelope.key or "", []).append(event.n)
                self.count += 1
                self._arrived.notify_all()

    async def until(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.count >= count)


def log_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line[:1] == "{"]


async def test_an_oversized_event_is_parked_and_everything_behind_it_is_relayed(
    store: EventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = ["k0", "k1", "k2", "k3"]
    expected: dict[str, list[int]] = {k: [] for k in keys}
    poison = 0
    for n in range(80):
        key = keys[n % 4]
        if n == 21:  # in the middle of the first batch, on key k1
            poison = await queue(store, n, key, text="x" * (2 * LIMIT))
            continue
        await queue(store, n, key)
        expected[key].append(n)
    bus = EventBus("memory://outbox-poison", max_message_bytes=LIMIT)
    received = Received(bus)
    relay = OutboxRelay(store, bus, CODEC, batch_size=20)
    configure("json", "INFO", force=True)
    try:
        async with bus:
            await relay.drain()
            await received.until(79)
    finally:
        structlog.reset_defaults()

    assert received.by_key == expected  # k1's later notes too, each key in order
    # not slowed: four full batches of 20 (the poison took its place in the first one)
    # and the cycle that found the outbox empty
    assert relay.cycles == math.ceil(80 / 20) + 1
    assert (relay.published, relay.parked) == (79, 1)
    [parked] = await relay.failed()
    assert parked.event.position == poison and parked.event.key == "k1"
    assert parked.reason.startswith("MessageTooLarge:") and "MAX_MESSAGE_BYTES" in parked.reason
    if store.database is not None:
        assert await store.outbox_pending() == []  # moved aside, out of the outbox
    lines = log_lines(capsys.readouterr().err)
    [logged] = [line for line in lines if line["event"] == "outbox.event_parked"]
    assert logged["level"] == "error" and logged["position"] == poison
    assert logged["event_id"] == parked.event.id and "MessageTooLarge" in str(logged["reason"])
    assert not [line for line in lines if line["event"] == "outbox.relay_failed"]


async def test_the_running_relay_keeps_full_speed_past_a_poison_event(
    store: EventStore,
) -> None:
    bus = EventBus("memory://outbox-poison-run", max_message_bytes=LIMIT)
    received = Received(bus)
    relay = OutboxRelay(store, bus, CODEC, batch_size=25)
    await queue(store, 0, "k0", text="x" * (2 * LIMIT))
    for n in range(1, 101):
        await queue(store, n, f"k{n % 5}")
    stop = asyncio.Event()
    async with bus:
        task = asyncio.create_task(relay.run(stop))
        await received.until(100)
        cycles = relay.cycles
        stop.set()
        await task
    # four batches; a fifth only if the first had the poison in it: never a backoff loop
    assert cycles <= math.ceil(101 / 25) + 1
    assert [p.event.position for p in await relay.failed()] == [1]


async def test_a_bad_header_or_an_unknown_type_is_parked(store: EventStore) -> None:
    bad_header = NewEvent(
        type="note.written", data=b'{"n":1}', stream="notes", key="a", headers={"Bad-Name": "x"}
    )
    unknown = NewEvent(type="note.erased", data=b'{"n":2}', stream="notes", key="a")
    await store.append("notes-a", [bad_header, unknown], None, publish=True)
    await queue(store, 3, "a")
    bus = EventBus("memory://outbox-bad-header")
    received = Received(bus)
    relay = OutboxRelay(store, bus, CODEC)
    async with bus:
        await relay.drain()
        await received.until(1)
    assert received.by_key == {"a": [3]}
    reasons = [p.reason for p in await relay.failed()]
    assert reasons[0].startswith("ValueError: invalid header 'Bad-Name'")
    assert reasons[1].startswith("LookupError: event type 'note.erased' is not registered")


async def test_a_parked_event_is_published_once_requeued(store: EventStore) -> None:
    position = await queue(store, 1, "a", text="x" * (2 * LIMIT))
    small = EventBus("memory://outbox-requeue-small", max_message_bytes=LIMIT)
    async with small:
        await OutboxRelay(store, small, CODEC).drain()
    large = EventBus("memory://outbox-requeue-large", max_message_bytes=4 * LIMIT)
    received = Received(large)
    relay = OutboxRelay(store, large, CODEC)
    assert [p.event.position for p in await relay.failed()] == [position]
    async with large:
        await relay.drain()
        assert received.count == 0  # parked: not retried on its own
        assert await relay.requeue([position + 100]) == 0  # not parked: nothing to do
        assert await relay.requeue() == 1
        await relay.drain()
        await received.until(1)
    assert received.by_key == {"a": [1]}
    assert await relay.failed() == []
    assert relay.published == 1


def failing(
    error: Callable[[], Exception], times: int, note: int
) -> Callable[[Message, Callable[[Message], Awaitable[None]]], Awaitable[None]]:
    """Publish middleware: publishing note `note` raises `error()` `times` times."""
    left = [times]

    async def middleware(message: Message, call_next: Callable[[Message], Awaitable[None]]) -> None:
        if json.loads(message.body)["n"] == note and left[0] > 0:
            left[0] -= 1
            raise error()
        await call_next(message)

    return middleware


@pytest.mark.parametrize(
    "error",
    [
        lambda: PublishError("RabbitMQ did not confirm within 10s"),
        lambda: UnroutableError("reached no queue: no group subscribes to this type yet"),
        lambda: ConnectionResetError("connection lost"),
        lambda: TimeoutError(),
    ],
    ids=["publish-error", "unroutable", "connection-lost", "timeout"],
)
async def test_a_transient_failure_is_retried_in_key_order_and_never_parked(
    store: EventStore, error: Callable[[], Exception]
) -> None:
    for n in range(12):
        await queue(store, n, f"k{n % 3}")  # note 4 is k1's second
    bus = EventBus("memory://outbox-transient", publish_middleware=[failing(error, 3, note=4)])
    received = Received(bus)
    relay = OutboxRelay(store, bus, CODEC, poll_interval=0.001, max_backoff=0.01)
    async with bus:
        assert await relay.publish_pending() == 9  # 4 and the k1 notes behind it wait
        assert received.by_key.get("k1", []) == [1]
        await relay.drain()
        await received.until(12)
    assert received.by_key == {"k0": [0, 3, 6, 9], "k1": [1, 4, 7, 10], "k2": [2, 5, 8, 11]}
    assert await relay.failed() == [] and relay.parked == 0
    assert relay.published == 12


class RefusedForGood(PublishError):
    """An adapter's refusal that no retry can change (e.g. headers above a broker limit)."""

    permanent = True


async def test_a_publish_error_that_says_it_is_permanent_is_parked(store: EventStore) -> None:
    for n in range(3):
        await queue(store, n, "a")
    refuse = failing(lambda: RefusedForGood("headers above the broker's limit"), 99, note=1)
    bus = EventBus("memory://outbox-permanent", publish_middleware=[refuse])
    received = Received(bus)
    relay = OutboxRelay(store, bus, CODEC)
    async with bus:
        await relay.drain()
        await received.until(2)
    assert received.by_key == {"a": [0, 2]}
    assert [p.reason for p in await relay.failed()] == [
        "RefusedForGood: headers above the broker's limit"
    ]


async def test_a_stopped_bus_is_retried_not_parked(store: EventStore) -> None:
    await queue(store, 1, "a")
    bus = EventBus("memory://outbox-closed")
    relay = OutboxRelay(store, bus, CODEC)
    with pytest.raises(BusClosed):
        await relay.publish_pending()  # nothing got through: the relay backs off
    assert await relay.failed() == []
    assert [e.n for e in map(CODEC.decode, await store.outbox_pending())] == [1]  # type: ignore[attr-defined]
