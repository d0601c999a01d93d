"""A broker-neutral load for fault scenarios: keyed events published concurrently while a
group consumes them, and the figures that say whether a fault lost or reordered anything.

    load = Load(stream, scenario="leader-kill", broker="kafka-3")
    load.attach(consumer_bus)                  # before the bus starts: the consuming group
    async with consumer_bus, publisher_bus:   # may be one bus
        async with load.publishing(publisher_bus):
            await load.progress(500)           # events handled: the fault strikes mid-stream
            ...                                # kill / stop / restart brokers
            await load.progress(500)           # handling resumed, publishing goes on
        await load.drain()                     # every confirmed event handled
    figures = load.report()                    # one printed line + one JSON row
    figures.check(max_recovery_s=...)          # nothing lost, key order kept, bounded gap

Each of `keys` keys has its own publishing lane: sequence numbers 0, 1, 2, ... published
in that order, up to `window` of them in flight at once (each publish a task of its own,
created in sequence order), paced so that all lanes together publish about `rate` events
per second. A lane whose publishes stall stops issuing new ones (it never bursts to catch
up). The outcome of every publish is recorded: confirmed (`publish` returned), failed
(`PublishError`), or another exception (an error: a defect in a fault scenario).

The figures (`Figures`): published, confirmed, failed, handled (distinct events), lost
(confirmed but never handled: must be 0), duplicates (extra deliveries), order violations
(per key, on the handled sequence with duplicates removed, each step back counts), and
the recovery time: the longest gap between two newly handled events from the first one
on until handling caught up with the end of publishing. Failed publishes whose events were
handled anyway (stored, but the broker's confirmation did not arrive in time) are counted
as `stored_unconfirmed`: allowed, at-least-once.

`report()` prints the line and appends the JSON row to the file named by
`EVENTBUS_RELIABILITY_REPORT` (default `reliability.json` in the repository root), one
JSON object per line.

No `from __future__ import annotations`: the handler's `Envelope` annotation is read at
subscribe time.
"""

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eventbus import Envelope, EventBus, PublishError
from eventbus.testing.conformance import make_events, until

ROOT = Path(__file__).resolve().parents[2]
REPORT_ENV = "EVENTBUS_RELIABILITY_REPORT"
#: keys of the JSON row, in this order (extra figures follow them)
ROW_KEYS = (
    "scenario",
    "broker",
    "published",
    "confirmed",
    "failed",
    "handled",
    "lost",
    "duplicates",
    "order_violations",
    "recovery_s",
)


def report_path() -> Path:
    """Where `report()` appends its rows."""
    return Path(os.environ.get(REPORT_ENV) or ROOT / "reliability.json")


