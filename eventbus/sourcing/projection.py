"""Projections: handlers that build a read model from events, declared like subscriptions.

    summary = Projection("customer-summary", schema=[...DDL...], tables=["customers"])

    @summary.on
    async def created(event: OrderCreated, tx: Transaction) -> None:
        await tx.execute("INSERT INTO customers ... ON CONFLICT ...", (...))

A projection runs in one of two ways, with the same handlers:

- **from the store** (`catch_up` / `run`): reads `read_all` after its checkpoint and
  applies a batch plus the new checkpoint in one transaction, so each event is applied
  exactly once even if the process dies anywhere, or another runner runs it too (below);
- **from the bus** (`bind`): a subscription (group = the projection's name) that applies
  each event and records its id in the inbox in one transaction, so a redelivered event
  changes nothing.

`rebuild` empties the read model and replays the whole store; for a read model whose
updates per key are order-sensitive only within that key, both ways give the same rows.

**Several runners of one projection from the store** (processes, or tasks with their own
connections, on one database) are safe and share the work: each batch is applied by
exactly one of them. A batch's transaction first moves the checkpoint, with
`UPDATE projection_checkpoints SET position = <batch end> WHERE name = ? AND position =
<the checkpoint the runner read>` (the row is seeded with `INSERT ... ON CONFLICT DO
NOTHING` in the transaction of the first batch), and applies the events after. On
PostgreSQL that UPDATE's row lock makes a second runner wait until the first commits;
its UPDATE then matches no row (SQLite's `BEGIN IMMEDIATE` serialises them the same way).
A runner whose UPDATE matched no row lost the race: its transaction rolls back before a
handler ran, it logs `projection.checkpoint_moved` at debug, reloads the checkpoint and
goes on from there, so a runner that keeps losing is a standby that carries on when the
other stops. (`ProjectionConflict` signals the lost race internally; no caller sees it.)
`catch_up` counts only the events its runner applied.

**An event the read model cannot apply** (a handler raises: a value the database refuses,
a row that is not there, a bug) never stops a projection:

- from the store, the event is retried on its own under the projection's `RetryPolicy`
  (in-process, with backoff; `Reject` or an exception not in `retry.on` skips the
  retries). Then it is *parked*: a row in `projection_failures` (projection, position,
  event id, type, stream id, error, traceback, attempts, time) is written and the checkpoint
  moves past the event, in one transaction, and `projection.event_parked` is logged at
  error. Every later event still applies. `failures(db)` lists the parked events and
  `replay_failures(store, db)` applies them again once the cause is fixed (after the
  events that followed them: mind order-sensitive rows). The events before the failed one
  in its batch are committed first, so nothing else is held back.
  An `OSError` (a connection refused, a timeout) is not the event's fault: it is never
  parked, and neither is an event whose database stops answering: `run` backs off and
  tries again.
- from the bus, a handler's exception goes to the bus, whose retry policy and dead-letter
  queue apply (`bind(retry=...)`); nothing is swallowed here.

`run` never ends silently: a failing store or database is logged at error
(`projection.stalled`) and retried with backoff for as long as it fails; it ends when
`stop` is set or the task is cancelled, and what is not an `Exception` (a
`KeyboardInterrupt`, a `SystemExit`) is logged at critical (`projection.died`) and
raised from `run`, so the task's owner sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import traceback
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.event import Envelope, Event, validate_name
from eventbus.log import get_logger
from eventbus.retry import Reject, Retry, RetryPolicy
from eventbus.settings import redact_text
from eventbus.wire import now_rfc3339

from .codec import EventCodec
from .database import Database, Row, Transaction, create_schema, dump_tables
from .inbox import SCHEMA as INBOX_SCHEMA
from .inbox import handle_once
from .records import StoredEvent
from .store import EventStore

_log = get_logger()

CHECKPOINT_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS projection_checkpoints (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS projection_failures (
        name TEXT NOT NULL,
        position BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        stream_id TEXT NOT NULL,
        error TEXT NOT NULL,
        traceback TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        failed_at TEXT NOT NULL,
        PRIMARY KEY (name, position)
    )""",
)

#: how a projection retries an event it cannot apply before parking it (store-driven runs)
DEFAULT_PROJECTION_RETRY = RetryPolicy(attempts=3, backoff=0.1, max_backoff=5.0)


