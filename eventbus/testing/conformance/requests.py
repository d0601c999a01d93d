"""Request/reply, on every broker that offers it (`Capabilities.request_reply`; the section
is skipped, saying so, on one that does not): `bus.request` gets the responder's value,
typed or not, a domain error comes back as `RequestFailed` and never as a dead letter, a
timeout names the request, a late reply is dropped and counted while the requester goes
on, and many requests at once each get their own reply.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel

from eventbus import (
    Context,
    DecodeError,
    Envelope,
    Event,
    NotFound,
    RequestFailed,
    RetryPolicy,
)

from .fixture import UsesHarness
from .harness import Harness, unique
from .support import dead_letters, settle, until, wait_dead

#: generous: a shared broker on a small machine answers in milliseconds, not always
TIMEOUT = 30.0


class OrderView(BaseModel):
    order_id: str
    total: float
    lines: list[str] = []


class OutOfStock(Exception):
    """A domain error of the application's own (given to `errors=`)."""


@dataclass
class Queries:
    """Query classes on one fresh stream (tests never share a stream)."""

    stream: str
    GetOrder: type[Event]
    CountOrders: type[Event]


def queries(stream: str) -> Queries:
    class GetOrder(Event, stream=stream, type="order.get"):
        order_id: str
        n: int = 0

    class CountOrders(Event, stream=stream, type="order.count"):
        customer_id: str

    return Queries(stream, GetOrder, CountOrders)


def offers_request_reply(harness: Harness) -> None:
    if not harness.capabilities.request_reply:
        pytest.skip("request_reply: this broker offers no request/reply")


