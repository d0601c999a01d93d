"""How a librdkafka client is linked to the cluster now: what `KafkaBroker.state()` and
`KafkaConsumer.state()` report, derived from librdkafka itself.

- **Statistics** (`statistics.interval.ms`, EVENTBUS_KAFKA_STATISTICS_INTERVAL_MS): every
  interval librdkafka hands over the state of each broker connection (`brokers[*].state`)
  and, for a consumer, of the group coordinator (`cgrp.state`). They say when the link
  is up again, and they carry the consumer lag (`backlog()`).
- **Error callbacks**: `_ALL_BROKERS_DOWN`, or a connection failure (`_TRANSPORT`, ...)
  of the last broker up (producer) or of the group coordinator (consumer), say at once
  that it is down; their text is the `detail`.

Both callbacks run on the thread that polls the client (the producer's poll thread, a
consumer's poll thread, or `flush`/`close`); they only store plain values, which `state()`
reads without I/O or locks: a readiness probe may ask every second.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from eventbus.toolkit import ConfigurationError, LinkState

from .settings import ClientConfigs, config_error

#: a broker (`"host:port/id: text"`, `"GroupCoordinator: text"`) could not be reached
CONNECTION_ERRORS = frozenset(
    {KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._AUTHENTICATION, KafkaError._SSL}
)
#: entries of `brokers` that are no connection to a cluster node of their own
_NOT_NODES = frozenset({"logical", "internal"})


def statistics_interval(config: dict[str, Any]) -> int:
    """The statistics interval (ms) a client config asks librdkafka for (0: none)."""
    with contextlib.suppress(TypeError, ValueError):
        return max(int(config.get("statistics.interval.ms", 0) or 0), 0)
    return 0


def parse_statistics(text: str) -> dict[str, Any] | None:
    try:
        stats = json.loads(text)
    except ValueError:
        return None
    return stats if isinstance(stats, dict) else None


def nodes_up(stats: dict[str, Any]) -> frozenset[str]:
    """The cluster nodes a client is connected to (state UP), by librdkafka's name
    (`host:port/id`); bootstrap placeholders (no node id yet) and the logical group
    coordinator entry do not count."""
    brokers = stats.get("brokers")
    if not isinstance(brokers, dict):
        return frozenset()
    return frozenset(
        name
        for name, broker in brokers.items()
        if isinstance(broker, dict)
        and broker.get("state") == "UP"
        and broker.get("source") not in _NOT_NODES
        and isinstance(broker.get("nodeid"), int)
        and broker["nodeid"] >= 0
    )


def _named(text: str) -> str:
    """The broker a librdkafka error text names (`"127.0.0.1:9092/1: Connect to ..."`)."""
    return text.partition(": ")[0]


def check_cluster(configs: ClientConfigs, timeout: float) -> None:
    """The start-up check: the cluster answers a DescribeCluster request within `timeout`
    seconds. A refused login or broker certificate raises ConfigurationError as soon as
    librdkafka reports it (retrying would not help, and librdkafka retries forever); no
    answer raises ConnectionError with the last connection error. The probe client is
    gone when this returns, so a refused one does not go on retrying."""
    errors: list[KafkaError] = []
    config = configs.admin()
    config["error_cb"] = errors.append  # served by `poll`, on this thread
    try:
        admin = AdminClient(config)
    except (KafkaException, ValueError, TypeError) as exc:
        raise config_error(configs, exc, "admin client") from None
    future = admin.describe_cluster(request_timeout=timeout)
    deadline = time.monotonic() + timeout
    while not future.done() and (left := deadline - time.monotonic()) > 0:
        admin.poll(min(left, 0.1))
        for error in errors:
            refusal = security_refusal(configs, error)
            if refusal is not None:
                raise ConfigurationError(refusal)
    try:
        if not future.done():
            raise TimeoutError
        future.result()
    except (KafkaException, TimeoutError) as exc:
        last = [configs.scrub(e.str()) for e in errors if e.code() in CONNECTION_ERRORS]
        why = last[-1] if last else configs.scrub(str(exc)) or "no answer"
        raise ConnectionError(
            f"cannot reach Kafka at {configs.target.redacted} within {timeout}s: {why}; is "
            "the broker running, and are EVENTBUS_URL and the SASL/SSL options right?"
        ) from None


def security_refusal(configs: ClientConfigs, error: KafkaError) -> str | None:
    """What a librdkafka error says about the security settings, naming the ones to
    change; None when it is no refused login or broker certificate."""
    text = configs.scrub(error.str())
    where = f"Kafka at {configs.target.redacted}"
    common = configs.common
    if error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
        return (
            f"{where} refused the SASL login of user {common.get('sasl.username')!r} "
            f"({common.get('sasl.mechanism')}): {text}; check EVENTBUS_KAFKA_SASL_USERNAME, "
            "EVENTBUS_KAFKA_SASL_PASSWORD (or the user:password in EVENTBUS_URL) and "
            "EVENTBUS_KAFKA_SASL_MECHANISM"
        )
    if error.code() == KafkaError._SSL and "certificate verify failed" in text:
        ca = common.get("ssl.ca.location")
        return (
            f"the TLS certificate of {where} could not be verified with "
            f"{'the CA file ' + repr(ca) if ca else 'the system CAs'}: {text}; set "
            "EVENTBUS_KAFKA_SSL_CA_LOCATION to the CA that signed the brokers' certificates "
            "(and, if the host name does not match, connect to one the certificate names: "
            "EVENTBUS_URL, or EVENTBUS_KAFKA_SSL_VERIFY_HOSTNAME=false, never in production)"
        )
    return None


class Link:
    """The link of one client: started, down (and why), fatally broken, closed.

    Without statistics (interval 0) it is not tracked: only a fatal error or `close`
    makes it not connected, since nothing would say when it is up again.
    """

    #: what the `detail` while down starts with
    unreachable = ""

    def __init__(self, configs: ClientConfigs) -> None:
        self.configs = configs
        self.tracking = False
        self.started = False
        self.closed = False
        #: known to be unreachable now (from an error or the statistics)
        self.down = False
        #: the last connection error (scrubbed), the `detail` while down
        self.error = ""
        #: a fatal error (scrubbed): the client cannot work any more
        self.fatal: str | None = None
        #: times the link came back after being down
        self.reconnects = 0

    def start(self, config: dict[str, Any]) -> None:
        """The client is being made with `config`: a fresh link."""
        self.tracking = statistics_interval(config) > 0
        self.started = True
        self.closed = self.down = False
        self.error = ""
        self.fatal = None
        self.reconnects = 0

    def problem(self) -> str | None:
        """Why the link is not usable now, or None."""
        if not self.started:
            return "not started"
        if self.fatal is not None:
            return f"fatal error: {self.fatal}"
        if self.closed:
            return "closed"
        if self.down:
            return self.unreachable + (self.error or "no Kafka broker is reachable")
        return None

    # callbacks (the polling thread)

    def on_error(self, error: KafkaError) -> None:
        """From `error_cb`: note what an error says of the link."""
        text = self.configs.scrub(error.str())
        if error.fatal():
            self.fatal = text
            return
        code = error.code()
        if code == KafkaError._ALL_BROKERS_DOWN:
            if not self.down or not self.error:  # keep the connection error that led here
                self.error = f"all Kafka brokers are down ({text})"
            self._set_down(True)
        elif code in CONNECTION_ERRORS:
            self.error = text
            if self._lost(_named(text)):
                self._set_down(True)

    def _lost(self, name: str) -> bool:
        """Whether a connection failure of the broker `name` leaves the link down."""
        raise NotImplementedError

    def _set_down(self, down: bool) -> None:
        if not self.tracking or down == self.down:
            return
        self.down = down
        if not down:
            self.reconnects += 1


class ProducerLink(Link):
    """The producer's link (`KafkaBroker.state()`): up while a cluster node is connected.

    An idle producer keeps one connection to the cluster (librdkafka's metadata
    refreshes); right after start it may have none yet, which is not "down": only a
    connection error since the link was last seen up makes a link without any node
    connected down.
    """

    def __init__(self, configs: ClientConfigs) -> None:
        super().__init__(configs)
        #: nodes connected in the last statistics (None: none received yet)
        self.up: frozenset[str] | None = None
        #: a connection error since a node was last seen connected
        self.failed = False

    def on_error(self, error: KafkaError) -> None:
        if error.code() in CONNECTION_ERRORS or error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.failed = True
        super().on_error(error)

    def start(self, config: dict[str, Any]) -> None:
        super().start(config)
        self.up = None
        self.failed = False

    def _lost(self, name: str) -> bool:
        if self.up is None:  # no statistics yet: the cluster answered at start
            return False
        self.up -= {name}
        return not self.up

    def on_statistics(self, text: str) -> None:
        """`stats_cb`."""
        stats = parse_statistics(text)
        if stats is None:
            return
        up = self.up = nodes_up(stats)
        if up:
            self.failed = False
            self._set_down(False)
        elif self.failed:
            self._set_down(True)

    def state(self) -> LinkState:
        problem = self.problem()
        return LinkState(problem is None, problem or "", self.reconnects)


class GroupLink(Link):
    """A consumer's link to its group coordinator (`KafkaConsumer.state()`): up while the
    statistics say the coordinator is connected (`cgrp.state` "up")."""

    #: librdkafka's name of the connection to the group coordinator
    COORDINATOR = "GroupCoordinator"
    unreachable = "the group coordinator is not reachable: "

    def _lost(self, name: str) -> bool:
        return name == self.COORDINATOR

    def coordinator(self, stats: dict[str, Any]) -> None:
        """Note the group coordinator's state from a consumer's statistics."""
        group = stats.get("cgrp")
        if not isinstance(group, dict):
            return
        state = group.get("state")
        if state == "up":
            self._set_down(False)
        elif isinstance(state, str):
            if not self.down:
                self.error = f"librdkafka's group state is {state!r}"
            self._set_down(True)

    def joined(self) -> None:
        """The group coordinator handed out an assignment: it is reachable."""
        self._set_down(False)
