"""The consumer of one subscription: a Kafka consumer group member feeding the kernel.

Two sides share the partition state under one lock:

- the **poll thread** owns the confluent `Consumer`: it calls `consume` continuously (so
  the group never sees a stalled member, however long a handler runs), tracks fetched
  offsets, pauses a partition whose un-finished window is full or whose retry record is not
  due yet, commits the contiguously finished prefix of every partition periodically and on
  revoke and close, and runs the rebalance callbacks;
- the **pump task** on the event loop hands records to the kernel one at a time, in fetch
  order (per-partition order), awaiting `deliver` (the kernel's back-pressure); settling a
  delivery marks its offset finished.

A revoked partition stops starting records at once, waits (bounded) for the ones in flight,
commits, and is handed over: the next owner continues exactly after the last finished
record, which keeps per-key order across rebalances.

**Exactly-once** (`SubscriptionSpec.exactly_once`): a finished record does not produce
anything itself. Its delivery stages what settles it (the handler's `ctx.publish` events
on ack, or its retry or dead-letter copy) on the partition, keyed by offset; the poll
thread commits, every `transaction_interval_ms` and on revoke and close, the staged
records below each partition's commit point together with those offsets in one Kafka
transaction (`transactions.py`). An aborted transaction rewinds its partitions to where
they were last committed (the records run again; nothing of the aborted one is visible);
a fenced producer stops the consumer.

Memory is bounded twice: by records (`partition_buffer` per partition) and by bytes
(`partition_buffer_bytes` per subscription, shared evenly by its assigned partitions). A
record fetched beyond a partition's byte share is not kept: the partition pauses and,
once it has room again, seeks back to that record.

No record can kill the pump: decoding every field is guarded, and a record that cannot be
decoded faithfully becomes a delivery with a `defect` (the kernel dead-letters it). If the
pump task or the poll thread ends anyway while the consumer is not being closed, the
kernel hears of it (`SubscriptionSpec.failed`) and stops the bus: never half-alive.

Trust: the attempt count (`x-eventbus-attempt`) and the origin position
(`x-eventbus-origin-*`) are read only from records on the group's own retry and replay
topics; on the stream every record starts at attempt 1 at its own position. A record
without an event id gets one derived from that position, the same on every retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from eventbus.toolkit import (
    ConsumerState,
    Deliver,
    SubscriptionSpec,
    derived_id,
    finish_task,
    from_kafka_headers,
    get_logger,
    matches_any,
    supervise,
)

from .delivery import KafkaDelivery
from .link import GroupLink, parse_statistics
from .names import DUE_HEADER, ORIGIN_OFFSET_HEADER, ORIGIN_PARTITION_HEADER
from .offsets import PartitionTracker
from .producer import Headers, Record
from .records import get_headers, headers_of, read_headers, salvage_headers
from .settings import ClientConfigs, config_error
from .transactions import (
    TransactionAborted,
    TransactionalProducer,
    TransactionFenced,
    default_transactional_id,
)

if TYPE_CHECKING:
    from .producer import AsyncProducer

_log = get_logger()
#: records taken from librdkafka's queue at a time. Each one taken is a Python object for as
#: long as the loop takes to reach it: batches of 500 made ~40% of the consumed records
#: survive into the collector's oldest generation, and its full passes (over the whole
#: heap) cost 1-1.3 us per event end to end; batches of 100 halve that and keep the
#: throughput (Kafka end-to-end, 50k events, 4 runs each, interleaved)
_BATCH = 100
_IDLE_WAIT = 0.1
_QUIET_ERRORS = (KafkaError._PARTITION_EOF,)
#: a commit refused while the group rebalances (the next one, or the revoke's, retries it)
#: a commit refused for a passing reason (a rebalance, the group coordinator moving to
#: another broker): the next interval's commit carries the same offsets; logged at info
_REBALANCING = (
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._WAIT_COORD,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


class PartitionState:
    """One assigned partition, shared by the poll thread and the pump task."""

    __slots__ = (
        "committed",
        "defects",
        "delayed",
        "epoch",
        "full",
        "generation",
        "held",
        "inflight",
        "partition",
        "paused",
        "refetch",
        "revoked",
        "staged",
        "start",
        "topic",
        "tracker",
    )

    def __init__(self, topic: str, partition: int, delayed: bool) -> None:
        self.topic = topic
        self.partition = partition
        #: records may carry a due time (retry and replay topics)
        self.delayed = delayed
        self.tracker = PartitionTracker()
        #: bumped on revoke and rewind: queued records of an older generation are dropped
        self.generation = 0
        #: bumped on rewind only: a delivery of an older epoch settles nothing (its record
        #: is fetched and run again)
        self.epoch = 0
        #: exactly-once: finished offset -> the records that settle it, not committed yet
        self.staged: dict[int, list[Record]] = {}
        #: exactly-once: where the records not committed yet begin (an abort goes back
        #: there); None until the first fetch
        self.start: int | None = None
        #: records handed to the kernel and not settled yet
        self.inflight = 0
        #: last committed offset
        self.committed = -1
        #: records fetched but not due yet (retry topics), oldest first
        self.held: deque[Message] = deque()
        #: offset -> why its headers could not all be read (found by the poll thread)
        self.defects: dict[int, str] = {}
        #: the first record dropped for lack of byte room: fetched again from there
        self.refetch: int | None = None
        self.full = False
        self.paused = False
        self.revoked = False

    def tp(self, offset: int | None = None) -> TopicPartition:
        if offset is None:
            return TopicPartition(self.topic, self.partition)
        return TopicPartition(self.topic, self.partition, offset)


#: records of one partition handed to the loop together: (the partition, its generation
#: when they were fetched, the records in offset order)
Run = tuple[PartitionState, int, list[Message]]


def _due_ms(part: PartitionState, message: Message) -> int:
    headers, defect = read_headers(message)
    if defect is not None:  # the pump must know: the message's headers are repaired now
        part.defects[cast(int, message.offset())] = defect
    for name, value in headers:
        if name == DUE_HEADER and value is not None:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


class KafkaConsumer:
    """A running subscription (`eventbus.broker.Consumer`)."""

    def __init__(
        self,
        *,
        configs: ClientConfigs,
        producer: AsyncProducer,
        spec: SubscriptionSpec,
        deliver: Deliver,
        topics: list[str],
        delayed_topics: set[str],
        partition_buffer: int,
        partition_buffer_bytes: int,
        dead_letter_limit: int,
        config: dict[str, Any],
        record_limit: Callable[[str], Awaitable[int]] | None = None,
        transactional_id: str | None = None,
    ) -> None:
        self.configs = configs
        #: the producer of its retry and dead-letter copies (not lingering)
        self.producer = producer
        self.spec = spec
        self._deliver = deliver
        self._topics = topics
        self._delayed_topics = delayed_topics
        self._buffer = partition_buffer
        self._buffer_bytes = partition_buffer_bytes
        #: the byte share of each assigned partition
        self._share = partition_buffer_bytes
        #: the largest dead-letter copy the dead-letter topic and the producer take
        self.dead_letter_limit = dead_letter_limit
        self._config = config
        settings = configs.settings
        self._commit_interval = settings.commit_interval_ms / 1000
        #: exactly-once: the transactional producer (created by `start`)
        self.exactly_once = spec.exactly_once
        self.transactions: TransactionalProducer | None = None
        self._transactional_id = transactional_id or default_transactional_id(
            spec.group, spec.stream
        )
        if spec.exactly_once:
            self._commit_interval = settings.transaction_interval_ms / 1000
        self._fenced = False
        #: makes a stream's topic exist before a handler's event for it is staged; -> the
        #: largest record the topic and the producer take
        self.record_limit = record_limit
        self._revoke_timeout = settings.revoke_timeout
        self._log = _log.bind(stream=spec.stream, group=spec.group)
        self._types = spec.types
        self._patterns = spec.patterns
        # shared state
        #: guards the shared state; the hot paths (per record) take the plain lock, which
        #: is the condition's own (a `Condition`'s `with` is a Python-level call)
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._parts: dict[tuple[str, int], PartitionState] = {}
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._halted = False  # kernel called pause(): start nothing new
        self._closing = False
        self._stop_thread = False
        self.assignments = 0  # rebalances seen (tests)
        #: an asynchronous commit is on its way (`_commit`)
        self._committing = False
        # loop side
        self._loop: asyncio.AbstractEventLoop | None = None
        #: runs of one partition's records, as fetched: (partition, its generation then,
        #: records); one tuple per run, not per record (see `_fetched`)
        self._ready: deque[Run] = deque()
        self._wake = asyncio.Event()
        self._assigned: asyncio.Future[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._error_seen: dict[tuple[int, str], float] = {}
        # health (`state()`, `backlog()`): plain values written by the poll thread's
        # callbacks, read on the loop without locks
        self.link = GroupLink(configs)
        #: the member holds an assignment (possibly empty) of its group
        self._member = False
        #: why it holds none
        self._unassigned = f"joining group {spec.group!r}"
        #: consumer lag per `topic[partition]` from the last statistics (None: unknown)
        self._lags: dict[str, int] | None = None
        #: the lag counts up to the last stable offset (isolation.level read_committed)
        self._read_committed = True

    def __repr__(self) -> str:
        return f"KafkaConsumer({self.spec.stream!r}, group={self.spec.group!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Join the group; return once partitions are assigned (ready means ready)."""
        loop = self._loop = asyncio.get_running_loop()
        self._assigned = loop.create_future()
        config = self.configs.consumer(
            self.spec.group, self._config, self._buffer_bytes, statistics=True
        )
        instance = self.configs.settings.instance_id
        if instance is not None and "group.instance.id" not in config:
            config["group.instance.id"] = f"{instance}.{self.spec.stream}"
        config["error_cb"] = self._client_error
        config["on_commit"] = self._committed
        self.link.start(config)
        if self.link.tracking:
            config["stats_cb"] = self._statistics
        self._read_committed = config.get("isolation.level") != "read_uncommitted"
        if self.exactly_once:
            transactions = TransactionalProducer(self.configs, self._transactional_id)
            try:
                await asyncio.to_thread(transactions.init, self.configs.settings.connect_timeout)
            except BaseException:
                transactions.close()
                raise
            self.transactions = transactions
        try:
            consumer = Consumer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise config_error(
                self.configs, exc, f"consumer of group {self.spec.group!r}"
            ) from None
        self._consumer = consumer
        consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._thread = threading.Thread(
            target=self._run,
            name=f"eventbus-kafka-{self.spec.stream}.{self.spec.group}",
            daemon=True,
        )
        self._thread.start()
        self._pump_task = asyncio.create_task(
            self._pump(), name=f"kafka:{self.spec.stream}.{self.spec.group}"
        )
        supervise(self._pump_task, self.spec, "the Kafka consumer's pump task", self._ending)
        try:
            await asyncio.wait_for(asyncio.shield(self._assigned), timeout)
        except TimeoutError:
            await self.close()
            raise ConnectionError(
                f"Kafka assigned no partitions of {self._topics} to group "
                f"{self.spec.group!r} within {timeout}s ({self.configs.target.redacted}); "
                "raise EVENTBUS_KAFKA_ASSIGNMENT_TIMEOUT if the group rebalances slowly"
            ) from None

    def _ending(self) -> bool:
        """Whether the pump and the poll thread are meant to end (pause or close)."""
        return self._halted

    def _thread_failed(self, what: str, error: BaseException) -> None:
        """On the loop: the poll thread ended while it should be running."""
        if not self._closing:
            self.spec.failed(what, error)

    async def pause(self) -> None:
        """Start no new record; the poll thread pauses every partition but keeps polling."""
        self._halted = True
        self._wake.set()

    async def close(self) -> None:
        """Commit what finished, leave the group; unfinished records stay uncommitted."""
        self._halted = True
        self._closing = True
        self.link.closed = True
        self._wake.set()
        await finish_task(self._pump_task)
        with self._lock:
            self._stop_thread = True
            self._lock.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive():
            await asyncio.to_thread(thread.join)
        self._thread = None
        transactions, self.transactions = self.transactions, None
        if transactions is not None:
            transactions.close()

    # --- health ------------------------------------------------------------------------

    def state(self) -> ConsumerState:
        """Attached while the group coordinator is connected (librdkafka's statistics, or
        at once down on `_ALL_BROKERS_DOWN` / a coordinator connection error) and the
        member holds an assignment; not while a rebalance revoked it or it was lost. No
        I/O: plain values the poll thread's callbacks wrote."""
        problem = self.link.problem()
        if problem is not None:
            return ConsumerState(False, problem)
        if not self._member:
            return ConsumerState(False, self._unassigned)
        if not self._parts:
            return ConsumerState(True, "no partitions assigned")
        return ConsumerState(True)

    async def backlog(self) -> dict[str, int] | None:
        """Consumer lag per assigned `topic[partition]` (records after the group's
        committed offset, in-flight ones included) from librdkafka's last statistics: no
        broker round trip. None while the link is down, between assignments, or with
        statistics off."""
        if not self.link.tracking or self.link.problem() is not None or not self._member:
            return None
        lags = self._lags
        return dict(lags) if lags is not None else None

    def _statistics(self, text: str) -> None:
        """`stats_cb` (poll thread): the coordinator's state and the consumer lag."""
        stats = parse_statistics(text)
        if stats is None:
            return
        self.link.coordinator(stats)
        self._lags = self._lag(stats)

    def _lag(self, stats: dict[str, Any]) -> dict[str, int] | None:
        """Lag per assigned partition: librdkafka's `consumer_lag` (end offset minus the
        committed one); where nothing is committed yet (-1), the end offset minus where
        this member stands (its lowest unfinished record, or its fetch position). None if
        partitions are assigned but none is known; {} if none is assigned."""
        with self._lock:
            assigned = [
                (part.topic, part.partition, part.tracker.commit_point())
                for part in self._parts.values()
                if not part.revoked
            ]
        if not assigned:
            return {}
        topics = stats.get("topics")
        if not isinstance(topics, dict):
            return None
        end_field = "ls_offset" if self._read_committed else "hi_offset"
        lags: dict[str, int] = {}
        for topic, partition, point in assigned:
            found = topics.get(topic)
            partitions = found.get("partitions") if isinstance(found, dict) else None
            entry = partitions.get(str(partition)) if isinstance(partitions, dict) else None
            if not isinstance(entry, dict):
                continue
            lag = entry.get("consumer_lag")
            if not isinstance(lag, int) or lag < 0:
                end = entry.get(end_field)
                base = point if point is not None else entry.get("next_offset")
                if not isinstance(end, int) or not isinstance(base, int):
                    continue
                if end < 0 or base < 0:
                    continue
                lag = max(end - base, 0)
            lags[f"{topic}[{partition}]"] = lag
        return lags or None

    # --- loop side ---------------------------------------------------------------------

    def _arrived(self, batch: list[Run]) -> None:
        self._ready.extend(batch)
        if not self._wake.is_set():
            self._wake.set()

    async def _pump(self) -> None:
        ready = self._ready
        wake = self._wake
        lock = self._mutex
        types = self._types
        patterns = self._patterns
        stream = self.spec.stream
        deliver = self._deliver
        defects: list[str] = []  # invalid UTF-8 found by from_kafka_headers (reused)
        while not self._halted:
            if not ready:
                wake.clear()
                await wake.wait()
                continue
            part, generation, run = ready.popleft()
            for message in run:
                if self._halted:
                    break
                with lock:
                    if generation != part.generation or part.revoked:
                        continue
                    part.inflight += 1
                    epoch = part.epoch
                offset: int = message.offset()  # type: ignore[assignment]  # no cast() per record
                try:
                    raw_key = message.key()
                    try:
                        raw_headers: Headers = get_headers(message) or []
                        defect = None
                    except Exception as exc:  # a header name confluent-kafka cannot decode
                        raw_headers, defect = salvage_headers(message, exc)
                    if part.defects:
                        defect = part.defects.pop(offset, defect)
                    attributes, attempt = from_kafka_headers(raw_headers, raw_key, defects)
                    if defects:
                        defect = "; ".join(defects if defect is None else [defect, *defects])
                        defects.clear()
                    etype = attributes.get("type")
                    if (
                        etype
                        and (
                            (types is not None and etype not in types)
                            or (types is None and not matches_any(patterns, etype))
                        )
                        and (defect is None or "\ufffd" not in etype)
                    ):  # another type on the stream: not this group's business
                        self.settle(part, offset, True, epoch)
                        continue
                    if part.delayed:  # the group's own retry/replay topic: its bookkeeping counts
                        topic, partition, origin_offset = _origin(raw_headers, part, offset, stream)
                    else:  # the stream: a foreign producer's attempt/origin headers do not count
                        attempt = 1
                        topic, partition, origin_offset = stream, part.partition, offset
                    if not attributes.get("id"):  # id-less: one stable id from its position
                        attributes["id"] = derived_id("kafka", topic, partition, origin_offset)
                    delivery = KafkaDelivery(  # positional: this runs once per record
                        self,
                        part,
                        offset,
                        raw_key,
                        raw_headers,
                        stream,
                        message.value() or b"",
                        attributes,
                        attributes.get("partitionkey") if raw_key is not None else None,
                        attempt,
                        partition,
                        origin_offset,
                        defect,
                        epoch,
                    )
                except Exception as exc:  # never die of a record: it is bad input
                    defects.clear()
                    delivery = self._undecodable(part, message, offset, exc, epoch)
                try:
                    await deliver(delivery)
                except Exception as exc:  # the kernel never raises here; never die silently
                    self._log.error("kafka.deliver_failed", error=repr(exc))

    def _undecodable(
        self, part: PartitionState, message: Message, offset: int, exc: Exception, epoch: int
    ) -> KafkaDelivery:
        """A record whose decoding failed unexpectedly, as a delivery the kernel
        dead-letters (with what could be kept of it)."""
        self._log.error("kafka.undecodable_record", offset=offset, error=repr(exc)[:500])
        raw_key = message.key()
        return KafkaDelivery(
            self,
            part,
            offset,
            raw_key if isinstance(raw_key, bytes) else None,
            headers_of(message),
            stream=self.spec.stream,
            body=message.value() or b"",
            attributes={"id": derived_id("kafka", part.topic, part.partition, offset)},
            key=None,
            attempt=1,
            partition=part.partition,
            offset=offset,
            defect=f"the record cannot be decoded: {exc!r}"[:2000],
            epoch=epoch,
        )

    def settle(
        self,
        part: PartitionState,
        offset: int,
        finished: bool,
        epoch: int,
        staged: list[Record] | None = None,
    ) -> None:
        """A delivery was settled: finished (ack, retried, dead-lettered) or given back.
        Exactly-once: `staged` are the records that settle it, committed with its offset.
        A delivery of an older epoch (its partition was rewound since) settles nothing:
        its record runs again."""
        with self._mutex:
            current = epoch == part.epoch
            if finished and current:
                if staged and not part.revoked:
                    part.staged[offset] = staged
                part.tracker.finished(offset)
            part.inflight -= 1
            if part.revoked and not part.inflight:
                self._lock.notify_all()
            rewind = not finished and current and not self._halted and not part.revoked
            generation = part.generation
        if rewind:  # given back while running: fetch it (and what follows) again
            self._commands.put(lambda: self._rewind(part, generation))

    # --- poll thread -------------------------------------------------------------------

    def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        next_commit = time.monotonic() + self._commit_interval
        failure: BaseException | None = None
        try:
            while True:
                with self._lock:
                    if self._stop_thread:
                        break
                while True:
                    try:
                        self._commands.get_nowait()()
                    except queue.Empty:
                        break
                now = time.time()
                released = self._release_due(now)
                wait = self._flow(now)
                if released:
                    self._hand_over(released)
                if time.monotonic() >= next_commit:
                    self._commit(None, wait=False)
                    next_commit = time.monotonic() + self._commit_interval
                # block for the first record only, then take what is already there: a
                # batch consume with a timeout would hold early records back under low load
                first = consumer.poll(wait)
                if first is not None:
                    messages = consumer.consume(_BATCH - 1, 0)
                    messages.insert(0, first)
                    self._fetched(messages)
            self._commit(None)
        except BaseException as exc:  # a client failure must not vanish silently
            failure = exc
            self._log.error("kafka.consumer_failed", error=self.configs.scrub(repr(exc)))
        finally:
            try:
                consumer.close()  # revokes (-> commit) and leaves the group
            except (KafkaException, RuntimeError) as exc:
                self._log.warning("kafka.close_failed", error=self.configs.scrub(repr(exc)))
            if failure is not None:  # left the group; now the bus must hear of it
                self.link.fatal = f"the poll thread failed: {self.configs.scrub(repr(failure))}"
                self._report(
                    "the Kafka consumer's poll thread",
                    RuntimeError(self.configs.scrub(repr(failure))),
                )

    def _report(self, what: str, error: BaseException) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._thread_failed, what, error)

    def _hand_over(self, batch: list[Run]) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._arrived, batch)

    def _fetched(self, messages: list[Message]) -> None:
        """Take a fetched batch: track its records and hand them to the loop as runs of
        one partition's records. Per record no Python object is made here: a batch whose
        records each needed one would reach the collector's older generations (it is
        alive for as long as the loop works through it) and make its full passes, over
        the whole heap, come that much more often."""
        batch: list[Run] = []
        run: list[Message] = []
        last: PartitionState | None = None
        errors = []
        now_ms = time.time() * 1000
        with self._mutex:
            parts = self._parts
            share = self._share
            for message in messages:
                if message.error() is not None:
                    errors.append(message)
                    continue
                part = parts.get((message.topic(), message.partition()))  # type: ignore[arg-type]
                if part is None or part.revoked:
                    continue
                key = message.key()
                size = len(message) + (len(key) if key is not None else 0)
                offset: int = message.offset()  # type: ignore[assignment]
                if part.start is None:
                    part.start = offset
                taken = part.tracker.fetched(offset, size, share)
                if not taken:
                    if taken is None and part.refetch is None:  # no byte room: later
                        part.refetch = offset
                        part.full = True
                    continue
                if part.delayed and (part.held or _due_ms(part, message) > now_ms):
                    part.held.append(message)
                elif part is last:
                    run.append(message)
                else:
                    run = [message]
                    batch.append((part, part.generation, run))
                    last = part
        if batch:
            self._hand_over(batch)
        for message in errors:
            self._consume_error(message)

    def _release_due(self, now: float) -> list[Run]:
        released: list[Run] = []
        now_ms = now * 1000
        with self._lock:
            for part in self._parts.values():
                held = part.held
                if held and _due_ms(part, held[0]) <= now_ms:
                    run = [held.popleft()]
                    while held and _due_ms(part, held[0]) <= now_ms:
                        run.append(held.popleft())
                    released.append((part, part.generation, run))
        return released

    def _flow(self, now: float) -> float:
        """Pause full or not-yet-due partitions, resume the others; -> consume timeout."""
        consumer = self._consumer
        assert consumer is not None
        wait = _IDLE_WAIT
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        seek: list[TopicPartition] = []
        buffer = self._buffer
        with self._lock:
            halted = self._halted
            share = self._share
            for part in self._parts.values():
                tracker = part.tracker
                if part.full:  # full until half empty again
                    part.full = tracker.window > buffer // 2 or tracker.bytes > share // 2
                else:
                    part.full = tracker.window >= buffer or tracker.bytes >= share
                if part.full:
                    wait = min(wait, 0.01)
                if part.held:
                    wait = min(wait, max(_due_ms(part, part.held[0]) / 1000 - now, 0.0))
                want = halted or part.full or bool(part.held)
                if want != part.paused:
                    part.paused = want
                    (pause if want else resume).append(part.tp())
                if not want and part.refetch is not None:  # fetch the dropped records again
                    seek.append(part.tp(part.refetch))
                    part.refetch = None
        if pause:
            consumer.pause(pause)
        if resume:
            consumer.resume(resume)
        for tp in seek:  # after resume: what was prefetched before is discarded
            try:
                consumer.seek(tp)
            except KafkaException as exc:
                self._log.warning("kafka.seek_failed", error=self.configs.scrub(str(exc)))
        return wait

    def _commit(self, parts: list[PartitionState] | None, *, wait: bool = True) -> None:
        """Commit the contiguously finished prefix of `parts` (None: every partition).

        The periodic commit does not `wait`: a synchronous commit blocks the poll thread
        while the group rebalances (librdkafka holds it until the group is stable again),
        which would stall every partition this member keeps through a cooperative
        rebalance; its outcome arrives in `_committed`. A revoke and the last commit
        wait: the partition must be committed before it is handed over."""
        consumer = self._consumer
        assert consumer is not None
        if self.transactions is not None:
            self._commit_transaction(consumer, self.transactions, parts)
            return
        with self._lock:
            chosen = list(self._parts.values()) if parts is None else parts
            offsets = []
            for part in chosen:
                point = part.tracker.commit_point()
                if point is not None and point > part.committed:
                    offsets.append(part.tp(point))
        if not offsets:
            return
        try:
            if not wait:
                if not self._committing:  # one at a time: the next interval sends the rest
                    self._committing = True
                    consumer.commit(offsets=offsets, asynchronous=True)
                return
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError):
                if error.code() != KafkaError._NO_OFFSET:  # nothing new to commit
                    self._commit_refused(str(error), error.code())
            else:
                self._log.warning("kafka.commit_failed", error=self.configs.scrub(str(exc)))
            return
        self._record_commits(None, result or [])

    def _committed(self, error: KafkaError | None, result: list[TopicPartition]) -> None:
        """`on_commit` (poll thread): the outcome of the asynchronous commit."""
        self._committing = False
        self._record_commits(error, result)

    def _record_commits(self, error: KafkaError | None, result: list[TopicPartition]) -> None:
        """Remember what each partition has committed. A commit refused because the group
        is rebalancing is retried by the next one (and a revoke commits synchronously)."""
        if error is not None and error.code() == KafkaError._NO_OFFSET:
            return
        if error is not None and not result:
            self._commit_refused(str(error), error.code())
            return
        with self._lock:
            for tp in result:
                if tp.error is not None:
                    self._commit_refused(str(tp.error), tp.error.code(), tp)
                    continue
                known = self._parts.get((tp.topic, tp.partition))
                if known is not None and tp.offset > known.committed:
                    known.committed = tp.offset

    def _commit_refused(self, error: str, code: int, tp: TopicPartition | None = None) -> None:
        where = {} if tp is None else {"topic": tp.topic, "partition": tp.partition}
        if code in _REBALANCING:
            self._log.info("kafka.commit_deferred", error=self.configs.scrub(error), **where)
        else:
            self._log.warning("kafka.commit_failed", error=self.configs.scrub(error), **where)

    def _commit_transaction(
        self,
        consumer: Consumer,
        transactions: TransactionalProducer,
        parts: list[PartitionState] | None,
    ) -> None:
        """Exactly-once: commit the staged records below each partition's commit point
        and the offsets past them in one transaction. Aborted: the partitions go back to
        where they were last committed. Fenced: raised (the poll thread ends, the bus
        hears of it)."""
        records: list[Record] = []
        offsets: list[TopicPartition] = []
        moved: list[tuple[PartitionState, int]] = []
        with self._lock:
            chosen = list(self._parts.values()) if parts is None else parts
            for part in chosen:
                point = part.tracker.commit_point()
                if point is None or point <= part.committed:
                    continue
                staged = part.staged
                if staged:
                    for offset in sorted(o for o in staged if o < point):
                        records.extend(staged.pop(offset))
                offsets.append(part.tp(point))
                moved.append((part, point))
        if not offsets or self._fenced:
            return
        try:
            transactions.commit(
                records,
                offsets,
                consumer.consumer_group_metadata(),
                self.configs.settings.transaction_timeout,
            )
        except TransactionFenced:
            self._fenced = True  # never again: not on revoke or close either
            raise
        except TransactionAborted as exc:
            self._log.warning(
                "kafka.transaction_aborted",
                error=self.configs.scrub(str(exc)),
                records=len(records),
                partitions=[f"{p.topic}[{p.partition}]" for p, _ in moved],
                action="processing the records again from the last commit",
            )
            for part, _ in moved:
                with self._lock:
                    target = part.start
                    generation = part.generation
                if target is not None:
                    self._rewind(part, generation, target)
            return
        with self._lock:
            for part, point in moved:
                if point > part.committed:
                    part.committed = point
                    part.start = point

    def _rewind(self, part: PartitionState, generation: int, target: int | None = None) -> None:
        """Seek a partition back to `target`, by default its lowest unfinished record (a
        delivery was nacked); deliveries of what is fetched again from there on run
        again, and what they staged is dropped."""
        consumer = self._consumer
        assert consumer is not None
        with self._lock:
            if part.generation != generation or part.revoked or self._halted:
                return
            if target is None:
                target = part.tracker.commit_point()
            if target is None:
                return
            part.generation += 1
            part.epoch += 1
            part.tracker.rewind(target)
            if part.staged:
                part.staged = {o: r for o, r in part.staged.items() if o < target}
            part.held.clear()
            part.defects.clear()  # what is fetched again is read (and repaired) again
            part.refetch = None
        try:
            consumer.seek(part.tp(target))
        except KafkaException as exc:
            self._log.warning("kafka.seek_failed", error=self.configs.scrub(str(exc)))

    # rebalance callbacks: called by `consume` on the poll thread

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if key not in self._parts:
                    self._parts[key] = PartitionState(
                        tp.topic, tp.partition, tp.topic in self._delayed_topics
                    )
            self._share = self._buffer_bytes // max(len(self._parts), 1)
            self.assignments += 1
            self._member = True
        self.link.joined()
        self._log.info(
            "kafka.assigned",
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
        )
        loop, assigned = self._loop, self._assigned
        if loop is not None and assigned is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, assigned)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._release(partitions, lost=True)

    def _release(self, partitions: list[TopicPartition], *, lost: bool) -> None:
        with self._lock:
            found = (self._parts.get((tp.topic, tp.partition)) for tp in partitions)
            parts = [p for p in found if p is not None]
            for part in parts:
                part.revoked = True
                part.generation += 1
                part.held.clear()
            if all(part.revoked for part in self._parts.values()):  # nothing left: detached
                self._member = False
                self._unassigned = (
                    f"the partitions of group {self.spec.group!r} were lost (session timed "
                    "out or fenced): waiting to rejoin"
                    if lost
                    else f"the partitions of group {self.spec.group!r} were revoked by a "
                    "rebalance: waiting for the new assignment"
                )
            timeout = 0.0 if (self._closing or lost) else self._revoke_timeout
            deadline = time.monotonic() + timeout
            while any(p.inflight for p in parts):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            unfinished = sum(p.inflight for p in parts)
        if not lost:
            self._commit(parts)
        with self._lock:
            for part in parts:
                self._parts.pop((part.topic, part.partition), None)
            self._share = self._buffer_bytes // max(len(self._parts), 1)
        self._log.info(
            "kafka.lost" if lost else "kafka.revoked",
            partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
            inflight=unfinished,
        )

    def _client_error(self, error: KafkaError) -> None:
        self._log.warning("kafka.client_error", error=self.configs.scrub(str(error)))
        self.link.on_error(error)

    def _consume_error(self, message: Message) -> None:
        error = message.error()
        if error is None or error.code() in _QUIET_ERRORS:
            return
        fatal = error.fatal() or error.code() == KafkaError._FATAL
        if fatal:  # e.g. fenced by a member with the same `instance_id`: never ready again
            self.link.fatal = self.configs.scrub(error.str())
        key = (error.code(), str(message.topic()))
        now = time.monotonic()
        if now - self._error_seen.get(key, -1e9) < 10:
            return
        self._error_seen[key] = now
        if fatal:
            self._log.error("kafka.consume_error", error=self.configs.scrub(str(error)))
        else:
            self._log.warning("kafka.consume_error", error=self.configs.scrub(str(error)))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _origin(
    headers: Headers, part: PartitionState, offset: int, stream: str
) -> tuple[str, int, int]:
    """Where a retried/replayed record first was: its stream position from the
    x-eventbus-origin-* headers, else its own position on the retry/replay topic."""
    found_partition = found_offset = None
    for name, value in headers:
        if value is None:
            continue
        if name == ORIGIN_PARTITION_HEADER:
            found_partition = value
        elif name == ORIGIN_OFFSET_HEADER:
            found_offset = value
    if found_partition is None or found_offset is None:
        return part.topic, part.partition, offset
    try:
        return stream, int(found_partition), int(found_offset)
    except ValueError:
        return part.topic, part.partition, offset
