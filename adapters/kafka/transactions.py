"""The transactional producer of an exactly-once subscription.

One transaction commits, atomically, what a batch of finished records produced (the events
their handlers published with `ctx.publish`, their retry and dead-letter copies) and the
consumed offsets past them (`send_offsets_to_transaction` with the consumer's group
metadata). It runs from begin to commit in one call on the consumer's poll thread, the
thread that also runs the rebalance callbacks: a transaction is never open across a
rebalance, so a revoke commits what finished before the partitions are handed over, and
what did not finish is neither produced nor committed.

A zombie (a member that lost its partitions without knowing, or an instance replaced by
one with the same `transactional_id`) cannot commit: the broker fences it (the group
generation in the offsets, KIP-447, or the producer epoch), which is fatal here
(`TransactionFenced`): the consumer stops and the bus with it, never half-alive.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from eventbus.toolkit import get_logger

from .producer import Record, client_error, release
from .settings import ClientConfigs, config_error

_log = get_logger()

#: codes that mean another producer or a newer group generation took over
_FENCED = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


class TransactionAborted(Exception):
    """The transaction was aborted: nothing of it is visible and no offset moved; the
    consumer processes its records again."""


class TransactionFenced(RuntimeError):
    """This producer may never commit again (fenced, or a fatal producer error)."""


def default_transactional_id(group: str, stream: str) -> str:
    """`eventbus-<group>-<stream>-<host>-<pid>-<random>`: unique per consumer instance."""
    host = socket.gethostname()[:40] or "host"
    return f"eventbus-{group}-{stream}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class TransactionalProducer:
    """A confluent `Producer` with a `transactional.id`, used from one thread."""

    def __init__(self, configs: ClientConfigs, transactional_id: str) -> None:
        self.configs = configs
        self.transactional_id = transactional_id
        config = configs.producer(transactional=True)
        config["transactional.id"] = transactional_id
        # a transaction left open by a crashed instance blocks read_committed readers and
        # the group's offset fetches until the broker aborts it: no longer than one commit
        # may take here (unless the producer config says otherwise)
        timeout_ms = int(configs.settings.transaction_timeout * 1000)
        if "transaction.timeout.ms" not in configs.user_producer | configs.user:
            config["transaction.timeout.ms"] = max(timeout_ms, 1000)
        config["error_cb"] = partial(client_error, configs, "transactional producer", None)
        try:
            self.producer = Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise config_error(configs, exc, "transactional producer") from None
        #: transactions committed / aborted, records they committed (tests, benchmarks)
        self.committed = 0
        self.aborted = 0
        self.records = 0
        #: test hook: called with the records just before the commit; raising
        #: `TransactionAborted` aborts this transaction (a broker failing mid-commit)
        self.before_commit: Callable[[Sequence[Record]], None] | None = None

    def init(self, timeout: float) -> None:
        """Register the transactional id with the coordinator (fencing any older producer
        of the same id and aborting its open transaction). Blocking."""
        try:
            self.producer.init_transactions(timeout)
        except KafkaException as exc:
            raise ConnectionError(
                f"Kafka did not initialise transactions for transactional.id "
                f"{self.transactional_id!r} within {timeout}s "
                f"({self.configs.target.redacted}): {self._text(exc)}; exactly-once needs "
                "brokers with transactions (a transaction coordinator, and "
                "transaction.state.log.replication.factor <= the number of brokers)"
            ) from None

    def commit(
        self,
        records: Sequence[Record],
        offsets: list[TopicPartition],
        group_metadata: Any,
        timeout: float,
    ) -> None:
        """Produce `records` and move `offsets`, in one transaction. Raises
        `TransactionAborted` (aborted: retry the records) or `TransactionFenced`."""
        producer = self.producer
        deadline = time.monotonic() + timeout
        try:
            producer.begin_transaction()
            for record in records:
                self._produce(record, deadline)
            producer.send_offsets_to_transaction(offsets, group_metadata, _left(deadline))
            if self.before_commit is not None:  # the records reach the log first
                self.producer.flush(_left(deadline))
                self.before_commit(records)
            self._commit(deadline)
        except KafkaException as exc:
            self._failed(exc, deadline)
        except (TimeoutError, TransactionAborted) as exc:
            self._abort(deadline, str(exc))
        self.committed += 1
        self.records += len(records)

    def _produce(self, record: Record, deadline: float) -> None:
        while True:
            try:
                self.producer.produce(
                    record.topic, record.value, record.key, headers=record.headers
                )
                return
            except BufferError:  # the local queue is full: let it drain
                if time.monotonic() >= deadline:
                    raise TimeoutError("the producer queue stayed full") from None
                self.producer.poll(0.05)

    def _commit(self, deadline: float) -> None:
        while True:
            try:
                self.producer.commit_transaction(_left(deadline))
                return
            except KafkaException as exc:
                error = exc.args[0]
                if (
                    isinstance(error, KafkaError)
                    and error.retriable()
                    and not error.txn_requires_abort()
                    and time.monotonic() < deadline
                ):
                    continue  # the commit may be retried as it is
                raise

    def _failed(self, exc: KafkaException, deadline: float) -> None:
        error = exc.args[0]
        text = self._text(exc)
        if not isinstance(error, KafkaError) or error.fatal() or error.code() in _FENCED:
            raise TransactionFenced(
                f"the transactional producer {self.transactional_id!r} was fenced or failed "
                f"fatally: {text}"
            ) from None
        self._abort(deadline, text)

    def _abort(self, deadline: float, why: str) -> None:
        self.aborted += 1
        try:
            self.producer.abort_transaction(max(_left(deadline), 5.0))
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or error.fatal() or error.code() in _FENCED:
                raise TransactionFenced(
                    f"the transactional producer {self.transactional_id!r} cannot abort: "
                    f"{self._text(exc)}"
                ) from None
            raise TransactionAborted(f"{why}; the abort failed too: {self._text(exc)}") from None
        raise TransactionAborted(why)

    def close(self) -> None:
        """Nothing is pending outside a transaction; drop what a failed one left."""
        release(self.producer)

    def _text(self, exc: BaseException) -> str:
        return self.configs.scrub(str(exc))


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.1)
