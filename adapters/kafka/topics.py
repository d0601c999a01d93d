"""Topics through the AdminClient: create with the configured partitions and replication
factor when allowed, otherwise check that they exist and say which option to change.

Blocking calls: the async broker runs them in a worker thread, the sync face directly.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka import admin as kafka_admin

from eventbus.toolkit import (
    ConfigurationError,
)

from .settings import ClientConfigs, config_error

# not in the type stubs' exports
AlterConfigOpType: Any = getattr(kafka_admin, "AlterConfigOpType")  # noqa: B009
ConfigEntry: Any = getattr(kafka_admin, "ConfigEntry")  # noqa: B009
ConfigResource: Any = getattr(kafka_admin, "ConfigResource")  # noqa: B009
ResourceType: Any = getattr(kafka_admin, "ResourceType")  # noqa: B009


class Topics:
    """Knows which topics exist; creates the missing ones once (`ensure`)."""

    def __init__(self, configs: ClientConfigs) -> None:
        self.configs = configs
        self._admin: kafka_admin.AdminClient | None = None
        self._lock = threading.Lock()
        self.known: set[str] = set()
        #: topics this process created (tests delete them afterwards)
        self.created: set[str] = set()

    @property
    def admin(self) -> kafka_admin.AdminClient:
        with self._lock:
            if self._admin is None:
                try:
                    self._admin = kafka_admin.AdminClient(self.configs.admin())
                except (KafkaException, ValueError, TypeError) as exc:
                    raise config_error(self.configs, exc, "admin client") from None
            return self._admin

    def ensure(self, wanted: dict[str, int], config: dict[str, str] | None = None) -> None:
        """Make sure every topic of `wanted` (name -> partitions) exists; the ones created
        here get the topic `config` (e.g. `max.message.bytes`)."""
        missing = {name: n for name, n in wanted.items() if name not in self.known}
        if not missing:
            return
        settings = self.configs.settings
        if not settings.create_topics:
            absent = self._absent(missing)
            if absent:
                raise ConfigurationError(
                    f"Kafka topic(s) {sorted(absent)} do not exist and topic creation is off "
                    "(EVENTBUS_KAFKA_CREATE_TOPICS=false): create them, or allow eventbus "
                    "to create them"
                )
            self.known.update(missing)
            return
        replication = settings.replication_factor or -1
        futures = self.admin.create_topics(
            [_new_topic(name, n, replication, config) for name, n in missing.items()],
            request_timeout=settings.admin_timeout,
        )
        fresh = []
        for name, future in futures.items():
            try:
                future.result()
                fresh.append(name)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                raise ConfigurationError(
                    f"cannot create Kafka topic {name!r} ({missing[name]} partitions, "
                    f"replication factor {settings.replication_factor or 'broker default'}): "
                    f"{self.configs.scrub(str(exc))}; fix EVENTBUS_KAFKA_PARTITIONS / "
                    "REPLICATION_FACTOR, or create the topic yourself and set "
                    "EVENTBUS_KAFKA_CREATE_TOPICS=false"
                ) from None
        self.created.update(fresh)
        if fresh:
            self._wait_for_leaders(fresh)
        self.known.update(missing)

    def _absent(self, names: Iterable[str]) -> set[str]:
        futures = self.admin.describe_topics(
            TopicCollection(list(names)), request_timeout=self.configs.settings.admin_timeout
        )
        absent = set()
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_TOPIC,
                ):
                    absent.add(name)
                else:
                    raise ConnectionError(
                        f"cannot describe Kafka topic {name!r}: {self.configs.scrub(str(exc))}"
                    ) from None
        return absent

    def _wait_for_leaders(self, names: list[str]) -> None:
        """A created topic is usable once every partition has a leader."""
        deadline = time.monotonic() + self.configs.settings.admin_timeout
        pending = list(names)
        while pending:
            futures = self.admin.describe_topics(TopicCollection(pending), request_timeout=10)
            still = []
            for name, future in futures.items():
                try:
                    description: Any = future.result()
                except KafkaException:
                    still.append(name)
                    continue
                if not description.partitions or any(
                    p.leader is None for p in description.partitions
                ):
                    still.append(name)
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"Kafka topics {pending} have no partition leader yet")
                time.sleep(0.05)

    def record_limits(self, names: Iterable[str]) -> dict[str, int | None]:
        """The `max.message.bytes` of each topic (what one record batch may be); None for
        a topic that does not exist."""
        names = list(names)
        futures = self.admin.describe_configs(
            [ConfigResource(ResourceType.TOPIC, name) for name in names],
            request_timeout=self.configs.settings.admin_timeout,
        )
        limits: dict[str, int | None] = {}
        for resource, future in futures.items():
            name = resource.name
            try:
                entry = future.result().get(_RECORD_LIMIT)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in (
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError._UNKNOWN_TOPIC,
                ):
                    limits[name] = None
                    continue
                raise ConnectionError(
                    f"cannot describe Kafka topic {name!r}: {self.configs.scrub(str(exc))}"
                ) from None
            try:
                limits[name] = int(entry.value) if entry is not None else None
            except (TypeError, ValueError):
                limits[name] = None
        return limits

    def raise_record_limit(self, names: Iterable[str], limit: int) -> None:
        """Set `max.message.bytes` of existing topics to `limit`."""
        entry = ConfigEntry(_RECORD_LIMIT, str(limit), incremental_operation=AlterConfigOpType.SET)
        futures = self.admin.incremental_alter_configs(
            [
                ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
                for name in names
            ],
            request_timeout=self.configs.settings.admin_timeout,
        )
        for resource, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                raise ConfigurationError(
                    f"cannot raise max.message.bytes of Kafka topic {resource.name!r} to "
                    f"{limit} (so that its records' dead-letter copies fit): "
                    f"{self.configs.scrub(str(exc))}; raise it yourself"
                ) from None

    def partitions(self, name: str) -> int | None:
        """Partition count of an existing topic, None if it does not exist."""
        if self._absent([name]):
            return None
        futures = self.admin.describe_topics(
            TopicCollection([name]), request_timeout=self.configs.settings.admin_timeout
        )
        return len(futures[name].result().partitions)

    def delete(self, names: Iterable[str]) -> None:
        """Delete topics (best effort: tests clean up after themselves)."""
        names = list(names)
        if not names:
            return
        futures = self.admin.delete_topics(
            names, request_timeout=self.configs.settings.admin_timeout
        )
        for future in futures.values():
            with contextlib.suppress(KafkaException):
                future.result()
        self.known.difference_update(names)
        self.created.difference_update(names)


_RECORD_LIMIT = "max.message.bytes"


def _new_topic(name: str, partitions: int, replication: int, config: dict[str, str] | None) -> Any:
    new_topic: Any = getattr(kafka_admin, "NewTopic")  # noqa: B009 (not in the type stubs)
    return new_topic(name, partitions, replication, config=config or {})