@dataclass(frozen=True)
class Figures:
    """What one scenario published, what its group handled, and what went wrong."""

    scenario: str
    broker: str
    published: int
    confirmed: int
    failed: int
    handled: int
    lost: int
    duplicates: int
    order_violations: int
    #: the longest time no new event was handled while events were being published (s)
    recovery_s: float
    #: publishes that raised PublishError but whose events were handled anyway
    stored_unconfirmed: int = 0
    #: publishes that raised anything but PublishError (type name -> count)
    errors: dict[str, int] = field(default_factory=dict)
    #: the longest time no publish was confirmed while publishing (s)
    publish_gap_s: float = 0.0
    #: the longest any single publish took to return or raise (s)
    slowest_publish_s: float = 0.0
    #: seconds of publishing
    duration_s: float = 0.0
    #: what happened when, seconds after publishing started (`Load.note`)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary a scenario prints."""
        errors = f" errors={self.errors}" if self.errors else ""
        return (
            f"[{self.scenario} on {self.broker}] published={self.published} "
            f"confirmed={self.confirmed} failed={self.failed} handled={self.handled} "
            f"lost={self.lost} duplicates={self.duplicates} "
            f"order_violations={self.order_violations} recovery_s={self.recovery_s:.2f} "
            f"publish_gap_s={self.publish_gap_s:.2f} "
            f"slowest_publish_s={self.slowest_publish_s:.2f} "
            f"stored_unconfirmed={self.stored_unconfirmed} "
            f"duration_s={self.duration_s:.1f}{errors}"
        )

    def row(self) -> dict[str, Any]:
        """The JSON row: the `ROW_KEYS` first, then the extra figures."""
        values = asdict(self)
        return {**{k: values.pop(k) for k in ROW_KEYS}, **values}

    def check(
        self,
        *,
        max_recovery_s: float,
        max_publish_s: float | None = None,
        min_confirmed: int = 1,
    ) -> None:
        """The assertions every fault scenario makes: nothing confirmed is lost, the key
        order holds, no publish failed with anything but PublishError, the group never
        stood still for longer than `max_recovery_s`, and (if given) no publish took
        longer than `max_publish_s` to return or raise."""
        assert self.confirmed >= min_confirmed, f"too few confirmed publishes: {self.line()}"
        assert self.lost == 0, f"confirmed events were lost: {self.line()}"
        assert self.order_violations == 0, f"per-key order broken: {self.line()}"
        assert not self.errors, f"publishes failed with non-PublishError: {self.line()}"
        assert self.recovery_s <= max_recovery_s, (
            f"handling stood still for {self.recovery_s:.1f}s (> {max_recovery_s}s): {self.line()}"
        )


