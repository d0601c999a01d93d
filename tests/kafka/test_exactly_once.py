"""Exactly-once consume-transform-produce on Kafka (`subscribe(..., exactly_once=True)`):
the events a handler publishes and the offsets past its event commit in one transaction;
a failed attempt's events, an aborted transaction and a fenced zombie's events never
become visible to `read_committed` consumers."""

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer

from eventbus import ConfigurationError, Context, Event, EventBus, RetryPolicy
from eventbus.adapters.kafka import KafkaSubscription
from eventbus.adapters.kafka.producer import Record
from eventbus.adapters.kafka.transactions import TransactionAborted
from eventbus.testing.conformance import unique, until

from .harness import BOOTSTRAP, KafkaHarness
from .support import committed_offsets

pytestmark = pytest.mark.kafka


def read_all(topic: str, expect: int, *, committed: bool = True, timeout: float = 60) -> list[Any]:
    """Every record of `topic` (read_committed unless `committed=False`), waiting until at
    least `expect` are there, then reading on until the end of every partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": unique("reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    found: list[Any] = []
    ended: set[int] = set()
    assigned: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(500, 0.2):
                error = message.error()
                if error is None:
                    found.append(message)
                    ended.discard(message.partition())
                elif error.code() == -191:  # _PARTITION_EOF
                    ended.add(int(message.partition() or 0))
            assigned = {tp.partition for tp in consumer.assignment()}
            if len(found) >= expect and assigned and ended >= assigned:
                break
    finally:
        consumer.close()
    return found


def values(records: list[Any]) -> list[str]:
    return [r.value().decode() for r in records]


async def test_outputs_and_offsets_commit_together_once_each_in_key_order(
    kafka: KafkaHarness,
) -> None:
    stream, out, group = unique("eos-in"), unique("eos-out"), unique("g")

    class Order(Event, stream=stream, type="order"):
        key: str
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        key: str
        n: int

    bus = kafka.bus(partitions=3)
    handled: list[int] = []

    @bus.subscribe(group=group, exactly_once=True, concurrency=4)
    async def bill(event: Order, ctx: Context) -> None:
        await ctx.publish(Invoice(key=event.key, n=event.n), key=event.key)
        handled.append(event.n)

    keys = [f"k{i}" for i in range(7)]
    total = 300
    async with bus:
        await bus.publish_many([(Order(key=keys[n % 7], n=n), keys[n % 7]) for n in range(total)])
        await until(lambda: len(handled) >= total, timeout=60, what="every order handled")
    kafka.extra_topics.add(out)
    records = read_all(out, total)
    invoices = [Invoice.model_validate_json(r.value()) for r in records]
    assert Counter(i.n for i in invoices) == Counter(range(total))  # each once
    per_key: dict[str, list[int]] = defaultdict(list)
    for invoice in invoices:
        per_key[invoice.key].append(invoice.n)
    for key, ns in per_key.items():
        assert ns == sorted(ns), f"key {key}: {ns}"
    # the invoices carry the chain: caused by their order
    assert all(r.headers() for r in records)
    offsets = committed_offsets(group, stream, 3)
    assert sum(max(o, 0) for o in offsets.values()) == total


async def test_a_failed_attempt_commits_none_of_its_events(kafka: KafkaHarness) -> None:
    stream, out, group = unique("eos-in"), unique("eos-out"), unique("g")

    class Order(Event, stream=stream, type="order"):
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        n: int
        attempt: int

    bus = kafka.bus(partitions=1)
    done: list[int] = []

    @bus.subscribe(group=group, exactly_once=True, retry=RetryPolicy(attempts=3, backoff=0.01))
    async def bill(event: Order, ctx: Context) -> None:
        await ctx.publish(Invoice(n=event.n, attempt=ctx.attempt))
        if ctx.attempt < 3 and event.n % 2 == 0:  # fails after publishing, twice
            raise ConnectionError("the ledger is down")
        done.append(event.n)

    async with bus:
        await bus.publish_many([Order(n=n) for n in range(20)])
        await until(lambda: len(done) >= 20, timeout=60, what="every order handled")
    kafka.extra_topics.add(out)
    invoices = [Invoice.model_validate_json(v) for v in values(read_all(out, 20))]
    assert sorted(i.n for i in invoices) == list(range(20))
    assert {i.attempt for i in invoices if i.n % 2 == 0} == {3}


async def test_dead_letters_and_delayed_retries_commit_with_the_offset(
    kafka: KafkaHarness,
) -> None:
    stream, out, group = unique("eos-in"), unique("eos-out"), unique("g")

    class Order(Event, stream=stream, type="order"):
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        n: int

    bus = kafka.bus(partitions=2)
    attempts: Counter[int] = Counter()
    retried = RetryPolicy(attempts=2, backoff=0.05, delayed=True)

    @bus.subscribe(group=group, exactly_once=True, retry=retried)
    async def bill(event: Order, ctx: Context) -> None:
        attempts[event.n] += 1
        await ctx.publish(Invoice(n=event.n))
        if event.n == 3:
            raise ValueError("never billable")  # retried once (delayed), then dead-lettered
        if event.n == 5 and ctx.attempt == 1:
            raise ValueError("billable on the second try")

    async with bus:
        await bus.publish_many([Order(n=n) for n in range(8)])
        await until(
            lambda: sum(attempts.values()) >= 10, timeout=60, what="every attempt, retries too"
        )
        letters: list[Any] = []

        async def dead_lettered() -> bool:
            letters[:] = [d async for d in bus.dead_letters(stream, group)]
            return len(letters) == 1

        deadline = time.monotonic() + 60
        while not await dead_lettered():
            assert time.monotonic() < deadline, "no dead letter of order 3"
            await asyncio.sleep(0.2)
        assert letters[0].envelope.data == {"n": 3}
        assert "never billable" in letters[0].reason
    kafka.extra_topics.add(out)
    invoices = sorted(Invoice.model_validate_json(v).n for v in values(read_all(out, 7)))
    assert invoices == [0, 1, 2, 4, 5, 6, 7]
    assert attempts[3] == 2 and attempts[5] == 2


async def test_a_fenced_zombie_commits_nothing_and_stops_its_bus(kafka: KafkaHarness) -> None:
    """Two instances with one `transactional_id`. The zombie handled ten orders without
    committing them yet (a long transaction interval) and hangs on the eleventh; the
    replacement starts, which fences the zombie's producer, and joins the group. The
    zombie's revoke tries to commit its ten orders: fenced, so it stops its bus and none
    of its invoices ever becomes visible; the replacement handles every order again."""
    stream, out, group = unique("eos-in"), unique("eos-out"), unique("g")

    class Order(Event, stream=stream, type="order"):
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        n: int
        by: str

    release = asyncio.Event()
    handled: dict[str, list[int]] = defaultdict(list)

    def instance(name: str, interval_ms: int) -> EventBus:
        bus = kafka.bus(partitions=1, revoke_timeout=1.0, transaction_interval_ms=interval_ms)

        @bus.subscribe(group=group, exactly_once=True, transactional_id=f"{group}-pod-0")
        async def bill(event: Order, ctx: Context) -> None:
            await ctx.publish(Invoice(n=event.n, by=name))
            if name == "zombie" and event.n >= 10:
                await release.wait()  # hangs (a zombie) after its first ten orders
            handled[name].append(event.n)

        return bus

    zombie, replacement = instance("zombie", 600_000), instance("replacement", 50)
    async with kafka.bus(partitions=1) as publisher:
        await publisher.publish_many([Order(n=n) for n in range(30)])
        await zombie.start()
        try:
            await until(lambda: len(handled["zombie"]) >= 10, timeout=60, what="zombie progress")
            await replacement.start()  # fences the zombie's producer, takes the partition
            await until(lambda: not zombie.running, timeout=60, what="the zombie bus stopping")
            await until(lambda: len(handled["replacement"]) >= 30, timeout=90, what="replacement")
        finally:
            release.set()
            await replacement.stop()
            await zombie.stop()
    kafka.extra_topics.add(out)
    invoices = [Invoice.model_validate_json(v) for v in values(read_all(out, 30))]
    assert sorted(i.n for i in invoices) == list(range(30))
    assert handled["zombie"][:10] == list(range(10))  # (its hung one may finish at the end)
    assert {i.by for i in invoices} == {"replacement"}  # nothing of the zombie's


async def test_transactional_id_without_exactly_once_is_refused(kafka: KafkaHarness) -> None:
    bus = kafka.bus()

    class Order(Event, stream=unique("eos-in"), type="order"):
        n: int

    @bus.subscribe(group=unique("g"), transactional_id="pod-0")
    async def bill(event: Order) -> None: ...

    with pytest.raises(ConfigurationError, match="transactional_id"):
        await bus.start()
    await bus.stop()


async def test_an_aborted_transaction_is_invisible_and_its_records_run_again(
    kafka: KafkaHarness,
) -> None:
    """The broker fails one commit (the test hook aborts it after the records were
    produced): read_uncommitted readers see the aborted invoices, read_committed ones
    see every invoice once, because the partition was rewound and ran again."""
    stream, out, group = unique("eos-in"), unique("eos-out"), unique("g")

    class Order(Event, stream=stream, type="order"):
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        n: int

    bus = kafka.bus(partitions=1, transaction_interval_ms=20)
    runs: Counter[int] = Counter()

    @bus.subscribe(group=group, exactly_once=True)
    async def bill(event: Order, ctx: Context) -> None:
        runs[event.n] += 1
        await ctx.publish(Invoice(n=event.n))

    aborted: list[int] = []

    def fail_once(records: Sequence[Record]) -> None:
        if not aborted and records:
            aborted.append(len(records))
            raise TransactionAborted("the test broke this commit")

    async with bus:
        [subscription] = bus._consumers
        assert isinstance(subscription, KafkaSubscription)
        transactions = subscription.consumer.transactions
        assert transactions is not None
        transactions.before_commit = fail_once
        await bus.publish_many([Order(n=n) for n in range(50)])
        await until(lambda: len(runs) >= 50 and bool(aborted), timeout=60, what="all orders")
        await until(
            lambda: committed_offsets(group, stream, 1)[0] == 50, timeout=60, what="the commit"
        )
        assert transactions.aborted == 1
    kafka.extra_topics.add(out)
    committed = [Invoice.model_validate_json(v).n for v in values(read_all(out, 50))]
    assert sorted(committed) == list(range(50))
    everything = values(read_all(out, 50 + aborted[0], committed=False))
    assert len(everything) == 50 + aborted[0]  # the aborted ones are in the log, unseen
    assert sum(runs.values()) == 50 + aborted[0]  # exactly those ran twice


async def test_members_joining_and_leaving_commit_each_output_once(kafka: KafkaHarness) -> None:
    """Rebalances under load: a revoked partition commits what finished in its last
    transaction before it is handed over; what did not finish is neither produced nor
    committed, and the next owner runs it."""
    stream, out, group = unique("eos-in"), unique("eos-out"), unique("g")

    class Order(Event, stream=stream, type="order"):
        key: str
        n: int

    class Invoice(Event, stream=out, type="invoice"):
        key: str
        n: int

    handled: list[tuple[str, int]] = []

    def member(name: str) -> EventBus:
        bus = kafka.bus(partitions=6, revoke_timeout=5.0)

        @bus.subscribe(group=group, exactly_once=True, concurrency=3)
        async def bill(event: Order, ctx: Context) -> None:
            await asyncio.sleep(0.001)
            await ctx.publish(Invoice(key=event.key, n=event.n), key=event.key)
            handled.append((name, event.n))

        return bus

    keys = [f"key-{i}" for i in range(12)]
    total = 3000
    first, second = member("first"), member("second")
    async with kafka.bus(partitions=6) as publisher:
        await first.start()
        try:
            for n in range(0, total, 300):
                await publisher.publish_many(
                    [(Order(key=keys[i % 12], n=i), keys[i % 12]) for i in range(n, n + 300)]
                )
                if n == 900:
                    await second.start()  # joins mid-stream
                if n == 2100:
                    await first.stop()  # leaves mid-stream
            await until(
                lambda: len({n for _, n in handled}) >= total, timeout=120, what="every order"
            )
        finally:
            await second.stop()
            await first.stop()
    kafka.extra_topics.add(out)
    invoices = [Invoice.model_validate_json(v) for v in values(read_all(out, total))]
    assert Counter(i.n for i in invoices) == Counter(range(total))
    per_key: dict[str, list[int]] = defaultdict(list)
    for invoice in invoices:
        per_key[invoice.key].append(invoice.n)
    assert all(ns == sorted(ns) for ns in per_key.values())
    assert {name for name, _ in handled} == {"first", "second"}