class ProjectionConflict(RuntimeError):
    """Another runner moved this projection's checkpoint from where this runner read it,
    so the batch's transaction rolls back. `catch_up` and `run` handle it themselves
    (they reload the checkpoint and go on: module docstring); no caller of theirs sees it."""

    def __init__(self, projection: str, expected: int, current: int) -> None:
        super().__init__(
            f"projection {projection!r} is run by another runner too "
            f"(its checkpoint moved from {expected} to {current})"
        )
        self.projection = projection
        self.expected = expected
        self.current = current


@dataclass(frozen=True, slots=True)
class FailedEvent:
    """A stored event a projection could not apply and skipped (a `projection_failures`
    row): where it is, what it is, why it failed and after how many attempts."""

    projection: str
    position: int
    event_id: str
    type: str
    stream_id: str
    error: str
    traceback: str
    attempts: int
    failed_at: str


class _ApplyFailed(Exception):
    """Internal: the handler of `events[index]` raised `error` (the transaction rolled back)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


@dataclass(frozen=True, slots=True)
class EventMeta:
    """Where an event came from: its envelope fields, and its store position when the
    projection reads the store (None when it comes from the bus)."""

    id: str
    type: str
    stream: str
    key: str | None
    time: str
    position: int | None = None

    @classmethod
    def of_stored(cls, stored: StoredEvent) -> EventMeta:
        return cls(stored.id, stored.type, stored.stream, stored.key, stored.time, stored.position)

    @classmethod
    def of_envelope(cls, envelope: Envelope) -> EventMeta:
        return cls(envelope.id, envelope.type, envelope.stream, envelope.key, envelope.time)


Handler = Callable[..., Awaitable[None]]


def _event_classes(annotation: Any) -> list[type[Event]]:
    origin = typing.get_origin(annotation)
    members = (
        typing.get_args(annotation)
        if origin is typing.Union or origin is types.UnionType
        else (annotation,)
    )
    classes = [m for m in members if isinstance(m, type) and issubclass(m, Event)]
    if not classes or len(classes) != len(members):
        raise TypeError(f"projection handler annotation {annotation!r}: expected Event classes")
    for cls in classes:
        if not cls.__event_type__ or not cls.__stream__:
            raise TypeError(f"{cls.__name__} has no stream/type")
    return classes


class Projection:
    """A read model's handlers, its tables and how it runs (see the module docstring).

    `retry`: how an event the read model cannot apply is retried before it is parked,
    when the projection reads the store (`catch_up`, `run`, `rebuild`); `delayed` retries
    do not apply there. From the bus, the subscription's policy (`bind(retry=...)`) rules.
    """

    def __init__(
        self,
        name: str,
        *,
        schema: Sequence[str] = (),
        tables: Sequence[str] = (),
        retry: RetryPolicy = DEFAULT_PROJECTION_RETRY,
    ) -> None:
        self.name = validate_name("projection name", name)
        self.schema = tuple(schema)
        self.tables = tuple(tables)
        if retry.delayed:
            raise ValueError("a projection retries in-process: RetryPolicy(delayed=False)")
        self.retry = retry
        self._handlers: dict[str, tuple[type[Event], Handler, bool]] = {}

    # --- declaring -------------------------------------------------------------------------

    def on(self, fn: Handler) -> Handler:
        """Decorator: `fn(event, tx)` or `fn(event, tx, meta)` for the annotated event types."""
        params = list(inspect.signature(fn).parameters.values())
        if len(params) not in (2, 3) or not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"projection handler {fn.__qualname__!r} must be `async def (event, tx)` or "
                "`async def (event, tx, meta)`"
            )
        hints = typing.get_type_hints(fn)
        for cls in _event_classes(hints.get(params[0].name)):
            if cls.__event_type__ in self._handlers:
                raise ValueError(f"projection {self.name!r} handles {cls.__event_type__} already")
            self._handlers[cls.__event_type__] = (cls, fn, len(params) == 3)
        return fn

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    @property
    def streams(self) -> frozenset[str]:
        return frozenset(cls.__stream__ for cls, _, _ in self._handlers.values())

    def codec(self) -> EventCodec:
        return EventCodec(cls for cls, _, _ in self._handlers.values())

    # --- applying --------------------------------------------------------------------------

    async def setup(self, db: Database) -> None:
        """Create the read-model tables, the checkpoint table and the inbox (idempotent)."""
        await create_schema(db, (*self.schema, *CHECKPOINT_SCHEMA, *INBOX_SCHEMA))

    async def apply(self, tx: Transaction, event: Event, meta: EventMeta) -> None:
        entry = self._handlers.get(meta.type)
        if entry is None:
            return
        _, fn, wants_meta = entry
        if wants_meta:
            await fn(event, tx, meta)
        else:
            await fn(event, tx)

    async def checkpoint(self, db: Database) -> int:
        """The store position this projection has applied up to (0: nothing yet)."""
        async with db.transaction() as tx:
            return await self._position(tx)

    async def _position(self, tx: Transaction) -> int:
        row = await tx.fetchone(
            "SELECT position FROM projection_checkpoints WHERE name = ?", (self.name,)
        )
        return int(row[0]) if row is not None else 0

    async def _claim(self, tx: Transaction, expected: int, position: int) -> None:
        """Move the checkpoint from `expected` to `position`, first thing in `tx`, or raise
        `ProjectionConflict` if it is not at `expected` (another runner moved it).

        A conditional UPDATE whose row count is checked, portable to both dialects: on
        PostgreSQL it waits for the row lock of a runner whose transaction holds the row,
        then re-checks `position` against the committed row; the lock is held to the end
        of `tx`, so a second runner waits instead of applying the same batch."""
        if expected == 0:  # the first batch: the row may not exist yet
            await tx.execute(
                "INSERT INTO projection_checkpoints (name, position) VALUES (?, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (self.name,),
            )
        moved = await tx.execute(
            "UPDATE projection_checkpoints SET position = ? WHERE name = ? AND position = ?",
            (position, self.name, expected),
        )
        if moved != 1:
            raise ProjectionConflict(self.name, expected, await self._position(tx))

    async def _commit(
        self, db: Database, codec: EventCodec, events: Sequence[StoredEvent], expected: int
    ) -> None:
        """Apply `events` and move the checkpoint past the last one, in one transaction;
        `_ApplyFailed` names the event whose handler raised (nothing is committed then),
        `ProjectionConflict` says another runner moved the checkpoint (no handler ran)."""
        async with db.transaction() as tx:
            await self._claim(tx, expected, events[-1].position)
            for index, stored in enumerate(events):
                if stored.type in self._handlers:
                    try:
                        await self.apply(tx, codec.decode(stored), EventMeta.of_stored(stored))
                    except Exception as exc:
                        raise _ApplyFailed(index, exc) from exc

    async def catch_up(
        self,
        store: EventStore,
        db: Database,
        codec: EventCodec | None = None,
        *,
        batch_size: int = 500,
        retry: RetryPolicy | None = None,
    ) -> int:
        """Apply every stored event after the checkpoint; returns how many this runner
        applied (events it parked as failed included; not those another runner of the
        projection applied meanwhile). `retry` overrides the projection's policy."""
        return await self._catch_up(
            store, db, codec or self.codec(), batch_size, retry or self.retry, None
        )

    async def _catch_up(
        self,
        store: EventStore,
        db: Database,
        codec: EventCodec,
        batch_size: int,
        retry: RetryPolicy,
        stop: asyncio.Event | None,
    ) -> int:
        done = 0
        position = await self.checkpoint(db)
        limit = batch_size
        #: an event that failed inside a batch (first attempt), retried alone once the
        #: events before it are committed
        failing: tuple[int, Exception] | None = None
        while stop is None or not stop.is_set():
            batch = await store.read_all(position + 1, limit)
            if not batch:
                break
            limit = batch_size
            head = batch[0]
            try:
                if failing is not None and failing[0] == head.position:
                    error = failing[1]
                else:
                    try:
                        await self._commit(db, codec, batch, position)
                        position = batch[-1].position
                        done += len(batch)
                        continue
                    except _ApplyFailed as failed:
                        if failed.index:  # commit the events before it first, on their own
                            limit = failed.index
                            failing = (batch[failed.index].position, failed.error)
                            continue
                        error = failed.error
                failing = None
                if not await self._retry_or_park(db, codec, head, position, error, retry, stop):
                    break  # stopped while waiting to retry: the event is tried again next run
                position = head.position
                done += 1
            except ProjectionConflict as lost:  # another runner took it: follow its checkpoint
                _log.debug(
                    "projection.checkpoint_moved", projection=self.name,
                    expected=lost.expected, current=lost.current,
                )  # fmt: skip
                position = await self.checkpoint(db)
                failing = None
        return done

    async def _retry_or_park(
        self,
        db: Database,
        codec: EventCodec,
        stored: StoredEvent,
        expected: int,
        error: Exception,
        retry: RetryPolicy,
        stop: asyncio.Event | None,
    ) -> bool:
        """Retry the event the read model refused, alone, then park it; returns False if
        `stop` was set meanwhile (nothing parked, the checkpoint unmoved).
        `ProjectionConflict` if another runner moved the checkpoint meanwhile."""
        attempt = 1
        while True:
            if isinstance(error, OSError):  # a connection or a timeout: not the event's fault
                raise error
            if isinstance(error, Reject) or not retry.retries(error) or attempt >= retry.attempts:
                break
            delay = retry.delay(attempt)
            if isinstance(error, Retry) and error.after is not None:
                delay = error.after
            _log.warning(
                "projection.apply_failed", **self._describe(stored), attempt=attempt,
                error=_reason(error), retry_in=delay,
            )  # fmt: skip
            if stop is not None:
                await _wait(stop, delay)
                if stop.is_set():
                    return False
            else:
                await asyncio.sleep(delay)
            attempt += 1
            try:
                await self._commit(db, codec, [stored], expected)
                return True
            except _ApplyFailed as again:
                error = again.error
        await self._park(db, stored, expected, error, attempt)
        return True

    async def _park(
        self, db: Database, stored: StoredEvent, expected: int, error: Exception, attempts: int
    ) -> None:
        """Record `stored` as failed and move the checkpoint past it, in one transaction.
        Reading the checkpoint first: a database that does not answer raises here, and
        the event is not parked for what was the database's fault."""
        await self.checkpoint(db)
        reason = _reason(error)
        trace = redact_text("".join(traceback.format_exception(error)))[-8000:]
        async with db.transaction() as tx:
            await self._claim(tx, expected, stored.position)
            await tx.execute(
                "INSERT INTO projection_failures (name, position, event_id, type, stream_id, "
                "error, traceback, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (name, position) DO UPDATE SET error = excluded.error, "
                "traceback = excluded.traceback, attempts = excluded.attempts, "
                "failed_at = excluded.failed_at",
                (self.name, stored.position, stored.id, stored.type, stored.stream_id,
                 reason, trace, attempts, now_rfc3339()),
            )  # fmt: skip
        _log.error(
            "projection.event_parked", **self._describe(stored), attempts=attempts,
            error=reason, exc_info=error,
        )  # fmt: skip

    def _describe(self, stored: StoredEvent) -> dict[str, Any]:
        return {
            "projection": self.name,
            "event_id": stored.id,
            "position": stored.position,
            "type": stored.type,
            "stream_id": stored.stream_id,
        }

    async def failures(self, db: Database) -> list[FailedEvent]:
        """The events this projection parked because it could not apply them, oldest first."""
        async with db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT position, event_id, type, stream_id, error, traceback, attempts, "
                "failed_at FROM projection_failures WHERE name = ? ORDER BY position",
                (self.name,),
            )
        return [
            FailedEvent(self.name, int(p), i, t, sid, e, tb, int(n), at)
            for (p, i, t, sid, e, tb, n, at) in rows
        ]

    async def replay_failures(
        self, store: EventStore, db: Database, codec: EventCodec | None = None
    ) -> int:
        """Apply the parked events again, oldest first, each in its own transaction that
        also deletes its failure row; returns how many applied. One that fails again stays
        parked with the new error. They apply after the events that followed them."""
        codec = codec or self.codec()
        applied = 0
        for failure in await self.failures(db):
            found = await store.read_all(failure.position, 1)
            try:
                if not found or found[0].id != failure.event_id:
                    raise LookupError(f"event {failure.event_id} is not at {failure.position}")
                stored = found[0]
                async with db.transaction() as tx:
                    await self.apply(tx, codec.decode(stored), EventMeta.of_stored(stored))
                    await tx.execute(
                        "DELETE FROM projection_failures WHERE name = ? AND position = ?",
                        (self.name, failure.position),
                    )
            except Exception as exc:
                async with db.transaction() as tx:
                    await tx.execute(
                        "UPDATE projection_failures SET error = ?, attempts = attempts + 1, "
                        "failed_at = ? WHERE name = ? AND position = ?",
                        (_reason(exc), now_rfc3339(), self.name, failure.position),
                    )
                _log.error(
                    "projection.replay_failed", projection=self.name,
                    event_id=failure.event_id, position=failure.position, error=_reason(exc),
                )  # fmt: skip
                continue
            applied += 1
        return applied

    async def run(
        self,
        store: EventStore,
        db: Database,
        codec: EventCodec | None = None,
        *,
        stop: asyncio.Event | None = None,
        poll_interval: float = 0.05,
        max_backoff: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Follow the store until `stop` is set or the task is cancelled.

        Events the read model cannot apply are retried, then parked (module docstring).
        A failing store or database is logged at error and retried with backoff (up to
        `max_backoff` seconds). Another runner of the projection is no error: the two
        share the batches (module docstring). Anything that is not an `Exception` is
        logged at critical and raised: the task ends only loudly."""
        stop = stop or asyncio.Event()
        codec = codec or self.codec()
        policy = retry or self.retry
        backoff = poll_interval
        failing = False
        try:
            while not stop.is_set():
                try:
                    read = await self._catch_up(store, db, codec, 500, policy, stop)
                except Exception as exc:
                    _log.error(
                        "projection.stalled", projection=self.name, error=_reason(exc),
                        retry_in=backoff, exc_info=None if failing else exc,
                    )  # fmt: skip
                    failing = True
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, max_backoff)
                    continue
                if failing:
                    _log.info("projection.recovered", projection=self.name)
                failing, backoff = False, poll_interval
                if not read:
                    await _wait(stop, poll_interval)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            _log.critical("projection.died", projection=self.name, error=_reason(exc), exc_info=exc)
            raise

    async def reset(self, db: Database) -> None:
        """Empty the read model, the checkpoint, the parked failures and the inbox of this
        projection."""
        async with db.transaction() as tx:
            for table in self.tables:
                await tx.execute(f"DELETE FROM {table}")
            await tx.execute("DELETE FROM projection_checkpoints WHERE name = ?", (self.name,))
            await tx.execute("DELETE FROM projection_failures WHERE name = ?", (self.name,))
            await tx.execute("DELETE FROM inbox WHERE consumer_group = ?", (self.name,))

    async def rebuild(
        self, store: EventStore, db: Database, codec: EventCodec | None = None
    ) -> int:
        """Empty the read model and replay the whole store into it (events that still
        cannot be applied are parked again)."""
        await self.setup(db)
        await self.reset(db)
        return await self.catch_up(store, db, codec)

    async def dump(self, db: Database) -> dict[str, list[Row]]:
        """Every row of the read model's tables, sorted (for comparing read models)."""
        return await dump_tables(db, self.tables)

    # --- from the bus ----------------------------------------------------------------------

    async def handle_envelope(self, db: Database, envelope: Envelope) -> bool:
        """Apply one received event unless the inbox has seen its id; returns whether it
        was applied."""
        entry = self._handlers.get(envelope.type)
        if entry is None:
            return False
        cls = entry[0]
        try:
            event = cls.model_validate_json(envelope.body)
        except ValidationError as exc:
            raise Reject(f"{envelope.type} does not validate as {cls.__name__}: {exc}") from exc
        meta = EventMeta.of_envelope(envelope)
        return await handle_once(db, self.name, envelope.id, lambda tx: self.apply(tx, event, meta))

    def bind(
        self,
        bus: EventBus,
        db: Database,
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        concurrency: int = 1,
    ) -> None:
        """Subscribe this projection to `bus` (one subscription per stream it reads);
        call `setup(db)` before the bus starts."""
        if group is not None and group != self.name:
            raise ValueError("a projection's group is its name (its inbox is keyed by it)")
        for stream in sorted(self.streams):
            types_ = sorted(
                t for t, (cls, _, _) in self._handlers.items() if cls.__stream__ == stream
            )
            bus.add_handler(
                self._bus_handler(db),
                stream,
                *types_,
                group=self.name,
                retry=retry,
                concurrency=concurrency,
            )

    def _bus_handler(self, db: Database) -> Callable[[Envelope, Context], Awaitable[None]]:
        async def handler(envelope: Envelope, ctx: Context) -> None:
            await self.handle_envelope(db, envelope)

        handler.__qualname__ = f"projection:{self.name}"
        return handler


def _reason(exc: BaseException) -> str:
    """`Type: message` of an exception, credentials in URLs masked, at most 2000 chars."""
    return redact_text(f"{type(exc).__name__}: {exc}")[:2000]


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
