"""Batch handlers (`eventbus.batch`) on every broker: batches fill up to `batch_size`, key
order holds inside and across them, each event is settled on its own (a failed item
alone goes through retry and dead-lettering), and bad input in a batch is dead-lettered
without the handler.

No `from __future__ import annotations`: handlers are annotated with event classes made
per test.
"""

import asyncio
from collections import Counter, defaultdict
from typing import Any

import pytest

from eventbus import BatchContext, Context, EventBus, Reject, Retry, RetryPolicy
from eventbus.types import HandleNext

from .fixture import UsesHarness
from .harness import Harness, unique
from .support import make_events, settle, until, wait_dead


class BatchPath:
    """How a batch runs: `inline` (no handle middleware: the whole batch in one task) or
    `per-item` (a pass-through handle middleware, which puts each item on a task of its
    own); `wrapped` lists the events the middleware saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.wrapped: list[str] = []

    async def _pass(self, ctx: Context, call_next: HandleNext) -> None:
        self.wrapped.append(ctx.envelope.id)
        await call_next(ctx)

    def bus(self, harness: Harness) -> EventBus:
        return harness.bus(middleware=[self._pass]) if self.name == "per-item" else harness.bus()


class BatchTests(UsesHarness):
    """Batch handlers (see `AdapterTests`), each test on both ways a batch runs."""

    @pytest.fixture(params=["inline", "per-item"])
    def path(self, request: pytest.FixtureRequest) -> BatchPath:
        return BatchPath(request.param)

    async def test_batches_fill_up_and_keep_key_order(
        self, harness: Harness, path: BatchPath
    ) -> None:
        """60 events of 20 keys (a broker may hold one unsettled delivery per key)."""
        ev = make_events(unique())
        batches: list[list[tuple[str, int]]] = []
        published = asyncio.Event()
        bus = path.bus(harness)

        @bus.subscribe(group="g", batch_size=10, batch_timeout=0.2)
        async def handle(events: list[ev.Created], ctx: BatchContext) -> None:  # type: ignore[name-defined]
            assert len(ctx) == len(events) and ctx.events == events
            if not batches:  # hold the first batch: the rest queue up behind it
                await published.wait()
            batches.append([(e.order_id, e.n) for e in events])

        async with bus:
            await bus.publish_many(
                [(ev.Created(order_id=f"k{i % 20}", n=i), f"k{i % 20}") for i in range(60)]
            )
            published.set()
            await until(lambda: sum(map(len, batches)) >= 60, what="60 events in batches")
            await settle()
        handled = [item for batch in batches for item in batch]
        assert sorted(n for _, n in handled) == list(range(60)), "each event once"
        if path.name == "per-item":
            assert len(set(path.wrapped)) == 60, "the middleware wrapped each item"
        assert max(len(b) for b in batches) == 10, [len(b) for b in batches]
        per_key: defaultdict[str, list[int]] = defaultdict(list)
        for key, n in handled:
            per_key[key].append(n)
        assert all(ns == sorted(ns) for ns in per_key.values()), per_key

        again: list[Any] = []
        bus = path.bus(harness)

        @bus.subscribe(group="g", batch_size=10)
        async def later(events: list[ev.Created]) -> None:  # type: ignore[name-defined]
            again.extend(events)

        async with bus:
            await bus.publish(ev.Created(order_id="k0", n=60), key="k0")
            await until(lambda: len(again) >= 1, what="the next event")
            await settle()
        assert [e.n for e in again] == [60], "every event of the batches was acked"

    async def test_failed_items_alone_are_retried_or_dead_lettered(
        self, harness: Harness, path: BatchPath
    ) -> None:
        ev = make_events(unique())
        calls: list[list[tuple[int, int]]] = []
        handled: Counter[int] = Counter()
        published = asyncio.Event()
        bus = path.bus(harness)

        @bus.subscribe(group="g", batch_size=20, retry=RetryPolicy(attempts=3, backoff=0.01))
        async def handle(events: list[ev.Created], ctx: BatchContext) -> None:  # type: ignore[name-defined]
            if not calls:
                await published.wait()
            calls.append([(e.n, c.envelope.attempt) for e, c in zip(events, ctx, strict=True)])
            for event, item in zip(events, ctx, strict=True):
                if event.n % 10 == 3:
                    ctx.fail(event, Reject(f"no {event.n}"))
                elif event.n % 10 == 5 and item.envelope.attempt == 1:
                    ctx.fail(item, Retry())
                else:
                    handled[event.n] += 1

        async with bus:
            await bus.publish_many(
                [(ev.Created(order_id=f"k{i}", n=i), f"k{i}") for i in range(30)]
            )
            published.set()
            dead = await wait_dead(bus, ev.stream, "g", 3)
            await until(lambda: len(handled) == 27, what="27 events handled")
            await settle()
        assert sorted(handled) == [n for n in range(30) if n % 10 != 3]
        assert set(handled.values()) == {1}, "each handled once"
        assert sorted(d.envelope.data["n"] for d in dead) == [3, 13, 23]
        assert {d.reason for d in dead} == {f"eventbus.Reject: no {n}" for n in (3, 13, 23)}
        retried = [c for c in calls if len(c) == 1 and c[0][1] == 2]
        assert sorted(c[0][0] for c in retried) == [5, 15, 25], "retried alone, attempt 2"

    async def test_a_raising_batch_handler_fails_each_item(
        self, harness: Harness, path: BatchPath
    ) -> None:
        ev = make_events(unique())
        calls: list[list[tuple[int, int]]] = []
        bus = path.bus(harness)

        @bus.subscribe(group="g", batch_size=5, retry=RetryPolicy(attempts=2, backoff=0.01))
        def handle(events: list[ev.Created], ctx: BatchContext) -> None:  # type: ignore[name-defined]
            calls.append([(e.n, c.envelope.attempt) for e, c in zip(events, ctx, strict=True)])
            if any(c.envelope.attempt == 1 for c in ctx):
                raise ValueError("the whole batch failed")

        async with bus:
            await bus.publish_many([(ev.Created(order_id=f"k{i}", n=i), f"k{i}") for i in range(5)])
            await until(
                lambda: sum(1 for c in calls if c[0][1] == 2) == 5, what="each retried alone"
            )
            await settle()
        firsts = sorted(n for c in calls for n, attempt in c if attempt == 1)
        seconds = sorted(n for c in calls for n, attempt in c if attempt == 2)
        assert firsts == seconds == list(range(5))
        assert all(len(c) == 1 for c in calls if c[0][1] == 2)

    async def test_bad_input_in_a_batch_is_dead_lettered_without_the_handler(
        self, harness: Harness, path: BatchPath
    ) -> None:
        ev = make_events(unique())
        got: list[int] = []
        bus = path.bus(harness)

        @bus.subscribe(group="g", batch_size=10, batch_timeout=0.2)
        async def handle(events: list[ev.Created]) -> None:  # type: ignore[name-defined]
            got.extend(e.n for e in events)

        async with bus:
            await bus.publish(ev.Created(order_id="k", n=1), key="k")
            await harness.inject_raw(ev.stream, "order.created", b"{not json", key="k")
            await bus.publish(ev.Created(order_id="k", n=2), key="k")
            [dead] = await wait_dead(bus, ev.stream, "g", 1)
            await until(lambda: len(got) == 2, what="the two good events")
            await settle()
        assert got == [1, 2]
        assert dead.reason.startswith("eventbus.DecodeError")
