"""Exactly-once subscriptions (`subscribe(..., exactly_once=True)`), on every broker: where
`Capabilities.transactions` says the broker can, a handler's `ctx.publish` events commit
with its settlement and never with a failed attempt; where it cannot, `bus.start()`
refuses the subscription, naming it.

No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

from collections import Counter

import pytest

from eventbus import ConfigurationError, Context, Reject, RetryPolicy

from .fixture import UsesHarness
from .harness import Harness, unique
from .support import make_events, settle, until, wait_dead

FAST = RetryPolicy(attempts=3, backoff=0.01, multiplier=1.0)


class ExactlyOnceTests(UsesHarness):
    """Transactional consume-transform-produce (see `AdapterTests`)."""

    async def test_a_broker_without_transactions_refuses_exactly_once(
        self, harness: Harness
    ) -> None:
        if harness.capabilities.transactions:
            pytest.skip("the broker offers transactions (the other tests of this section)")
        ev = make_events(unique())
        bus = harness.bus()

        @bus.subscribe(group="billing", exactly_once=True)
        async def bill(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            await ctx.publish(ev.Shipped(order_id=event.order_id))

        with pytest.raises(ConfigurationError, match=r"exactly_once=True .*billing"):
            await bus.start()
        assert not bus.running

    async def test_only_the_attempt_that_succeeds_publishes(self, harness: Harness) -> None:
        """Every order publishes one shipment per attempt, and the first attempt of each
        fails afterwards: downstream sees exactly one shipment per order, the one of the
        attempt that succeeded, caused by the order."""
        if not harness.capabilities.transactions:
            pytest.skip("the broker offers no transactions (refused: see the test above)")
        ev = make_events(unique())
        bus = harness.bus()
        shipped: list[tuple[int, int, str | None]] = []
        orders: dict[int, str] = {}

        @bus.subscribe(group="billing", exactly_once=True, retry=FAST)
        async def bill(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            orders[event.n] = ctx.envelope.id
            await ctx.publish(ev.Shipped(order_id=event.order_id, n=event.n), key=event.order_id)
            if ctx.attempt == 1:
                raise ConnectionError("the warehouse did not answer")

        @bus.subscribe(group="shipping")
        async def ship(event: ev.Shipped, ctx: Context) -> None:  # type: ignore[name-defined]
            shipped.append((event.n, ctx.attempt, ctx.envelope.causation_id))

        async with bus:
            await bus.publish_many(
                [(ev.Created(order_id=f"o-{n}", n=n), f"o-{n}") for n in range(20)]
            )
            await until(lambda: len(shipped) >= 20, timeout=60, what="one shipment per order")
            await settle()
        assert Counter(n for n, _, _ in shipped) == Counter(range(20)), shipped
        assert all(cause == orders[n] for n, _, cause in shipped)

    async def test_a_dead_lettered_event_publishes_nothing(self, harness: Harness) -> None:
        if not harness.capabilities.transactions:
            pytest.skip("the broker offers no transactions (refused: see the test above)")
        ev = make_events(unique())
        bus = harness.bus()
        shipped: list[int] = []

        @bus.subscribe(group="billing", exactly_once=True, retry=FAST)
        async def bill(event: ev.Created, ctx: Context) -> None:  # type: ignore[name-defined]
            await ctx.publish(ev.Shipped(order_id=event.order_id, n=event.n))
            if event.n == 1:
                raise Reject("order 1 cannot be billed")

        @bus.subscribe(group="shipping")
        async def ship(event: ev.Shipped) -> None:  # type: ignore[name-defined]
            shipped.append(event.n)

        async with bus:
            await bus.publish_many([ev.Created(order_id=f"o-{n}", n=n) for n in range(3)])
            [dead] = await wait_dead(bus, ev.stream, "billing", 1)
            await until(lambda: len(shipped) >= 2, timeout=60, what="the other two shipments")
            await settle()
        assert sorted(shipped) == [0, 2]
        assert "order 1 cannot be billed" in dead.reason