class Load:
    """Keyed publishing lanes on one stream and a consuming group that records what it
    handles; see the module docstring."""

    def __init__(
        self,
        stream: str,
        *,
        scenario: str,
        broker: str,
        keys: int = 32,
        rate: float = 400.0,
        window: int = 4,
        group: str = "load",
        concurrency: int = 8,
    ) -> None:
        if keys < 1 or window < 1 or rate <= 0:
            raise ValueError("keys and window must be >= 1 and rate > 0")
        self.events = make_events(stream)
        self.stream = stream
        self.scenario = scenario
        self.broker = broker
        self.keys = [f"k{i:02d}" for i in range(keys)]
        self.rate = rate
        self.window = window
        self.group = group
        self.concurrency = concurrency
        #: (key, n) -> "pending" | "confirmed" | "failed" | "error"
        self.outcomes: dict[tuple[str, int], str] = {}
        #: every delivery, in the order the handler saw them, and when (monotonic clock:
        #: one clock for every process of the machine)
        self.deliveries: list[tuple[str, int]] = []
        self.delivered_at: list[float] = []
        #: when each distinct event was handled the first time
        self.first_handled_at: list[float] = []
        self._seen: set[tuple[str, int]] = set()
        self.confirmed_at: list[float] = []
        self.errors: Counter[str] = Counter()
        self.slowest_publish = 0.0
        #: a few PublishError texts (what the caller was told)
        self.failure_texts: list[str] = []
        self.notes: list[tuple[float, str]] = []
        self._stop = asyncio.Event()
        self._lanes: list[asyncio.Task[None]] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        #: the buses this load consumes and publishes on (for `status`)
        self._buses: dict[str, EventBus] = {}

    # --- consuming ------------------------------------------------------------------------

    def attach(self, bus: EventBus, **options: Any) -> None:
        """Subscribe the recording handler (group `self.group`) on `bus`, before it starts;
        `options` go to `bus.subscribe` (adapter options included)."""

        async def handle(envelope: Envelope) -> None:
            self.record(envelope.key or "", int(envelope.data["n"]))

        bus.subscribe(
            self.stream,
            "order.created",
            group=self.group,
            concurrency=self.concurrency,
            **options,
        )(handle)
        self._buses["consumer"] = bus

    def record(self, key: str, n: int, at: float | None = None) -> None:
        """One delivery of event `n` of `key`, handled `at` (`time.monotonic()`, default
        now): the attached handler's, or one a consumer in another process reported."""
        at = time.monotonic() if at is None else at
        item = (key, n)
        self.deliveries.append(item)
        self.delivered_at.append(at)
        if item not in self._seen:
            self._seen.add(item)
            self.first_handled_at.append(at)

    @property
    def handled(self) -> int:
        """Distinct events handled so far."""
        return len(self._seen)

    async def progress(self, count: int, timeout: float = 60.0, what: str = "") -> float:
        """Wait until `count` more distinct events are handled than now; -> seconds it took."""
        target = self.handled + count
        started = time.monotonic()
        try:
            await until(lambda: self.handled >= target, timeout=timeout)
        except AssertionError:
            what = what or f"{count} more handled events"
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} "
                f"({self.handled} of {target}); {self.status()}"
            ) from None
        return time.monotonic() - started

    def status(self) -> str:
        """Where the load stands now, for a failure message: the publishes' outcomes,
        seconds since the last confirm and the last handled event, and what each bus's
        health says is missing (a group not attached, a lost connection)."""
        now = time.monotonic()
        states = Counter(self.outcomes.values())
        parts = [
            "publishes " + ", ".join(f"{k}={v}" for k, v in sorted(states.items())),
            f"last confirm {now - self.confirmed_at[-1]:.1f}s ago" if self.confirmed_at else "",
            f"last handled {now - self.delivered_at[-1]:.1f}s ago" if self.delivered_at else "",
        ]
        for role, bus in self._buses.items():
            health = bus.health()
            reasons = "; ".join(health.reasons()) or "ok"
            parts.append(f"{role} bus: {reasons}, {health.reconnects} reconnects")
        return ", ".join(part for part in parts if part)

    async def drain(self, timeout: float = 120.0) -> None:
        """Wait until every confirmed event has been handled (fails naming how many not)."""

        def missing() -> int:
            return sum(
                1
                for item, state in self.outcomes.items()
                if state == "confirmed" and item not in self._seen
            )

        try:
            await until(lambda: missing() == 0, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for every confirmed event to be handled "
                f"({missing()} not); {self.status()}"
            ) from None

    # --- publishing -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def publishing(self, bus: EventBus, stop_timeout: float = 180.0) -> AsyncIterator["Load"]:
        """Publish on every lane while the block runs; on leaving it, stop issuing new
        publishes and wait (up to `stop_timeout`) until every publish in flight has its
        outcome: a publish that never returns is a hang and fails the scenario."""
        self._stop.clear()
        self.started_at = time.monotonic()
        self._buses.setdefault("publishing", bus)
        self._lanes = [asyncio.create_task(self._lane(bus, key)) for key in self.keys]
        try:
            yield self
        finally:
            self._stop.set()
            done, pending = await asyncio.wait(self._lanes, timeout=stop_timeout)
            for task in pending:
                task.cancel()
            self.stopped_at = time.monotonic()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise AssertionError("a publishing lane failed") from task.exception()
            if pending:
                hung = sum(1 for state in self.outcomes.values() if state == "pending")
                raise AssertionError(
                    f"{hung} publishes had no outcome {stop_timeout}s after publishing "
                    "stopped (a publish hangs)"
                )

    async def _lane(self, bus: EventBus, key: str) -> None:
        interval = len(self.keys) / self.rate
        loop = asyncio.get_running_loop()
        in_flight: deque[asyncio.Task[None]] = deque()
        next_at = loop.time()
        for n in itertools.count():
            if self._stop.is_set():
                break
            self.outcomes[(key, n)] = "pending"
            in_flight.append(asyncio.create_task(self._publish(bus, key, n)))
            while len(in_flight) >= self.window:
                await in_flight.popleft()
            next_at = max(next_at + interval, loop.time())
            with contextlib.suppress(TimeoutError):  # pacing; a stop ends the wait at once
                await asyncio.wait_for(self._stop.wait(), timeout=next_at - loop.time())
        await asyncio.gather(*in_flight)

    async def _publish(self, bus: EventBus, key: str, n: int) -> None:
        started = time.monotonic()
        try:
            await bus.publish(self.events.Created(order_id=key, n=n), key=key)
        except PublishError as exc:
            self.outcomes[(key, n)] = "failed"
            if len(self.failure_texts) < 5:
                self.failure_texts.append(str(exc))
        except Exception as exc:
            self.outcomes[(key, n)] = "error"
            self.errors[type(exc).__name__] += 1
            if len(self.failure_texts) < 5:
                self.failure_texts.append(f"{type(exc).__name__}: {exc}")
        else:
            self.outcomes[(key, n)] = "confirmed"
            self.confirmed_at.append(time.monotonic())
        finally:
            self.slowest_publish = max(self.slowest_publish, time.monotonic() - started)

    def note(self, what: str) -> None:
        """Remember a moment of the scenario (a kill, a restart) for the report."""
        self.notes.append((time.monotonic(), what))

    # --- figures --------------------------------------------------------------------------

    def figures(self) -> Figures:
        """The figures of the run so far (call after `publishing` and `drain`)."""
        states = Counter(self.outcomes.values())
        violations = len(self.order_breaks())
        lost = sum(
            1
            for item, state in self.outcomes.items()
            if state == "confirmed" and item not in self._seen
        )
        stored_unconfirmed = sum(
            1 for item, state in self.outcomes.items() if state == "failed" and item in self._seen
        )
        started = self.started_at or 0.0
        stopped = self.stopped_at or time.monotonic()
        return Figures(
            scenario=self.scenario,
            broker=self.broker,
            published=len(self.outcomes),
            confirmed=states["confirmed"],
            failed=states["failed"],
            handled=len(self._seen),
            lost=lost,
            duplicates=len(self.deliveries) - len(self._seen),
            order_violations=violations,
            recovery_s=round(longest_gap(self.first_handled_at, stopped), 3),
            stored_unconfirmed=stored_unconfirmed,
            errors=dict(self.errors),
            publish_gap_s=round(longest_gap(self.confirmed_at, stopped), 3),
            slowest_publish_s=round(self.slowest_publish, 3),
            duration_s=round(stopped - started, 3),
            notes=[f"{at - started:.1f}s {what}" for at, what in self.notes],
        )

    def handled_sequences(self) -> dict[str, list[int]]:
        """Per key, the sequence numbers in the order they were handled (by time: records
        from several processes may arrive out of it)."""
        per_key: dict[str, list[int]] = defaultdict(list)
        timed = sorted(range(len(self.deliveries)), key=self.delivered_at.__getitem__)
        for key, n in (self.deliveries[i] for i in timed):
            per_key[key].append(n)
        return dict(per_key)

    def order_breaks(self) -> list[tuple[str, int, int]]:
        """The key-order violations of the handled sequence (see `order_breaks`)."""
        return order_breaks(self.handled_sequences())

    def report(self) -> Figures:
        """Print the scenario's line (and notes, and a few failure texts), append its JSON
        row to `report_path()`; -> the figures."""
        figures = self.figures()
        print(figures.line())
        for note in figures.notes:
            print(f"    {note}")
        for text in self.failure_texts[:3]:
            print(f"    publish failure: {text[:300]}")
        path = report_path()
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(figures.row()) + "\n")
        return figures


def order_breaks(sequences: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """`(key, a, b)` for every step back (`b` right after `a`, `b < a`) in each key's
    sequence with duplicates removed (first occurrences kept)."""
    breaks = []
    for key, ns in sorted(sequences.items()):
        first_seen = list(dict.fromkeys(ns))
        breaks += [(key, a, b) for a, b in itertools.pairwise(first_seen) if b < a]
    return breaks


def longest_gap(times: list[float], until_time: float) -> float:
    """The longest interval between consecutive `times` (sorted) from the first one until
    the first one at or after `until_time` (or the last one, if none is)."""
    if not times:
        return 0.0
    ordered = sorted(times)
    end = next((i for i, t in enumerate(ordered) if t >= until_time), len(ordered) - 1)
    window = ordered[: end + 1]
    return max((b - a for a, b in itertools.pairwise(window)), default=0.0)