class RequestReplyTests(UsesHarness):
    """Request/reply (see `AdapterTests`)."""

    async def test_request_returns_the_responders_value(self, harness: Harness) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus()
        seen: list[Envelope] = []

        @bus.responder(group="orders-api")
        async def get(query: q.GetOrder, ctx: Context) -> Any:  # type: ignore[name-defined]
            seen.append(ctx.envelope)
            if query.order_id == "none":
                return None
            return {"order_id": query.order_id, "total": 12.5, "lines": ["a", "b"]}

        async with bus:
            reply = await bus.request(q.GetOrder(order_id="o-1"), timeout=TIMEOUT)
            nothing = await bus.request(q.GetOrder(order_id="none"), timeout=TIMEOUT)
        assert reply == {"order_id": "o-1", "total": 12.5, "lines": ["a", "b"]}
        assert nothing is None
        request = seen[0]
        assert request.type == "order.get" and request.id
        assert request.extensions.get("replyto"), "a request names where its reply goes"

    async def test_typed_reply(self, harness: Harness) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus()

        @bus.responder(group="orders-api")
        def get(query: q.GetOrder) -> OrderView:  # type: ignore[name-defined]  # sync: a thread
            return OrderView(order_id=query.order_id, total=3.5, lines=["x"])

        @bus.responder(group="counts")
        async def count(query: q.CountOrders) -> int:  # type: ignore[name-defined]
            return len(query.customer_id)

        async with bus:
            view = await bus.request(
                q.GetOrder(order_id="o-2"), timeout=TIMEOUT, reply_type=OrderView
            )
            counted = await bus.request(
                q.CountOrders(customer_id="c-42"), timeout=TIMEOUT, reply_type=int
            )
            views = await bus.request(
                q.GetOrder(order_id="o-3"), timeout=TIMEOUT, reply_type=dict[str, Any]
            )
            with pytest.raises(DecodeError, match="OrderView"):
                await bus.request(
                    q.CountOrders(customer_id="c"), timeout=TIMEOUT, reply_type=OrderView
                )
        assert isinstance(view, OrderView)
        assert view == OrderView(order_id="o-2", total=3.5, lines=["x"])
        assert counted == 4
        assert views == {"order_id": "o-3", "total": 3.5, "lines": ["x"]}

    async def test_domain_error_comes_back_as_request_failed_not_a_dead_letter(
        self, harness: Harness
    ) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus(metrics=True)
        calls: list[str] = []

        @bus.responder(group="orders-api", errors=(OutOfStock,), retry=RetryPolicy(attempts=3))
        async def get(query: q.GetOrder) -> OrderView:  # type: ignore[name-defined]
            calls.append(query.order_id)
            if query.order_id == "missing":
                raise NotFound(f"order {query.order_id} does not exist")
            if query.order_id == "sold-out":
                raise OutOfStock("the last one went an hour ago")
            return OrderView(order_id=query.order_id, total=1)

        async with bus:
            with pytest.raises(RequestFailed) as missing:
                await bus.request(q.GetOrder(order_id="missing"), timeout=TIMEOUT)
            with pytest.raises(RequestFailed) as sold_out:
                await bus.request(q.GetOrder(order_id="sold-out"), timeout=TIMEOUT)
            after = await bus.request(
                q.GetOrder(order_id="o-4"), timeout=TIMEOUT, reply_type=OrderView
            )
            await settle()
            assert await dead_letters(bus, q.stream, "orders-api") == []
            assert bus.health().ok, bus.health().reasons()
            metrics = bus.metrics
            assert metrics is not None
            labels = (q.stream, "order.get")
            assert metrics.requests.get((*labels, "failed")) == 2
            assert metrics.requests.get((*labels, "replied")) == 1
            assert metrics.handled.get((*labels, "orders-api")) == 3
        assert calls == ["missing", "sold-out", "o-4"], "an answer is never retried"
        error = missing.value
        assert error.error_type.endswith("NotFound")
        assert error.error_message == "order missing does not exist"
        assert error.code == "not_found"
        assert not error.dead_lettered
        assert error.request_type == "order.get" and error.request_id
        assert "order missing does not exist" in str(error)
        assert sold_out.value.error_type.endswith("OutOfStock")
        assert sold_out.value.error_message == "the last one went an hour ago"
        assert after.order_id == "o-4"

    async def test_a_failing_responder_dead_letters_the_request_and_tells_the_caller(
        self, harness: Harness
    ) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus()
        attempts: list[int] = []

        @bus.responder(group="orders-api", retry=RetryPolicy(attempts=2, backoff=0.01))
        async def get(query: q.GetOrder, ctx: Context) -> OrderView:  # type: ignore[name-defined]
            attempts.append(ctx.attempt)
            raise RuntimeError("the read model is unreachable")

        async with bus:
            with pytest.raises(RequestFailed) as caught:
                await bus.request(q.GetOrder(order_id="o-5"), timeout=TIMEOUT)
            [dead] = await wait_dead(bus, q.stream, "orders-api", 1)
        assert attempts == [1, 2], "a failure goes through the retry policy first"
        assert caught.value.dead_lettered
        assert caught.value.error_type == "RuntimeError"
        assert caught.value.error_message == "the read model is unreachable"
        assert dead.headers["x-exception-type"] == "RuntimeError"
        assert dead.headers["x-attempts"] == "2"
        assert json.loads(dead.body)["order_id"] == "o-5"

    async def test_a_timeout_raises_timeout_error_naming_the_request(
        self, harness: Harness
    ) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus(metrics=True)
        release = asyncio.Event()
        seen: list[str] = []

        @bus.responder(group="orders-api")
        async def get(query: q.GetOrder, ctx: Context) -> str:  # type: ignore[name-defined]
            seen.append(ctx.envelope.id)
            await release.wait()
            return "too late"

        async with bus:
            try:
                with pytest.raises(TimeoutError) as caught:
                    await bus.request(q.GetOrder(order_id="o-6"), timeout=0.5)
                await until(lambda: bool(seen), what="the request at the responder")
            finally:
                release.set()
            metrics = bus.metrics
            assert metrics is not None
            stream = q.stream
            assert metrics.requests.get((stream, "order.get", "timed_out")) == 1
        text = str(caught.value)
        assert "order.get" in text and "0.5" in text and stream in text
        assert seen and seen[0] in text, "the message names the request's id"
        assert getattr(caught.value, "request_id", None) == seen[0]

    async def test_a_late_reply_is_dropped_and_counted_and_the_requester_goes_on(
        self, harness: Harness
    ) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus(metrics=True)
        release = asyncio.Event()
        answered: list[str] = []

        @bus.responder(group="orders-api")
        async def get(query: q.GetOrder) -> str:  # type: ignore[name-defined]
            if query.order_id == "slow":
                await release.wait()
            answered.append(query.order_id)
            return f"answer to {query.order_id}"

        async with bus:
            metrics = bus.metrics
            assert metrics is not None
            with pytest.raises(TimeoutError):
                await bus.request(q.GetOrder(order_id="slow"), timeout=0.5)
            release.set()
            await until(
                lambda: metrics.replies_dropped.get(("late",)) == 1, what="the late reply counted"
            )
            assert answered == ["slow"]
            reply = await bus.request(q.GetOrder(order_id="next"), timeout=TIMEOUT)
            assert reply == "answer to next"
            assert bus.health().ok, bus.health().reasons()
        assert metrics.replies_dropped == {("late",): 1}

    async def test_concurrent_requests_each_get_their_own_reply(self, harness: Harness) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus(metrics=True)

        @bus.responder(group="orders-api", concurrency=8)
        async def get(query: q.GetOrder) -> OrderView:  # type: ignore[name-defined]
            n = query.n
            return OrderView(order_id=query.order_id, total=n * n)

        async with bus:
            replies = await asyncio.gather(
                *(
                    bus.request(
                        q.GetOrder(order_id=f"o-{n}", n=n), timeout=TIMEOUT, reply_type=OrderView
                    )
                    for n in range(50)
                )
            )
            metrics = bus.metrics
            assert metrics is not None
            assert metrics.replies_dropped == {}
        assert [(r.order_id, r.total) for r in replies] == [(f"o-{n}", n * n) for n in range(50)]

    async def test_requests_are_ordinary_events_and_only_responders_reply(
        self, harness: Harness
    ) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus(metrics=True)
        audited: list[tuple[str, bool]] = []
        handled: list[str] = []

        @bus.responder(group="orders-api")
        async def get(query: q.GetOrder) -> str:  # type: ignore[name-defined]
            handled.append(query.order_id)
            return "ok"

        @bus.subscribe(q.stream, "#", group="audit")
        async def audit(envelope: Envelope) -> str:  # a return value of a subscriber: ignored
            audited.append((envelope.data["order_id"], "replyto" in envelope.extensions))
            return "not a reply"

        async with bus:
            assert await bus.request(q.GetOrder(order_id="asked"), timeout=TIMEOUT) == "ok"
            await bus.publish(q.GetOrder(order_id="told"))  # no replyto: handled, not replied
            await until(lambda: len(audited) == 2 and len(handled) == 2, what="both events")
            await settle()
            metrics = bus.metrics
            assert metrics is not None
            assert metrics.replies_dropped == {}, "one reply only: the responder's"
        assert sorted(audited) == [("asked", True), ("told", False)]
        assert sorted(handled) == ["asked", "told"]

    async def test_a_responders_own_failed_request_is_passed_on(self, harness: Harness) -> None:
        offers_request_reply(harness)
        q = queries(unique())
        bus = harness.bus()

        @bus.responder(group="counts")
        async def count(query: q.CountOrders) -> int:  # type: ignore[name-defined]
            raise NotFound(f"customer {query.customer_id} is unknown")

        @bus.responder(group="orders-api")
        async def get(query: q.GetOrder) -> int:  # type: ignore[name-defined]
            return await bus.request(
                q.CountOrders(customer_id=query.order_id), timeout=TIMEOUT, reply_type=int
            )

        async with bus:
            with pytest.raises(RequestFailed) as caught:
                await bus.request(q.GetOrder(order_id="c-9"), timeout=TIMEOUT)
        assert caught.value.code == "not_found"
        assert caught.value.error_message == "customer c-9 is unknown"
        assert caught.value.request_type == "order.get"

    async def test_a_reply_to_a_requester_that_is_gone_harms_nobody(self, harness: Harness) -> None:
        """The requesting bus stops while its request is being answered: the reply has
        nowhere to go, and the responder goes on answering others."""
        offers_request_reply(harness)
        q = queries(unique())
        responder = harness.bus()
        release = asyncio.Event()
        started = asyncio.Event()

        @responder.responder(group="orders-api")
        async def get(query: q.GetOrder) -> str:  # type: ignore[name-defined]
            if query.order_id == "slow":
                started.set()
                await release.wait()
            return f"answer to {query.order_id}"

        async with responder:
            gone = harness.bus()
            async with gone:
                asking = asyncio.ensure_future(
                    gone.request(q.GetOrder(order_id="slow"), timeout=TIMEOUT)
                )
                await asyncio.wait_for(started.wait(), TIMEOUT)
                asking.cancel()
            release.set()  # the reply goes to a bus that stopped
            later = harness.bus()
            async with later:
                reply = await later.request(q.GetOrder(order_id="after"), timeout=TIMEOUT)
            assert reply == "answer to after"
            assert responder.health().ok, responder.health().reasons()
        assert asking.cancelled()
