"""Hostile input, on every broker: one bad message never stops a consumer.

Each test sends something an attacker or an unlucky foreign producer would, then ordinary
events behind it, and asserts that the consumer stays alive, the bad message is
dead-lettered with a reason (or refused at publish), the events behind it are handled, and
the bus stays healthy. DESIGN §3 guarantee 9.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import json
import threading
from typing import Any

import pytest

from eventbus import Context, Envelope, EventBus, Reject, RetryPolicy
from eventbus.deadletter import DEAD_LETTER_HEADERS

from .fixture import UsesHarness
from .harness import Harness, unique
from .support import make_events, until, wait_dead

FAST = RetryPolicy(attempts=3, backoff=0.01, multiplier=1.0)


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


async def _untyped_poison_then_good(harness: Harness, poison: bytes, reason: str) -> None:
    ev = make_events(unique())
    got: list[Any] = []
    bus = harness.bus()

    @bus.subscribe(ev.stream, "order.#", group="audit")
    async def audit(envelope: Envelope) -> None:
        got.append(envelope.data["order_id"])

    async with bus:
        await harness.inject_raw(ev.stream, "order.created", poison, "k")
        await bus.publish(ev.Created(order_id="after"), key="k")
        [dead] = await wait_dead(bus, ev.stream, "audit", 1)
        await until(lambda: got == ["after"], what="the event behind the poison")
        assert bus.health().ok, bus.health()
    assert dead.body == poison
    assert dead.headers["x-exception-type"] == "eventbus.DecodeError"
    assert reason in dead.headers["x-exception-message"]


#: what handlers raise besides `Exception`s, one per poison event
BASE_EXCEPTIONS = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class HostileInputTests(UsesHarness):
    """Hostile input, DESIGN §3 guarantee 9 (see `AdapterTests`)."""

    async def test_deeply_nested_json_on_an_untyped_subscription(self, harness: Harness) -> None:
        await _untyped_poison_then_good(harness, _nested(100_000), "RecursionError")

    async def test_invalid_utf8_body_on_an_untyped_subscription(self, harness: Harness) -> None:
        await _untyped_poison_then_good(harness, b'{"order_id": "\xff\xfe"}', "JSON")

    async def test_deeply_nested_json_on_a_typed_subscription(self, harness: Harness) -> None:
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(group="g")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            got.append(event.order_id)

        poison = b'{"order_id": "x", "deep": ' + _nested(100_000) + b"}"
        async with bus:
            await harness.inject_raw(ev.stream, "order.created", poison, "k")
            await bus.publish(ev.Created(order_id="after"), key="k")
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
            await until(lambda: got == ["after"])
        assert dead.headers["x-exception-type"] in (
            "eventbus.DecodeError",
            "pydantic.ValidationError",
        )

    async def test_invalid_utf8_in_type_key_and_headers(self, harness: Harness) -> None:
        """Invalid UTF-8 in the type, the key or a CloudEvents header is bad input: each such
        message is dead-lettered with the reason (never decoded into replacement characters
        and handed on), and the events behind them flow."""
        if not harness.capabilities.binary_headers:
            pytest.skip("binary_headers: this transport carries text only")
        ev = make_events(unique())
        got: list[str] = []
        bus = harness.bus()

        @bus.subscribe(ev.stream, "#", group="audit")
        async def audit(envelope: Envelope) -> None:
            got.append(envelope.data["order_id"])

        bad = b"\xc3\x28"
        body = json.dumps({"order_id": "bad"}).encode()
        async with bus:
            await harness.inject_raw(ev.stream, b"order." + bad, body, "k")
            await harness.inject_raw(ev.stream, "order.created", body, b"k" + bad)
            # the tenant extension under the header name of either binding
            tenant: dict[str | bytes, str | bytes] = {"ce-tenant": bad, "ce_tenant": bad}
            await harness.inject_raw(ev.stream, "order.created", body, "k", headers=tenant)
            await bus.publish(ev.Created(order_id="after"), key="k")
            dead = await wait_dead(bus, ev.stream, "audit", 3)
            await until(lambda: "after" in got, what="the event behind the bad ones")
            assert bus.health().ok, bus.health()
        assert got == ["after"]
        for letter in dead:
            assert letter.body == body
            assert letter.headers["x-exception-type"] == "eventbus.DecodeError"
            assert "UTF-8" in letter.headers["x-exception-message"]

    async def test_forged_attempt_header_runs_the_whole_retry_policy(
        self, harness: Harness
    ) -> None:
        ev = make_events(unique())
        attempts: list[int] = []
        bus = harness.bus()

        @bus.subscribe(group="g", retry=FAST)
        async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            attempts.append(ctx.attempt)
            raise RuntimeError("always")

        body = json.dumps({"order_id": "forged"}).encode()
        async with bus:
            await harness.inject_raw(
                ev.stream, "order.created", body, "k", headers={"x-eventbus-attempt": "99"}
            )
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
        assert attempts == [1, 2, 3]
        assert dead.headers["x-attempts"] == "3"

    async def test_forged_dead_letter_headers_never_survive(self, harness: Harness) -> None:
        ev = make_events(unique())
        bus = harness.bus()

        @bus.subscribe(group="g")
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            raise Reject("no")

        forged: dict[str | bytes, str | bytes] = {name: "forged" for name in DEAD_LETTER_HEADERS}
        body = json.dumps({"order_id": "f"}).encode()
        async with bus:
            await harness.inject_raw(ev.stream, "order.created", body, "k", headers=forged)
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
        assert dead.headers["x-original-stream"] == ev.stream
        assert dead.headers["x-original-group"] == "g"
        assert dead.headers["x-original-type"] == "order.created"
        assert dead.headers["x-exception-type"] == "eventbus.Reject"
        assert dead.headers["x-attempts"] == "1"
        leaked = {
            n: v for n, v in dead.headers.items() if n in DEAD_LETTER_HEADERS and v == "forged"
        }
        assert leaked == {}

    async def test_id_less_events_get_distinct_stable_ids(self, harness: Harness) -> None:
        """Three identical id-less events are three events, each with one id that stays the
        same when it is tried again (in-process and, where offered, delayed retries)."""
        ev = make_events(unique())
        seen: list[tuple[str, int]] = []
        delayed_seen: list[tuple[str, int]] = []
        bus = harness.bus()

        @bus.subscribe(group="inproc", retry=FAST)
        async def inproc(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            seen.append((ctx.envelope.id, ctx.attempt))
            if ctx.attempt == 1:
                raise RuntimeError("once")

        delayed = harness.capabilities.delayed_retry
        if delayed:

            @bus.subscribe(group="later", retry=RetryPolicy(attempts=2, backoff=0.05, delayed=True))
            async def later(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
                delayed_seen.append((ctx.envelope.id, ctx.attempt))
                if ctx.attempt == 1:
                    raise RuntimeError("once")

        body = json.dumps({"order_id": "same"}).encode()
        async with bus:
            for _ in range(3):
                await harness.inject_raw(ev.stream, "order.created", body)
            await until(lambda: len(seen) == 6, what="two tries of each event")
            if delayed:
                await until(lambda: len(delayed_seen) == 6, what="two delayed tries of each")
        for tries in (seen, delayed_seen) if delayed else (seen,):
            ids = {event_id for event_id, _ in tries}
            assert len(ids) == 3 and "" not in ids
            for event_id in ids:
                assert sorted(a for i, a in tries if i == event_id) == [1, 2]

    @pytest.mark.parametrize("kind", ["async", "sync", "workers"])
    async def test_handler_raising_any_base_exception_is_a_failed_attempt(
        self, harness: Harness, kind: str
    ) -> None:
        """`CancelledError` raised by a handler itself, `KeyboardInterrupt`, `SystemExit`, ...
        are failed attempts like any exception: retried, then dead-lettered; the consumer (or
        its worker, with concurrency) goes on, and the process is not ended."""
        ev = make_events(unique())
        tries: list[tuple[str, int]] = []
        bus = harness.bus()

        def body(event: Any, ctx: Context) -> None:
            tries.append((event.order_id, ctx.attempt))
            for error in BASE_EXCEPTIONS:
                if event.order_id == error.__name__:
                    raise error()

        policy = RetryPolicy(attempts=2, backoff=0.01)
        if kind == "sync":

            @bus.subscribe(group="g", retry=policy)
            def handle_sync(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
                body(event, ctx)

        else:

            @bus.subscribe(group="g", retry=policy, concurrency=4 if kind == "workers" else 1)
            async def handle(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
                body(event, ctx)

        async with bus:
            for error in BASE_EXCEPTIONS:
                await bus.publish(ev.Created(order_id=error.__name__), key="k")
            await bus.publish(ev.Created(order_id="good"), key="k")
            dead = await wait_dead(bus, ev.stream, "g", len(BASE_EXCEPTIONS))
            await until(lambda: ("good", 1) in tries, what="the event behind them")
            assert bus.running and bus.health().ok, bus.health()
            await bus.publish(ev.Created(order_id="later"), key="k")
            await until(lambda: ("later", 1) in tries, what="the consumer to go on")
        for error in BASE_EXCEPTIONS:
            assert [a for o, a in tries if o == error.__name__] == [1, 2]
        reported = sorted(d.headers["x-exception-type"] for d in dead)
        for error in BASE_EXCEPTIONS:
            assert sum(error.__name__ in name for name in reported) == 1, reported
        assert {d.headers["x-attempts"] for d in dead} == {"2"}

    async def test_sync_handler_blocked_forever_does_not_block_stop(self, harness: Harness) -> None:
        """A sync handler that never returns: the graceful stop gives up after the shutdown
        timeout, the event goes back to the broker (the next member handles it), and the
        stuck thread is a daemon, so it cannot keep the process alive."""
        ev = make_events(unique())
        release = threading.Event()
        started = threading.Event()
        handled: list[str] = []
        first = harness.bus(shutdown_timeout=0.5)

        @first.subscribe(group="g")
        def stuck(event: ev.Created) -> None:  # type: ignore[name-defined]
            started.set()
            release.wait()

        try:
            async with first:
                await first.publish(ev.Created(order_id="stuck"))
                await asyncio.to_thread(started.wait, 30)
                blocked = [t for t in threading.enumerate() if t.name.startswith("eventbus-sync")]
                assert blocked and all(t.daemon for t in blocked)
            assert not first.running

            second = harness.bus()

            @second.subscribe(group="g")
            async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
                handled.append(event.order_id)

            async with second:
                await until(lambda: handled == ["stuck"], timeout=60, what="the redelivery")
        finally:
            release.set()

    async def test_dead_letter_reason_names_the_exception(self, harness: Harness) -> None:
        ev = make_events(unique())
        bus: EventBus = harness.bus()

        @bus.subscribe(group="g", retry=RetryPolicy(attempts=1))
        async def handle(event: ev.Created) -> None:  # type: ignore[name-defined]
            raise ValueError("x" * 100_000)

        async with bus:
            await bus.publish(ev.Created(order_id="long"))
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
        assert dead.headers["x-exception-type"] == "ValueError"
        assert 0 < len(dead.headers["x-exception-message"]) <= 4096
