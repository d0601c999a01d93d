"""The confluent-kafka `Producer`, driven from asyncio and from sync code.

Async: a dedicated poll thread serves delivery reports and resolves asyncio futures through
`loop.call_soon_threadsafe` (one wake-up per poll, not per record). `send` returns when the
delivery report says the record is stored (`acks=all`, idempotent producer); a full local
queue (`BufferError`) makes the caller wait, never fail. Sync: the same producer config,
with the calling thread polling until its records are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from eventbus.toolkit import Message as EventMessage
from eventbus.toolkit import (
    MessageTooLarge,
    PublishError,
    get_logger,
    to_kafka_headers,
)

from .link import ProducerLink
from .settings import ClientConfigs, config_error

Headers = list[tuple[str, str | bytes | None]]
_log = get_logger()


@dataclass(slots=True)
class Record:
    """One record to produce."""

    topic: str
    value: bytes
    key: bytes | None
    headers: Headers
    #: what the error names (the event id)
    label: str = ""


def record_of(message: EventMessage) -> Record:
    key = message.key.encode() if message.key is not None else None
    headers: Headers = to_kafka_headers(message.attributes, message.attempt)  # type: ignore[assignment]
    return Record(message.stream, message.body, key, headers, message.id)


#: the copy producer's overrides of the producer config (retry and dead-letter copies):
#: sent at once, since a copy holds its subscription's later records until it is stored;
#: its link is not watched (the publishing producer's stands for the cluster)
COPY_PRODUCER: dict[str, Any] = {"linger.ms": 0, "statistics.interval.ms": 0}


def create_producer(
    configs: ClientConfigs,
    link: ProducerLink | None = None,
    overrides: dict[str, Any] | None = None,
) -> Producer:
    """A producer; with a `link` (the async producer, which polls all the time), one that
    reports its statistics and errors there too. `overrides` replace properties of the
    producer config (the reply producer's)."""
    config = configs.producer(statistics=link is not None)
    config.update(overrides or {})
    config["error_cb"] = partial(client_error, configs, "producer", link)
    if link is not None:
        link.start(config)
        if link.tracking:
            config["stats_cb"] = link.on_statistics
    try:
        return Producer(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise config_error(configs, exc, "producer") from None


def client_error(
    configs: ClientConfigs, client: str, link: ProducerLink | None, error: KafkaError
) -> None:
    _log.warning("kafka.client_error", client=client, error=configs.scrub(str(error)))
    if link is not None:
        link.on_error(error)


#: bytes a record batch adds around one record, and a record around each header
RECORD_OVERHEAD = 128
HEADER_OVERHEAD = 10


def header_bytes(headers: Headers) -> int:
    """What the headers of a record take on the wire (about)."""
    total = 0
    for name, value in headers:
        total += len(name.encode()) + HEADER_OVERHEAD
        if value is not None:
            total += len(value.encode() if isinstance(value, str) else value)
    return total


def record_bytes(record: Record) -> int:
    """What one record takes on the wire, alone in its batch (about, uncompressed)."""
    key = len(record.key) if record.key is not None else 0
    return len(record.value) + key + header_bytes(record.headers) + RECORD_OVERHEAD


def _failure(
    configs: ClientConfigs, record: Record, error: Any, headers_known: bool = True
) -> PublishError:
    """`error` of `record` as the publish's PublishError (MessageTooLarge for a record
    too large). Without `headers_known` (a delivery report of a batch: librdkafka reports
    no headers), the record's event id and headers are not known."""
    text = configs.scrub(str(error))
    key_text = record.key.decode("utf-8", "replace") if record.key is not None else None
    event = (
        f"event {record.label}"
        if record.label
        else f"an event with key {key_text!r} (its id is not reported back)"
    )
    if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        key = len(record.key) if record.key is not None else 0
        size, headers = (
            (f"about {record_bytes(record)} bytes", str(header_bytes(record.headers)))
            if headers_known
            else (f"over {record_bytes(record)} bytes", "not reported")
        )
        return MessageTooLarge(  # permanent: an outbox relay parks it rather than retry
            f"Kafka refused {event} on topic {record.topic!r} as too large: the record is "
            f"{size} (key {key}, headers {headers}, body {len(record.value)}), more than "
            "the topic accepts (its max.message.bytes) or the producer sends "
            f"(message.max.bytes {configs.producer_max_bytes}); send a smaller key, "
            f"headers or body ({text})"
        )
    return PublishError(f"Kafka did not store {event} on topic {record.topic!r}: {text}")


def _reported(configs: ClientConfigs, err: Any, msg: Message) -> PublishError:
    """The failure of one record of a batch, described from what its delivery report
    holds: the topic, key and value. The batch keeps no Python object per record in
    flight (fewer survivors for the GC to scan), and confluent-kafka's reports carry no
    headers, so the event id is not known here."""
    key = msg.key()
    record = Record(
        msg.topic() or "?",
        msg.value() or b"",
        key.encode() if isinstance(key, str) else key,
        [],
    )
    return _failure(configs, record, err, headers_known=False)


class _Reports:
    """The delivery reports of one or several records, resolved as one future: the
    `on_delivery` callback of each of them (one object per call, none per record)."""

    __slots__ = ("error", "future", "message", "owner", "record", "remaining")

    def __init__(
        self,
        owner: AsyncProducer,
        future: asyncio.Future[None],
        count: int,
        record: Record | None = None,
        message: EventMessage | None = None,
    ) -> None:
        self.owner = owner
        self.future = future
        self.remaining = count
        #: the one record reported (a single send), or the one event message (a single
        #: publish, which its caller keeps alive anyway): what a failure describes.
        #: librdkafka's reports carry no headers, so without them a failure can name
        #: neither the event id nor the headers' size.
        self.record = record
        self.message = message
        self.error: PublishError | None = None

    def __call__(self, err: Any, msg: Message) -> None:
        if err is not None and self.error is None:
            configs, record, message = self.owner.configs, self.record, self.message
            if record is not None:
                self.error = _failure(configs, record, err)
            elif message is not None:
                self.error = _failure(configs, record_of(message), err)
            else:
                self.error = _reported(configs, err, msg)
        self.remaining -= 1
        if not self.remaining:
            owner = self.owner
            with owner._done_lock:
                owner._done.append((self.future, self.error))


class AsyncProducer:
    """One producer per broker, shared by publishing, retries and dead-lettering."""

    def __init__(self, configs: ClientConfigs, overrides: dict[str, Any] | None = None) -> None:
        self.configs = configs
        self._overrides = overrides
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._done: list[tuple[asyncio.Future[None], PublishError | None]] = []
        self._done_lock = threading.Lock()
        #: the link to the cluster (`KafkaBroker.state()`), from the poll thread's callbacks
        self.link = ProducerLink(configs)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = create_producer(self.configs, self.link, self._overrides)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._poll, name="eventbus-kafka-producer", daemon=True
        )
        self._thread.start()

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise PublishError("the Kafka producer is not running")
        return self._producer

    def _poll(self) -> None:
        producer = self.producer
        while not self._stop.is_set():
            try:
                producer.poll(0.05)
            except Exception as exc:
                # A callback raised (e.g. its log line could not be written: stderr closed).
                # The next poll serves the reports behind it; a dead poll thread would
                # leave every publish waiting for a report forever.
                with contextlib.suppress(Exception):
                    _log.error("kafka.producer_callback_failed", error=repr(exc))
            self._hand_over()

    def _hand_over(self) -> None:
        """Resolve the futures whose reports arrived, in one loop wake-up."""
        with self._done_lock:
            done, self._done = self._done, []
        if done and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(_resolve, done)

    def _try_produce(self, record: Record, callback: Any) -> bool:
        """Hand one record to librdkafka; False if its local queue is full."""
        try:
            self.producer.produce(
                record.topic, record.value, record.key, headers=record.headers, on_delivery=callback
            )
            return True
        except BufferError:
            return False
        except KafkaException as exc:
            raise _failure(self.configs, record, exc.args[0] if exc.args else exc) from None

    async def _produce(self, record: Record, callback: Any) -> None:
        while True:
            if self._try_produce(record, callback):
                return
            await asyncio.sleep(0.002)  # local queue full: the poll thread drains it

    async def send(self, record: Record) -> None:
        """Produce one record; return once it is stored (raise PublishError otherwise)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reports = _Reports(self, future, 1, record)
        if not self._try_produce(record, reports):  # (no coroutine unless the queue is full)
            await self._produce(record, reports)
        await future

    async def send_message(self, message: EventMessage) -> None:
        """`send` for one event message (the publish path). Its record's headers are made
        as it is produced, and while its report is awaited nothing of the record is kept:
        a publish in flight lives long enough to reach the collector's old generation,
        and many of them in flight (a busy service's concurrent publishes) make the
        collector's full passes come that much more often. A failure is described from
        `message`, which the publishing caller holds anyway."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reports = _Reports(self, future, 1, message=message)
        if not self._try_produce_message(message, reports):
            await self._produce(record_of(message), reports)
        await future

    def _try_produce_message(self, message: EventMessage, reports: _Reports) -> bool:
        """Hand one event message to librdkafka, its headers made just now; False if the
        local queue is full (then the caller waits for room with a record: rare)."""
        try:
            self.producer.produce(
                message.stream,
                message.body,
                message.key,
                headers=to_kafka_headers(message.attributes, message.attempt),  # type: ignore[arg-type]
                on_delivery=reports,
            )
            return True
        except BufferError:
            return False
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            raise _failure(self.configs, record_of(message), error) from None

    async def submit(self, record: Record) -> asyncio.Future[None]:
        """Produce one record; -> the future of its delivery report (its failure is
        retrieved even if nobody awaits it)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        await self._produce(record, _Reports(self, future, 1, record))
        return future

    async def send_many(self, records: Sequence[Record]) -> None:
        """Produce all records, then wait for all reports; the first failure is raised."""
        await (await self.submit_many(records))

    async def submit_many(self, records: Sequence[Record]) -> asyncio.Future[None]:
        """Produce all records; -> the future of all their reports (the first failure)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not records:
            future.set_result(None)
            return future
        reports = _Reports(self, future, len(records))
        try_produce = self._try_produce
        for record in records:  # no coroutine per record: the loop is yielded only when full
            if not try_produce(record, reports):
                await self._produce(record, reports)
        return future

    async def send_messages(self, messages: list[EventMessage]) -> None:
        """Produce the records of `messages` (the publish path), then wait for all reports;
        the first failure is raised. Each record's headers are made just before it is
        produced, and the list is emptied once all are produced: no Python object per
        record stays alive while it is in flight."""
        if not messages:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        reports = _Reports(self, future, len(messages))
        try_produce = self._try_produce_message
        for message in messages:  # no coroutine per record: the loop is yielded only when full
            if not try_produce(message, reports):
                await self._produce(record_of(message), reports)
        # ours (`Broker.publish_many`): none stays alive while the reports are awaited
        del message
        messages.clear()
        await future

    async def close(self, timeout: float = 30.0) -> None:
        """Wait for outstanding reports (up to `timeout`), then stop the poll thread."""
        producer, thread = self._producer, self._thread
        if producer is None:
            return
        self._stop.set()  # one thread serves reports at a time: stop polling, then flush
        if thread is not None:
            await asyncio.to_thread(thread.join)
        await asyncio.to_thread(release, producer, timeout)
        self._hand_over()  # records purged by `release` fail their publishes
        self.link.closed = True
        self._producer = None
        self._thread = None


def _resolve(done: list[tuple[asyncio.Future[None], PublishError | None]]) -> None:
    for future, failure in done:
        if future.done():
            continue
        if failure is None:
            future.set_result(None)
        else:
            future.set_exception(failure)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class SyncProducer:
    """Blocking produce with delivery reports: the Kafka side of `SyncPublisher`."""

    def __init__(self, configs: ClientConfigs) -> None:
        self.configs = configs
        self._producer: Producer | None = create_producer(configs)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise PublishError("the Kafka sync publisher is closed")
        return self._producer

    def send_many(self, records: Sequence[Record]) -> None:
        producer = self.producer
        state = {"remaining": len(records)}
        errors: list[PublishError] = []
        lock = threading.Lock()

        def report(record: Record, err: Any, _msg: Message) -> None:
            with lock:
                state["remaining"] -= 1
                if err is not None:
                    errors.append(_failure(self.configs, record, err))

        for record in records:
            while True:
                try:
                    producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=record.headers,
                        on_delivery=partial(report, record),
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
                except KafkaException as exc:
                    raise _failure(self.configs, record, exc.args[0] if exc.args else exc) from None
        while state["remaining"]:
            producer.poll(0.05)
        if errors:
            raise errors[0]

    def close(self, timeout: float = 30.0) -> None:
        if self._producer is not None:
            release(self._producer, timeout)
            self._producer = None


def release(producer: Producer, timeout: float = 0.0) -> None:
    """Wait up to `timeout` for outstanding delivery reports, then let go of librdkafka's
    handle now, not whenever the GC gets to the object (until then it keeps connecting to
    its brokers, and logging that it cannot): what is still queued is purged (its
    delivery reports say so), then the handle is closed."""
    if timeout > 0:
        _flush(producer, timeout)
    with contextlib.suppress(Exception):
        producer.purge()
    _flush(producer, 0)  # serves the reports of the purged records
    close = getattr(producer, "close", None)  # recent confluent-kafka; older: at GC
    if close is not None:
        # a fenced transactional producer cannot abort its transaction: confluent-kafka
        # warns so; the fence itself was reported when it happened
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            close()


def _flush(producer: Producer, timeout: float) -> None:
    """`producer.flush(timeout)`, going on past a callback that raises (as `_poll` does):
    the reports behind it are still served, and a close never fails for a log line."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            producer.flush(max(deadline - time.monotonic(), 0.0))
            return
        except Exception as exc:
            with contextlib.suppress(Exception):
                _log.error("kafka.producer_callback_failed", error=repr(exc))
            if time.monotonic() >= deadline:
                return
