"""The universal suite: every adapter runs every test (capability flags aside), DESIGN §3.

No `from __future__ import annotations` here: handlers are annotated with event classes
made per test (local variables), which must evaluate when the handler is defined.

Each test uses a fresh stream, so runs on a shared broker never see each other.
"""

import asyncio
import json
import random
import threading
from collections import Counter, defaultdict
from typing import Any

import pytest

from eventbus import (
    Context,
    Envelope,
    EventBus,
    Reject,
    Retry,
    RetryPolicy,
    SyncPublisher,
)
from eventbus.protocol import SelectsDeadLetters

from .fixture import UsesHarness
from .harness import Harness, unique
from .support import dead_letters, make_events, settle, until, wait_dead

DL_HEADERS = {
    "x-original-stream",
    "x-original-type",
    "x-original-group",
    "x-exception-type",
    "x-exception-message",
    "x-exception-stacktrace",
    "x-attempts",
    "x-dead-lettered-at",
}


def check_origin_headers(harness: Harness, headers: dict[str, str]) -> None:
    capabilities = harness.capabilities
    if capabilities.records_offsets:
        assert "x-original-partition" in headers and "x-original-offset" in headers
    if capabilities.records_routing_keys:
        assert "x-original-routing-key" in headers


class ConformanceTests(UsesHarness):
    """The guarantees of DESIGN §3 (see `AdapterTests`)."""

    async def test_round_trip_every_envelope_field(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[tuple[Any, Envelope]] = []
        bus = harness.bus()

        @bus.subscribe(group="g")
        async def handler(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            got.append((event, ctx.envelope))

        async with bus:
            sent = await bus.publish(
                ev.Created(order_id="o-1", n=7, total=12.5),
                key="o-1",
                headers={"tenant": "acme", "traceparent": "00-abc"},
                correlation_id="corr-1",
                causation_id="cause-1",
            )
            await until(lambda: len(got) == 1, what="the event")
        event, env = got[0]
        assert event == ev.Created(order_id="o-1", n=7, total=12.5)
        assert env.id == sent.id and env.id
        assert env.type == "order.created"
        assert env.stream == ev.stream
        assert env.source == bus.settings.source
        assert env.specversion == "1.0"
        assert env.time.endswith("Z") and env.timestamp is not None
        assert env.key == "o-1"
        assert env.content_type == "application/json"
        assert env.correlation_id == "corr-1"
        assert env.causation_id == "cause-1"
        assert env.extensions == {"tenant": "acme", "traceparent": "00-abc"}
        assert env.attempt == 1
        assert json.loads(env.body) == {"order_id": "o-1", "n": 7, "total": 12.5}

    async def test_required_attributes_only(self, harness: Harness) -> None:
        """`optional_attributes=False`: the event travels with id, source, specversion and
        type (and the extensions) only, and is handled like any other."""
        ev = make_events(unique())
        got: list[tuple[Any, Envelope]] = []
        bus = harness.bus(optional_attributes=False)

        @bus.subscribe(group="g")
        async def handler(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            got.append((event, ctx.envelope))

        async with bus:
            sent = await bus.publish(
                ev.Created(order_id="o-1", n=2), key="o-1", correlation_id="corr-1"
            )
            await until(lambda: len(got) == 1, what="the event")
        assert "time" not in sent.attributes()
        event, env = got[0]
        assert event == ev.Created(order_id="o-1", n=2)
        assert env.id == sent.id and env.id
        assert env.type == "order.created" and env.specversion == "1.0"
        assert env.source == bus.settings.source
        assert env.time == "" and env.timestamp is None
        assert env.dataschema is None
        assert env.content_type == "application/json"  # the default when none was sent
        assert env.key == "o-1" and env.correlation_id == "corr-1"
        assert set(env.attributes()) == {
            "id",
            "source",
            "specversion",
            "type",
            "partitionkey",
            "correlationid",
        }

    async def test_fan_out_to_every_group(self, harness: Harness) -> None:
        ev = make_events(unique())
        seen: dict[str, list[str]] = defaultdict(list)
        bus = harness.bus()

        @bus.subscribe(group="billing")
        async def billing(event: ev.Created) -> None:  # type: ignore[name-defined]
            seen["billing"].append(event.order_id)

        @bus.subscribe(group="shipping")
        async def shipping(event: ev.Created) -> None:  # type: ignore[name-defined]
            seen["shipping"].append(event.order_id)

        async with bus:
            for i in range(20):
                await bus.publish(ev.Created(order_id=f"o{i}"), key=f"o{i}")
            await until(lambda: len(seen["billing"]) == 20 and len(seen["shipping"]) == 20)
            await settle()
        assert (
            sorted(seen["billing"])
            == sorted(seen["shipping"])
            == sorted(f"o{i}" for i in range(20))
        )

    async def test_competing_members_each_event_once_per_group(self, harness: Harness) -> None:
        ev = make_events(unique())
        handled: Counter[str] = Counter()
        members = [harness.bus(), harness.bus()]
        for bus in members:

            @bus.subscribe(group="workers", concurrency=2)
            async def work(event: ev.Created) -> None:  # type: ignore[name-defined]
                handled[event.order_id] += 1
                await asyncio.sleep(0)

        async with members[0], members[1]:
            await members[0].publish_many(
                [(ev.Created(order_id=f"o{i}"), f"k{i % 17}") for i in range(300)]
            )
            await until(lambda: len(handled) == 300, what="300 distinct events")
            await settle(0.5)
        assert set(handled) == {f"o{i}" for i in range(300)}
        assert all(count == 1 for count in handled.values()), "an event was handled twice"

    async def test_order_per_key_under_concurrency(self, harness: Harness) -> None:
        ev = make_events(unique())
        seen: dict[str, list[int]] = defaultdict(list)
        bus = harness.bus()
        rng = random.Random(7)

        @bus.subscribe(group="ordered", concurrency=8)
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            await asyncio.sleep(rng.random() / 500)
            seen[event.order_id].append(event.n)

        keys = [f"key-{k}" for k in range(20)]
        async with bus:
            await bus.publish_many(
                [(ev.Created(order_id=key, n=n), key) for n in range(25) for key in keys]
            )
            await until(lambda: sum(map(len, seen.values())) >= 500, what="500 events")
        for key in keys:
            assert seen[key] == list(range(25)), f"order broken for {key}: {seen[key]}"

    async def test_patterns_star_and_hash(self, harness: Harness) -> None:
        ev = make_events(unique())
        star: list[str] = []
        hash_: list[str] = []
        bus = harness.bus()

        @bus.subscribe(ev.stream, "order.*", group="star")
        async def one_word(envelope: Envelope) -> None:
            star.append(envelope.type)

        @bus.subscribe(ev.stream, "order.#", group="hash")
        async def any_words(envelope: Envelope) -> None:
            hash_.append(envelope.type)

        async with bus:
            await bus.publish(ev.Created(order_id="a"))
            await bus.publish(ev.Noted(order_id="a"))  # order.note.added: 3 words
            await bus.publish(ev.Paid(order_id="a"))
            await until(lambda: len(hash_) == 3 and len(star) == 2)
            await settle()
        assert sorted(star) == ["order.created", "order.paid"]
        assert sorted(hash_) == ["order.created", "order.note.added", "order.paid"]

    async def test_typed_union_subscription_and_unknown_types_ignored(
        self, harness: Harness
    ) -> None:
        ev = make_events(unique())
        got: list[tuple[str, str]] = []
        bus = harness.bus()

        @bus.subscribe(group="union")
        async def handle(event: ev.Created | ev.Paid) -> None:  # type: ignore[name-defined]
            got.append((type(event).__name__, event.order_id))

        @bus.subscribe(ev.stream, "order.#", group="everything")  # so order.shipped is routable
        async def everything(envelope: Envelope) -> None:
            pass

        async with bus:
            await bus.publish(ev.Created(order_id="1"), key="1")
            await bus.publish(ev.Shipped(order_id="1"), key="1")  # not this handler's business
            await bus.publish(ev.Paid(order_id="1"), key="1")
            await until(lambda: len(got) == 2)
            await settle()
        assert got == [("Created", "1"), ("Paid", "1")]

    async def test_untyped_envelope_subscription(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[Envelope] = []
        bus = harness.bus()

        @bus.subscribe(ev.stream, group="audit")
        async def audit(envelope: Envelope) -> None:
            got.append(envelope)

        async with bus:
            await bus.publish(ev.Created(order_id="x", n=1), key="x")
            await bus.publish(ev.Paid(order_id="x", n=2), key="x")
            await until(lambda: len(got) == 2)
        assert [(e.type, e.data) for e in got] == [
            ("order.created", {"order_id": "x", "n": 1, "total": 0.0}),
            ("order.paid", {"order_id": "x", "n": 2}),
        ]

    async def test_sync_handler_runs_in_a_worker_thread(self, harness: Harness) -> None:
        ev = make_events(unique())
        threads: list[int] = []
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(group="sync")
        def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            threads.append(threading.get_ident())
            got.append(f"{event.order_id}@{ctx.attempt}")

        async with bus:
            await bus.publish(ev.Created(order_id="s"))
            await until(lambda: got == ["s@1"])
        assert threads[0] != threading.get_ident()

    async def test_sync_publish(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(group="g")
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            got.append(f"{event.order_id}:{ctx.envelope.key}")

        def publish_from_a_script() -> list[str]:
            with SyncPublisher(bus.settings.url, **bus.settings.options) as publisher:
                one = publisher.publish(ev.Created(order_id="a"), key="k1").id
                return [one, *publisher.publish_many([(ev.Created(order_id="b"), "k2")])]

        async with bus:
            ids = await asyncio.to_thread(publish_from_a_script)
            await until(lambda: len(got) == 2)
        assert len(set(ids)) == 2
        assert sorted(got) == ["a:k1", "b:k2"]

    async def test_publish_many_reads_a_long_iterable_a_chunk_at_a_time(
        self, harness: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An iterable longer than a chunk: the broker gets one call per chunk, each made
        before the next chunk is read (bounded memory), and every event arrives once, in
        order per key across chunks; so do the events of the sync face's long iterable
        (its chunks: `tests/unit/test_publish_many.py`)."""
        import eventbus.bus
        import eventbus.sync

        monkeypatch.setattr(eventbus.bus, "PUBLISH_MANY_CHUNK", 7)
        monkeypatch.setattr(eventbus.sync, "PUBLISH_MANY_CHUNK", 7)
        ev = make_events(unique())
        seen: dict[str, list[int]] = defaultdict(list)
        bus = harness.bus()

        @bus.subscribe(group="chunks")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            seen[event.order_id].append(event.n)

        keys = ["k0", "k1", "k2", "k3"]
        read = 0

        def events(first: int, count: int) -> Any:
            nonlocal read
            for n in range(first, first + count):
                read += 1
                key = keys[n % len(keys)]
                yield ev.Created(order_id=key, n=n), key

        async with bus:
            calls: list[tuple[int, int]] = []  # (events in the call, events read so far)
            publish_many = bus.broker.publish_many

            async def spy(messages: list[Any]) -> None:
                calls.append((len(messages), read))
                await publish_many(messages)

            monkeypatch.setattr(bus.broker, "publish_many", spy)
            ids = await bus.publish_many(events(0, 40))
            assert calls == [(7, 7), (7, 14), (7, 21), (7, 28), (7, 35), (5, 40)]
            assert len(set(ids)) == 40

            def from_a_script() -> list[str]:
                with SyncPublisher(bus.settings.url, **bus.settings.options) as publisher:
                    return publisher.publish_many(events(40, 20))

            assert len(set(await asyncio.to_thread(from_a_script))) == 20
            await until(lambda: sum(map(len, seen.values())) >= 60, what="60 events")
        for i, key in enumerate(keys):
            assert seen[key] == list(range(i, 60, 4)), f"order broken for {key}: {seen[key]}"

    async def test_many_concurrent_publishers_lose_nothing(self, harness: Harness) -> None:
        ev = make_events(unique())
        handled: set[str] = set()
        bus = harness.bus()

        @bus.subscribe(group="bulk", concurrency=4)
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            handled.add(event.order_id)

        async def publisher(p: int) -> None:
            for i in range(100):
                await bus.publish(ev.Created(order_id=f"{p}-{i}"), key=f"{p}-{i % 10}")

        async with bus:
            await asyncio.gather(*(publisher(p) for p in range(12)))
            await until(lambda: len(handled) == 1200, timeout=60, what="1200 events")
        assert handled == {f"{p}-{i}" for p in range(12) for i in range(100)}

    async def test_raw_client_event_is_consumable(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[tuple[str, str]] = []
        bus = harness.bus()

        @bus.subscribe(group="interop")
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            got.append((event.order_id, ctx.envelope.type))

        async with bus:
            await harness.inject_raw(ev.stream, "order.created", b'{"order_id": "raw-1"}', "raw-1")
            await until(lambda: got == [("raw-1", "order.created")])

    async def test_correlation_and_causation_propagate(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[Envelope] = []
        bus = harness.bus()

        @bus.subscribe(group="chain")
        async def on_created(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            await ctx.publish(ev.Paid(order_id=event.order_id), key=event.order_id)
            await bus.publish(ev.Shipped(order_id=event.order_id), key=event.order_id)

        @bus.subscribe(ev.stream, "order.paid", "order.shipped", group="watch")
        async def watch(envelope: Envelope) -> None:
            got.append(envelope)

        async with bus:
            first = await bus.publish(ev.Created(order_id="c"), key="c")
            await until(lambda: len(got) == 2)
        for envelope in got:
            assert envelope.causation_id == first.id
            assert envelope.correlation_id == first.id

    async def test_retry_then_success_with_attempt_visible(self, harness: Harness) -> None:
        ev = make_events(unique())
        attempts: list[int] = []
        bus = harness.bus()

        @bus.subscribe(group="flaky", retry=RetryPolicy(attempts=4, backoff=0.01))
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ConnectionError("downstream is down")

        async with bus:
            await bus.publish(ev.Created(order_id="r"))
            await until(lambda: attempts == [1, 2, 3])
            await settle()
            assert await dead_letters(bus, ev.stream, "flaky") == []
        assert attempts == [1, 2, 3]

    async def test_in_process_retry_keeps_order_per_key(self, harness: Harness) -> None:
        ev = make_events(unique())
        seen: list[int] = []
        bus = harness.bus()

        @bus.subscribe(group="g", retry=RetryPolicy(attempts=3, backoff=0.02))
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            if event.n == 2 and ctx.attempt == 1:
                raise RuntimeError("first try of n=2 fails")
            seen.append(event.n)

        async with bus:
            await bus.publish_many([(ev.Created(order_id="k", n=n), "k") for n in range(6)])
            await until(lambda: len(seen) == 6)
        assert seen == list(range(6))

    async def test_handler_retry_outcome(self, harness: Harness) -> None:
        ev = make_events(unique())
        attempts: list[int] = []
        bus = harness.bus()

        @bus.subscribe(group="g", retry=RetryPolicy(attempts=2, backoff=5.0))
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                raise Retry(after=0.01)  # overrides the 5 s policy delay

        async with bus:
            await bus.publish(ev.Created(order_id="x"))
            await until(lambda: attempts == [1, 2], timeout=4)

    async def test_retry_exhaustion_dead_letters_with_headers_and_identical_body(
        self,
        harness: Harness,
    ) -> None:
        ev = make_events(unique())
        calls: list[int] = []
        bus = harness.bus()

        @bus.subscribe(group="poison", retry=RetryPolicy(attempts=3, backoff=0.01))
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            calls.append(ctx.attempt)
            if event.order_id == "bad":
                raise ValueError("cannot charge order bad")

        async with bus:
            sent = await bus.publish(ev.Created(order_id="bad", n=1), key="bad")
            await bus.publish(ev.Created(order_id="good"), key="bad")
            [dead] = await wait_dead(bus, ev.stream, "poison", 1)
            await until(lambda: len(calls) == 4, what="3 tries of bad, 1 of good")
        assert calls == [1, 2, 3, 1]
        assert dead.body == sent.body  # byte-identical
        headers = dead.headers
        assert set(headers) >= DL_HEADERS, DL_HEADERS - set(headers)
        assert headers["x-original-stream"] == ev.stream
        assert headers["x-original-type"] == "order.created"
        assert headers["x-original-group"] == "poison"
        assert headers["x-exception-type"] == "ValueError"
        assert headers["x-exception-message"] == "cannot charge order bad"
        assert "cannot charge order bad" in headers["x-exception-stacktrace"]
        assert headers["x-attempts"] == "3"
        assert headers["x-dead-lettered-at"].endswith("Z")
        check_origin_headers(harness, headers)
        assert dead.envelope.id == sent.id
        assert dead.envelope.key == "bad"
        assert dead.attempts == 3

    async def test_reject_dead_letters_at_once(self, harness: Harness) -> None:
        ev = make_events(unique())
        calls: list[int] = []
        bus = harness.bus()

        @bus.subscribe(group="strict", retry=RetryPolicy(attempts=5, backoff=0.01))
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            calls.append(ctx.attempt)
            raise Reject("order total is negative")

        async with bus:
            await bus.publish(ev.Created(order_id="neg", total=-1))
            [dead] = await wait_dead(bus, ev.stream, "strict", 1)
        assert calls == [1]
        assert dead.headers["x-exception-type"] == "eventbus.Reject"
        assert dead.headers["x-exception-message"] == "order total is negative"
        assert dead.headers["x-attempts"] == "1"

    async def test_non_retryable_exception_dead_letters_at_once(self, harness: Harness) -> None:
        ev = make_events(unique())
        calls: list[int] = []
        bus = harness.bus()

        @bus.subscribe(
            group="g", retry=RetryPolicy(attempts=5, backoff=0.01, on=(ConnectionError,))
        )
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            calls.append(ctx.attempt)
            raise KeyError("programming error")

        async with bus:
            await bus.publish(ev.Created(order_id="k"))
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
        assert calls == [1]
        assert dead.headers["x-exception-type"] == "KeyError"

    @pytest.mark.parametrize(
        ("body", "exc_type"),
        [
            (b"{not json", "eventbus.DecodeError"),
            (b"\xff\xfe\x00binary", "eventbus.DecodeError"),
            (b'{"order_id": 42, "n": "many"}', "pydantic.ValidationError"),
            (b'{"n": 1}', "pydantic.ValidationError"),
        ],
    )
    async def test_bad_input_is_dead_lettered_and_consumer_continues(
        self, harness: Harness, body: bytes, exc_type: str
    ) -> None:
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(group="g")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            got.append(event.order_id)

        async with bus:
            await harness.inject_raw(ev.stream, "order.created", body, "k")
            await bus.publish(ev.Created(order_id="after"), key="k")
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
            await until(lambda: got == ["after"])
        assert dead.body == body
        assert dead.headers["x-exception-type"] == exc_type
        assert dead.headers["x-exception-message"]
        check_origin_headers(harness, dead.headers)

    async def test_untyped_subscription_dead_letters_malformed_json(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(ev.stream, "order.#", group="audit")
        async def audit(envelope: Envelope) -> None:
            got.append(envelope.data["order_id"])

        async with bus:
            await harness.inject_raw(ev.stream, "order.created", b"{{{", None)
            await bus.publish(ev.Created(order_id="fine"))
            [dead] = await wait_dead(bus, ev.stream, "audit", 1)
            await until(lambda: got == ["fine"])
        assert dead.headers["x-exception-type"] == "eventbus.DecodeError"

    async def test_oversized_message_is_dead_lettered(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus(max_message_bytes=2048)

        @bus.subscribe(group="g")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            got.append(event.order_id)

        big = json.dumps({"order_id": "big", "pad": "x" * 4000}).encode()
        async with bus:
            await harness.inject_raw(ev.stream, "order.created", big, "k")
            await bus.publish(ev.Created(order_id="small"), key="k")
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
            await until(lambda: got == ["small"])
        assert dead.body == big
        assert dead.headers["x-exception-type"] == "eventbus.MessageTooLarge"

    async def test_message_without_type_is_dead_lettered(self, harness: Harness) -> None:
        if harness.capabilities.type_always_present:
            pytest.skip("type_always_present: every event of this broker has a type")
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(ev.stream, group="g")
        async def handle(envelope: Envelope) -> None:
            got.append(envelope.type)

        async with bus:
            await harness.inject_raw(ev.stream, None, b'{"order_id": "no-type"}', None)
            await bus.publish(ev.Created(order_id="typed"))
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
            await until(lambda: got == ["order.created"])
        assert dead.headers["x-exception-type"] == "eventbus.DecodeError"

    async def test_delayed_retry_hands_back_to_broker(self, harness: Harness) -> None:
        if not harness.capabilities.delayed_retry:
            pytest.skip("delayed_retry: this broker has no delayed retries")
        ev = make_events(unique())
        attempts: list[int] = []
        bus = harness.bus()
        policy = RetryPolicy(attempts=3, backoff=0.2, multiplier=1.0, delayed=True)

        @bus.subscribe(group="later", retry=policy)
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            attempts.append(ctx.attempt)
            if event.order_id == "slow" and ctx.attempt < 3:
                raise RuntimeError("not yet")

        async with bus:
            await bus.publish(ev.Created(order_id="slow"), key="a")
            await bus.publish(ev.Created(order_id="fast"), key="b")
            await until(lambda: len(attempts) == 4, what="3 tries of slow, 1 of fast")
            await settle()
            assert await dead_letters(bus, ev.stream, "later") == []
        assert sorted(attempts) == [1, 1, 2, 3]

    async def test_delayed_retry_exhaustion_dead_letters(self, harness: Harness) -> None:
        if not harness.capabilities.delayed_retry:
            pytest.skip("delayed_retry: this broker has no delayed retries")
        ev = make_events(unique())
        attempts: list[int] = []
        bus = harness.bus()
        policy = RetryPolicy(attempts=2, backoff=0.1, delayed=True)

        @bus.subscribe(group="later", retry=policy)
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            attempts.append(ctx.attempt)
            raise RuntimeError("always")

        async with bus:
            sent = await bus.publish(ev.Created(order_id="p"))
            [dead] = await wait_dead(bus, ev.stream, "later", 1)
        assert attempts == [1, 2]
        assert dead.headers["x-attempts"] == "2"
        assert dead.body == sent.body

    async def test_dead_letter_replay_returns_event_to_its_group_only(
        self, harness: Harness
    ) -> None:
        ev = make_events(unique())
        broken = True
        handled: list[tuple[str, int]] = []
        other: list[str] = []
        bus = harness.bus()

        @bus.subscribe(group="billing", retry=RetryPolicy(attempts=1))
        async def billing(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            if broken:
                raise RuntimeError("billing is broken")
            handled.append((event.order_id, ctx.attempt))

        @bus.subscribe(group="other")
        async def other_group(event: ev.Created) -> None:  # type: ignore[name-defined]
            other.append(event.order_id)

        async with bus:
            await bus.publish(ev.Created(order_id="d1"), key="d1")
            await bus.publish(ev.Created(order_id="d2"), key="d2")
            await wait_dead(bus, ev.stream, "billing", 2)
            await until(lambda: len(other) == 2)
            broken = False
            assert await bus.replay_dead_letters(ev.stream, "billing") == 2
            await until(lambda: len(handled) == 2)
            await settle()
            assert await dead_letters(bus, ev.stream, "billing") == []
        assert sorted(handled) == [("d1", 1), ("d2", 1)]
        assert sorted(other) == ["d1", "d2"], "replay reached another group"

    async def test_selected_dead_letters_replay_and_the_rest_stay_in_order(
        self, harness: Harness
    ) -> None:
        """`SelectsDeadLetters`: `select` sees every dead letter once, oldest first; the
        selected ones go back to the group with their ids, the others stay where they
        were, in order, each once."""
        ev = make_events(unique())
        broken = True
        handled: list[tuple[str, str, int]] = []
        bus = harness.bus()
        if not isinstance(bus.broker, SelectsDeadLetters):
            pytest.skip("the adapter does not implement SelectsDeadLetters")

        @bus.subscribe(group="billing", retry=RetryPolicy(attempts=1))
        async def billing(event: ev.Created | ev.Paid, ctx: Context) -> None:  # type: ignore[name-defined]
            if broken:
                raise Reject("billing is broken")
            handled.append((event.order_id, ctx.envelope.id, ctx.attempt))

        async with bus:
            for i in range(8):
                kind = ev.Paid if i % 2 else ev.Created
                await bus.publish(kind(order_id=f"d{i}"), key=f"d{i}")
            await wait_dead(bus, ev.stream, "billing", 8)
            before = await dead_letters(bus, ev.stream, "billing")
            broken = False
            seen: list[str] = []

            def paid(dead: Any) -> bool:
                seen.append(dead.attributes["id"])
                return bool(dead.attributes["type"] == "order.paid")

            assert await bus.replay_dead_letters(ev.stream, "billing", select=paid) == 4
            await until(lambda: len(handled) == 4, what="the replayed events")
            await settle()
            after = await dead_letters(bus, ev.stream, "billing")
            again = await dead_letters(bus, ev.stream, "billing")
        ids = [d.attributes["id"] for d in before]
        assert seen == ids, f"select must see each dead letter once, oldest first: {seen} {ids}"
        kept = [d.attributes["id"] for d in before if d.attributes["type"] != "order.paid"]
        assert [d.attributes["id"] for d in after] == kept
        assert [d.attributes["id"] for d in again] == kept
        assert [d.body for d in after] == [d.body for d in before if d.attributes["id"] in kept]
        replayed = {d.attributes["id"]: d for d in before if d.attributes["id"] not in kept}
        assert sorted(i for _, i, _ in handled) == sorted(replayed), "ids must be kept"
        assert sorted(o for o, _, _ in handled) == ["d1", "d3", "d5", "d7"]
        assert {a for _, _, a in handled} == {1}

    async def test_purge_selected_dead_letters_then_all(self, harness: Harness) -> None:
        ev = make_events(unique())
        bus = harness.bus()
        if not isinstance(bus.broker, SelectsDeadLetters):
            pytest.skip("the adapter does not implement SelectsDeadLetters")

        @bus.subscribe(group="billing", retry=RetryPolicy(attempts=1))
        async def billing(event: ev.Created | ev.Paid) -> None:  # type: ignore[name-defined]
            raise Reject("billing is broken")

        async with bus:
            for i in range(6):
                kind = ev.Paid if i % 3 == 0 else ev.Created
                await bus.publish(kind(order_id=f"p{i}"), key=f"p{i}")
            before = await wait_dead(bus, ev.stream, "billing", 6)
            assert await bus.purge_dead_letters(ev.stream, "billing", select=lambda d: False) == 0
            listed = await dead_letters(bus, ev.stream, "billing")
            assert [d.attributes["id"] for d in listed] == [d.attributes["id"] for d in before]
            purged = await bus.purge_dead_letters(
                ev.stream, "billing", select=lambda d: d.attributes["type"] == "order.paid"
            )
            assert purged == 2
            after = await dead_letters(bus, ev.stream, "billing")
            assert [d.attributes["id"] for d in after] == [
                d.attributes["id"] for d in before if d.attributes["type"] != "order.paid"
            ]
            assert await bus.purge_dead_letters(ev.stream, "billing") == 4
            assert await dead_letters(bus, ev.stream, "billing") == []
            assert await bus.purge_dead_letters(ev.stream, "billing") == 0

    async def test_graceful_stop_loses_nothing(self, harness: Harness) -> None:
        ev = make_events(unique())
        handled: list[str] = []

        def make_bus() -> EventBus:
            bus = harness.bus()

            @bus.subscribe(group="steady")
            async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
                await asyncio.sleep(0.002)
                handled.append(event.order_id)

            return bus

        first = make_bus()
        async with first:
            await first.publish_many(
                [(ev.Created(order_id=f"o{i}"), f"k{i % 5}") for i in range(200)]
            )
            await until(lambda: len(handled) >= 20, what="some progress")
        stopped_at = len(handled)
        assert stopped_at < 200, "stop came too late to test anything"
        async with make_bus():
            await until(lambda: len(set(handled)) == 200, timeout=60, what="every event")
        assert set(handled) == {f"o{i}" for i in range(200)}

    async def test_crashed_handler_is_redelivered(self, harness: Harness) -> None:
        """A handler still running when the shutdown timeout expires is cancelled and its event
        goes back to the broker; the next instance of the group handles it."""
        ev = make_events(unique())
        started = asyncio.Event()
        finished: list[tuple[str, bool]] = []

        first = harness.bus(shutdown_timeout=0.3)

        @first.subscribe(group="g")
        async def hang(event: ev.Created) -> None:  # type: ignore[name-defined]
            started.set()
            await asyncio.sleep(3600)

        async with first:
            await first.publish(ev.Created(order_id="stuck"))
            await asyncio.wait_for(started.wait(), 30)

        second = harness.bus()

        @second.subscribe(group="g")
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            finished.append(
                (event.order_id, ctx.redelivered or not harness.capabilities.marks_redeliveries)
            )

        async with second:
            await until(lambda: len(finished) == 1, timeout=60, what="the redelivery")
        assert finished == [("stuck", True)]

    async def test_ready_means_ready_for_every_subscription(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: dict[str, int] = Counter()
        bus = harness.bus()
        for g in ("a", "b", "c"):

            def make(group: str) -> Any:
                async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
                    got[group] += 1

                return handle

            bus.add_handler(make(g), group=g)

        async with bus:
            await bus.publish(ev.Created(order_id="first"))
            await until(lambda: dict(got) == {"a": 1, "b": 1, "c": 1})

    async def test_publishing_where_no_group_listens(self, harness: Harness) -> None:
        """RabbitMQ (`mandatory`) reports an unroutable event as an error; a broker that
        stores streams without consumers (Kafka's log, memory's drop-by-design) accepts it."""
        from eventbus import UnroutableError

        ev = make_events(unique())
        bus = harness.bus()
        async with bus:
            if harness.capabilities.unroutable_is_error:
                with pytest.raises(UnroutableError):
                    await bus.publish(ev.Created(order_id="nobody"))
            else:
                await bus.publish(ev.Created(order_id="nobody"))
