"""`eventbus dlq` on 10 000 dead letters, on every broker: list (streamed, filtered), show,
replay (filtered, dry run), purge (asked, `--yes`); and a replayed event meeting an Inbox.

The dead letters are written straight into the group's dead-letter destination with the
broker's own client (as eventbus writes them), so 10 000 take a few seconds. The CLI runs
in a subprocess (`tests.unit.dlq_probe`, which watches the listing); on memory:// it runs
in this process, where the memory broker lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from eventbus import Context, Event, EventBus, Inbox, Reject, RetryPolicy
from eventbus.adapters.memory import memory_state
from eventbus.cli import main
from eventbus.deadletter import DeadLetterFilter, parse_since
from eventbus.log import configure
from eventbus.protocol import DeadLetter
from eventbus.testing.conformance import unique, until, wait_dead
from eventbus.wire import to_amqp, to_kafka_headers

from .dlq_probe import REPORT, run_in_process

ROOT = Path(__file__).resolve().parents[2]
RABBITMQ_URL = os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
KAFKA_URL = os.environ.get("EVENTBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092")

N = 10_000
TYPES = ("order.created", "order.paid", "payment.failed", "order.shipped")
NOW = datetime.now(UTC)


# --- the dead letters ----------------------------------------------------------------------


def letter_id(i: int) -> str:
    return f"dl-{i:05d}"


def type_of(i: int) -> str:
    return TYPES[i % 4]


def recent(i: int) -> bool:
    """The second half was dead-lettered 10 minutes ago, the first half 2 days ago."""
    return i >= N // 2


def needle(i: int) -> bool:
    """40 bodies carry a note with the word `needle`."""
    return i % 250 == 3


def rejected(i: int) -> bool:
    """A third were rejected (`eventbus.Reject: cannot ship o-<i>`), the rest failed."""
    return i % 3 == 0


def body_of(i: int) -> bytes:
    event: dict[str, Any] = {"order_id": f"o-{i}", "n": i}
    if needle(i):
        event["note"] = f"a needle in {i}"
    return json.dumps(event).encode()


def attributes_of(i: int) -> dict[str, str]:
    return {
        "id": letter_id(i),
        "type": type_of(i),
        "source": "tests.dlq",
        "specversion": "1.0",
        "time": "2024-05-01T12:00:00Z",
        "datacontenttype": "application/json",
        "partitionkey": f"k{i % 50}",
    }


def info_of(i: int, stream: str, group: str) -> dict[str, str]:
    """The headers eventbus adds when it dead-letters (DESIGN §3.5)."""
    at = NOW - (timedelta(minutes=10) if recent(i) else timedelta(days=2))
    kind, message = (
        ("eventbus.Reject", f"cannot ship o-{i}")
        if rejected(i)
        else (
            "ValueError",
            "bad total",
        )
    )
    return {
        "x-original-stream": stream,
        "x-original-type": type_of(i),
        "x-original-group": group,
        "x-exception-type": kind,
        "x-exception-message": message,
        "x-exception-stacktrace": f"Traceback (most recent call last):\n  {kind}: {message}",
        "x-attempts": "3",
        "x-dead-lettered-at": (at + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
    }


def reason_of(i: int) -> str:
    info = info_of(i, "s", "g")
    return f"{info['x-exception-type']}: {info['x-exception-message']}"


def letters_where(keep: Any) -> list[str]:
    return [letter_id(i) for i in range(N) if keep(i)]


# --- the brokers ---------------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    out: str
    err: str
    probe: dict[str, int]

    def ids(self) -> list[str]:
        return [json.loads(line)["id"] for line in self.out.splitlines()]


class Place:
    """One broker under test: its URL, how to put dead letters straight into a group's
    dead-letter destination, how to run `eventbus`, and clean-up."""

    name = ""
    url = ""
    #: the most dead letters the adapter may hold beyond those it handed out (memory://
    #: keeps its dead letters in memory anyway: its listing copies none)
    held_bound = 0

    def __init__(self) -> None:
        self.streams: list[str] = []

    def bus(self) -> EventBus:
        return EventBus(self.url)

    def seed(self, stream: str, group: str) -> None:
        """The group (subscribed once, so its topology exists) and N dead letters."""
        self.streams.append(stream)

        async def subscribe() -> None:
            bus = self.bus()

            @bus.subscribe(stream, "#", group=group)
            async def handle(envelope: Any) -> None:
                raise AssertionError("no event is published in these tests")

            async with bus:
                pass

        asyncio.run(subscribe())
        self.inject(stream, group)

    def inject(self, stream: str, group: str) -> None:
        raise NotImplementedError

    def run(self, *args: str, stdin: str = "") -> Ran:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp, "report.json")
            done = subprocess.run(
                [sys.executable, "-m", "tests.unit.dlq_probe", *args],
                cwd=ROOT,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, REPORT: str(report)},
            )
            probe = json.loads(report.read_text()) if report.exists() else {}
        return Ran(done.returncode, done.stdout, done.stderr, probe)

    def dlq(self, action: str, stream: str, group: str, *more: str, stdin: str = "") -> Ran:
        where = ("--url", self.url, "--stream", stream, "--group", group)
        return self.run("dlq", action, *where, *more, stdin=stdin)

    def list_streamed(self, stream: str, group: str) -> Ran:
        return self.dlq("list", stream, group, "--json")

    def left(self, stream: str, group: str) -> list[str]:
        """The ids of the dead letters of a group now, as listed (oldest first)."""

        async def listing() -> list[str]:
            async with self.bus() as bus:
                return [d.attributes["id"] async for d in bus.dead_letters(stream, group)]

        return asyncio.run(listing())

    def handled(self, stream: str, group: str, count: int) -> list[tuple[str, int]]:
        """Run the group until it handled `count` events: their (id, attempt)."""
        seen: list[tuple[str, int]] = []

        async def consume() -> None:
            bus = self.bus()

            @bus.subscribe(stream, "#", group=group)
            async def handle(envelope: Any, ctx: Context) -> None:
                seen.append((envelope.id, ctx.attempt))

            async with bus:
                await until(lambda: len(seen) >= count, timeout=120, what=f"{count} events")

        asyncio.run(consume())
        return seen

    def cleanup(self) -> None:
        pass


class Memory(Place):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.broker = unique("dlq")
        self.url = f"memory://{self.broker}"

    def inject(self, stream: str, group: str) -> None:
        memory_state(self.broker).dead[(stream, group)] = [
            DeadLetter(
                stream=stream,
                group=group,
                body=body_of(i),
                headers={
                    **{f"ce-{k}": v for k, v in attributes_of(i).items()},
                    **info_of(i, stream, group),
                },
                attributes=attributes_of(i),
                key=f"k{i % 50}",
                position=i,
            )
            for i in range(N)
        ]

    def run(self, *args: str, stdin: str = "") -> Ran:
        code, out, err, probe = run_in_process(list(args), stdin)
        return Ran(code, out, err, probe.report())


class RabbitMQ(Place):
    name = "rabbitmq"
    url = RABBITMQ_URL
    #: the pass's prefetch: the adapter's default `prefetch`
    held_bound = 200

    def inject(self, stream: str, group: str) -> None:
        import aiormq
        from pamqp import commands as spec

        async def publish() -> None:
            connection = await aiormq.connect(self.url)
            try:
                channel = await connection.channel(publisher_confirms=True)
                queue = f"{stream}.{group}.dlq"
                for start in range(0, N, 1000):
                    sends = []
                    for i in range(start, min(start + 1000, N)):
                        headers, content_type = to_amqp(attributes_of(i))
                        headers.update(info_of(i, stream, group))
                        headers["x-original-routing-key"] = type_of(i)
                        properties = spec.Basic.Properties(
                            content_type=content_type,
                            headers=headers,
                            delivery_mode=2,
                            message_id=letter_id(i),
                        )
                        sends.append(
                            channel.basic_publish(
                                body_of(i), routing_key=queue, properties=properties
                            )
                        )
                    await asyncio.gather(*sends)
            finally:
                await connection.close()

        asyncio.run(publish())

    def list_streamed(self, stream: str, group: str) -> Ran:
        """`list --json`, stopping to read halfway: the broker then holds at most the
        pass's prefetch unacknowledged (the CLI waits on the full pipe meanwhile)."""
        import pika

        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile("w+") as errors:
            report = Path(tmp, "report.json")
            args = ["dlq", "list", "--url", self.url, "--stream", stream, "--group", group]
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.unit.dlq_probe", *args, "--json"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env={**os.environ, REPORT: str(report)},
            )
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(N // 2)]
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            try:
                declared = connection.channel().queue_declare(f"{stream}.{group}.dlq", passive=True)
            finally:
                connection.close()
            unacked = N - int(declared.method.message_count or 0)  # at least the broker's unacked
            # the rest through the same buffered reader: `communicate` would read the pipe
            # past what `readline` already buffered, and lose those lines
            lines.append(proc.stdout.read())
            proc.wait(timeout=300)
            errors.seek(0)
            err = errors.read()
            probe = json.loads(report.read_text()) if report.exists() else {}
        assert unacked <= self.held_bound, f"{unacked} dead letters unacknowledged at once"
        return Ran(proc.returncode, "".join(lines), err, probe)

    def left(self, stream: str, group: str) -> list[str]:
        """What the queue holds, read with a plain client (and removed: the test ends)."""
        import aiormq

        async def drain() -> list[str]:
            connection = await aiormq.connect(self.url)
            ids: list[str] = []
            try:
                channel = await connection.channel()
                queue = f"{stream}.{group}.dlq"
                declared = await channel.queue_declare(queue, passive=True)
                total = int(declared.message_count or 0)
                done = asyncio.get_running_loop().create_future()

                async def take(message: Any) -> None:
                    ids.append(message.header.properties.message_id)
                    if len(ids) == total and not done.done():
                        done.set_result(None)

                if total:
                    await channel.basic_qos(prefetch_count=1000)
                    await channel.basic_consume(queue, take, no_ack=True)
                    await asyncio.wait_for(done, 120)
            finally:
                await connection.close()
            return ids

        return asyncio.run(drain())

    def cleanup(self) -> None:
        from tests.rabbitmq.support import delete_topology

        delete_topology(self.streams)


class Kafka(Place):
    name = "kafka"
    url = KAFKA_URL

    def __init__(self) -> None:
        super().__init__()
        from eventbus.adapters.kafka.dlq import BATCH

        #: the reader buffers at most 4 batches of its one partition, and hands one out
        self.held_bound = 5 * BATCH

    def inject(self, stream: str, group: str) -> None:
        from confluent_kafka import Producer

        producer = Producer(
            {"bootstrap.servers": self.url.removeprefix("kafka://"), "linger.ms": 20}
        )
        for i in range(N):
            headers: list[tuple[str, str | bytes | None]] = [
                *to_kafka_headers(attributes_of(i)),
                *((k, v.encode()) for k, v in info_of(i, stream, group).items()),
            ]
            while True:
                try:
                    producer.produce(
                        f"{stream}.{group}.dlq", body_of(i), f"k{i % 50}".encode(), headers=headers
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
        assert producer.flush(60) == 0

    def cleanup(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.url.removeprefix("kafka://")})
        suffixes = ("", ".billing.dlq", ".billing.replay")
        names = [f"{stream}{suffix}" for stream in self.streams for suffix in suffixes]
        for future in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # never created (nothing replayed)
                future.result()


@pytest.fixture(
    params=[
        pytest.param(Memory, id="memory"),
        pytest.param(RabbitMQ, id="rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param(Kafka, id="kafka", marks=pytest.mark.kafka),
    ]
)
def place(request: pytest.FixtureRequest) -> Iterator[Place]:
    made: Place = request.param()
    try:
        yield made
    finally:
        made.cleanup()


# --- the tests -----------------------------------------------------------------------------


def test_dlq_list_is_streamed_and_filtered_and_show_prints_one(place: Place) -> None:
    stream, group = unique("dlq"), "billing"
    place.seed(stream, group)

    conditions = ("--type", "order.*", "--since", "1h", "--contains", "needle", "--limit", "3")
    filtered = place.dlq("list", stream, group, *conditions, "--json")
    assert filtered.code == 0, filtered.err
    wanted = letters_where(lambda i: recent(i) and needle(i) and type_of(i) != "payment.failed")
    assert filtered.ids() == wanted[:3]

    shown = place.dlq("show", stream, group, letter_id(7321))
    assert shown.code == 0, shown.err
    assert "id:       dl-07321" in shown.out
    assert "type:     order.paid" in shown.out
    assert "reason:   ValueError: bad total" in shown.out
    assert "  x-exception-type: ValueError\n" in shown.out
    assert "  x-original-group: billing\n" in shown.out
    assert "    ValueError: bad total" in shown.out  # the stack trace, indented
    assert '\n    "order_id": "o-7321",\n    "n": 7321\n' in shown.out  # pretty JSON

    # the whole queue, last: every dead letter once, in order, after the listings above
    # stopped early (on RabbitMQ every listing moves each message it reads)
    listed = place.list_streamed(stream, group)
    assert listed.code == 0, listed.err
    assert listed.ids() == letters_where(lambda i: True)
    probe = listed.probe
    assert probe["yielded"] == N
    assert probe["ahead"] == 0, "a dead letter was read before the previous one was printed"
    assert probe["held"] <= place.held_bound < N, probe


def test_dlq_replay_and_purge_with_filters(place: Place) -> None:
    stream, group = unique("dlq"), "billing"
    place.seed(stream, group)
    filters = ("--type", "order.paid", "--since", "1h", "--limit", "100")
    chosen = letters_where(lambda i: recent(i) and type_of(i) == "order.paid")[:100]

    dry = place.dlq("replay", stream, group, *filters, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert dry.ids() == chosen
    assert f"would replay 100 dead letter(s) of {stream}.{group}.dlq (dry run)" in dry.err

    replayed = place.dlq("replay", stream, group, *filters)
    assert replayed.code == 0, replayed.err
    assert f"replayed 100 dead letter(s) to {stream}.{group}" in replayed.out
    handled = place.handled(stream, group, 100)
    assert sorted(handled) == [(i, 1) for i in chosen], "each replayed once, id kept"

    rejected_payments = letters_where(lambda i: type_of(i) == "payment.failed" and rejected(i))
    conditions = ("--type", "payment.failed", "--contains", "cannot ship")
    asked = place.dlq("purge", stream, group, *conditions, stdin="y\n")
    assert asked.code == 0, asked.err
    count = len(rejected_payments)
    assert f"purge {count} dead letter(s) from {stream}.{group}.dlq for good? [y/N]" in asked.err
    assert f"purged {count} dead letter(s) from {stream}.{group}.dlq\n" in asked.out

    gone = set(chosen) | set(rejected_payments)
    needles = [i for i in letters_where(needle) if i not in gone]
    forced = place.dlq("purge", stream, group, "--yes", "--contains", "needle")
    assert forced.code == 0, forced.err
    assert f"purged {len(needles)} dead letter(s)" in forced.out
    assert "[y/N]" not in forced.err

    gone |= set(needles)
    assert place.left(stream, group) == [i for i in letters_where(lambda i: True) if i not in gone]


def test_dlq_purge_declined_or_dry_run_changes_nothing() -> None:
    place = Memory()
    stream, group = unique("dlq"), "billing"
    place.seed(stream, group)
    declined = place.dlq("purge", stream, group, "--since", "1h", stdin="n\n")
    assert declined.code == 1
    assert f"purge {N // 2} dead letter(s) from {stream}.{group}.dlq for good? [y/N]" in (
        declined.err
    )
    assert "nothing purged" in declined.err
    unanswered = place.dlq("purge", stream, group, "--since", "1h")  # stdin at its end
    assert unanswered.code == 1
    dry = place.dlq("purge", stream, group, "--since", "1h", "--limit", "2", "--dry-run")
    assert dry.code == 0
    assert (
        dry.out.splitlines()[-1]
        == f"would purge 2 dead letter(s) of {stream}.{group}.dlq (dry run)"
    )
    assert dry.out.startswith(f"{letter_id(N // 2)}  {type_of(N // 2)}  key=k0  attempts=3  at=")
    missing = place.dlq("show", stream, group, "dl-nope")
    assert missing.code == 1
    assert f"no dead letter with id 'dl-nope' in {stream}.{group}.dlq" in missing.err
    empty = place.dlq("purge", stream, group, "--contains", "not in any of them")
    assert empty.code == 0
    assert f"no dead letter to purge in {stream}.{group}.dlq" in empty.out
    assert len(place.left(stream, group)) == N


def test_dlq_output_piped_shows_no_progress() -> None:
    """Replay and purge draw progress on a terminal only; piped, stderr stays clean."""
    place = Memory()
    stream, group = unique("dlq"), "billing"
    place.seed(stream, group)
    ran = place.dlq("purge", stream, group, "--yes", "--type", "order.created")
    assert ran.code == 0
    assert ran.err == ""
    assert ran.out == f"purged {N // 4} dead letter(s) from {stream}.{group}.dlq\n"


def test_dlq_filter_conditions() -> None:
    def dead(i: int) -> DeadLetter:
        return DeadLetter(
            "s", "g", body_of(i), info_of(i, "s", "g"), attributes_of(i), f"k{i % 50}", i
        )

    def chosen(**conditions: Any) -> list[int]:
        select = DeadLetterFilter.of(**conditions).selector()
        return [i for i in range(N) if select(dead(i))]

    assert chosen(types=["order.paid"]) == [i for i in range(N) if i % 4 == 1]
    assert chosen(types=["order.#"]) == [i for i in range(N) if i % 4 != 2]
    assert chosen(types=["payment.failed", "order.shipped"]) == [
        i for i in range(N) if i % 4 in (2, 3)
    ]
    assert chosen(since="1h") == [i for i in range(N) if recent(i)]
    assert chosen(since=(NOW - timedelta(days=3)).isoformat()) == list(range(N))
    assert chosen(contains="needle") == [i for i in range(N) if needle(i)]
    assert chosen(contains="cannot ship o-12") == [
        i for i in range(N) if rejected(i) and str(i).startswith("12")
    ]
    assert chosen(contains="Reject") == [i for i in range(N) if rejected(i)]
    assert chosen(types=["order.created"], since="1h", limit=2) == [5000, 5004]
    assert chosen(limit=0) == []
    assert DeadLetterFilter.of().everything
    assert not DeadLetterFilter.of(limit=5).everything
    unstamped = DeadLetter("s", "g", b"{}", {}, {"id": "x", "type": "t"})
    assert not DeadLetterFilter.of(since="1h").matches(unstamped)
    assert DeadLetterFilter.of(types=["t"]).matches(unstamped)
    assert parse_since("1h30m", NOW) == NOW - timedelta(minutes=90)
    assert parse_since("2d", NOW) == NOW - timedelta(days=2)
    assert parse_since("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    for bad in ("yesterday", "1x", "", "-1h"):
        with pytest.raises(ValueError, match="neither an ISO-8601 time"):
            parse_since(bad)
    with pytest.raises(ValueError, match="invalid pattern"):
        DeadLetterFilter.of(types=["order..paid"])


# --- the Inbox -----------------------------------------------------------------------------


def test_replayed_event_keeps_its_id_and_an_inbox_does_not_handle_it_twice(
    place: Place, tmp_path: Path
) -> None:
    """The handler recorded the event in its Inbox, then failed after the commit (a
    downstream call): the event was dead-lettered. Replayed, it arrives with the same id,
    and the Inbox skips it: the update ran once."""
    from eventbus.sourcing.sqlite import SqliteDatabase

    stream, group = unique("inbox"), "billing"
    place.streams.append(stream)

    class Charge(Event, stream=stream, type="charge.requested"):
        n: int

    path = str(tmp_path / "inbox.db")
    seen: list[tuple[str, bool]] = []

    async def phase(broken: bool, count: int, publish: bool) -> list[str]:
        db = SqliteDatabase(path)
        await db.open()
        inbox = Inbox(db, group=group)
        await inbox.setup()
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE IF NOT EXISTS charges (event_id TEXT)")
        bus = place.bus()

        @bus.subscribe(stream, "#", group=group, retry=RetryPolicy(attempts=1))
        async def charge(envelope: Any, ctx: Context) -> None:
            async def update(tx: Any) -> None:
                await tx.execute("INSERT INTO charges VALUES (?)", (envelope.id,))

            seen.append((envelope.id, await inbox.handle(envelope.id, update)))
            if broken:
                raise Reject("the receipt service is down (the charge was recorded)")

        try:
            async with bus:
                if publish:
                    for n in range(3):
                        await bus.publish(Charge(n=n), key=f"c{n}")
                await until(lambda: len(seen) >= count, what=f"{count} deliveries")
                if broken:
                    await wait_dead(bus, stream, group, 3)
            async with db.transaction() as tx:
                rows = await tx.fetchall("SELECT event_id FROM charges")
        finally:
            await db.close()
        return [row[0] for row in rows]

    asyncio.run(phase(broken=True, count=3, publish=True))
    first = [event_id for event_id, ran in seen]
    assert all(ran for _, ran in seen)

    replayed = place.dlq("replay", stream, group)
    assert replayed.code == 0, replayed.err
    assert f"replayed 3 dead letter(s) to {stream}.{group}" in replayed.out

    charges = asyncio.run(phase(broken=False, count=6, publish=False))
    again = seen[3:]
    assert sorted(event_id for event_id, _ in again) == sorted(first), "ids kept on replay"
    assert not any(ran for _, ran in again), "the Inbox handled a replayed event again"
    assert sorted(charges) == sorted(first), "one charge per event"


def test_dlq_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal (stdout and stderr), replay and purge draw a rich progress on stderr;
    the result line stays on stdout."""
    pytest.importorskip("rich")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    place = Memory()
    stream, group = unique("dlq"), "billing"
    place.seed(stream, group)
    out, err = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    where = ["--url", place.url, "--stream", stream, "--group", group]
    configure()  # (if nothing did yet) the log goes to the real stderr, not to `err`
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["dlq", "purge", *where, "--type", "order.created"])
    assert code == 0
    assert out.getvalue().splitlines()[-1] == (
        f"purged {N // 4} dead letter(s) from {stream}.{group}.dlq"
    )
    drawn = err.getvalue()
    assert f"counting {stream}.{group}.dlq" in drawn
    assert f"purging {stream}.{group}.dlq" in drawn
    assert "\x1b[" in drawn  # drawn for a terminal (and cleared: transient)
