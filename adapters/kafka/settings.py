"""Kafka settings: the URL, `EVENTBUS_KAFKA_*` options and the librdkafka client configs.

    kafka://127.0.0.1:9092            kafka://user:password@b1:9092,b2:9092  (SASL)

Options come from `EventBus(url, partitions=12)` or the environment
(`EVENTBUS_KAFKA_PARTITIONS=12`, `EVENTBUS_KAFKA_CONFIG='{"fetch.wait.max.ms": 50}'`);
explicit options win. Per subscription: `bus.subscribe(..., partitions=3, config={...})`.
Passwords live in `SecretStr`s; secret-looking librdkafka properties are redacted in reprs,
and every error text is scrubbed of secret values before it leaves this package.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventbus.toolkit import (
    ConfigurationError,
    RedactedTarget,
    Settings,
    is_secret_key,
    parse_options,
    redact_mapping,
    redact_url,
)

DEFAULT_PORT = 9092
MiB = 1024 * 1024
#: the producer's `message.max.bytes` unless configured: large enough for the retry and
#: dead-letter copies of any record a stream topic stores (their topics are made to take
#: them); what a stream topic does not take, the broker refuses (a clear PublishError)
PRODUCER_MAX_BYTES = 64 * MiB
#: properties `is_secret_key` flags (`sasl.*`) whose values are no secret: scrubbing them
#: would mask every mention of the user name or the mechanism in error texts
NOT_SECRET = frozenset({"sasl.username", "sasl.mechanism", "sasl.mechanisms"})
SecurityProtocol = Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]


class KafkaSettings(BaseSettings):
    """Client-wide options (environment prefix `EVENTBUS_KAFKA_`)."""

    model_config = SettingsConfigDict(env_prefix="EVENTBUS_KAFKA_", extra="forbid", frozen=True)

    #: partitions of stream and retry topics that eventbus creates
    partitions: int = Field(default=6, ge=1, le=10_000)
    #: partitions of dead-letter and replay topics (1 keeps dead letters in order)
    dlq_partitions: int = Field(default=1, ge=1, le=10_000)
    #: replication factor of created topics (None: the broker's default.replication.factor)
    replication_factor: int | None = Field(default=None, ge=1, le=32767)
    #: create missing topics with the AdminClient; False: a missing topic is an error
    create_topics: bool = True
    #: librdkafka properties for every client (producer, consumers, admin)
    config: dict[str, Any] = Field(default_factory=dict)
    #: librdkafka properties for the producer only / the consumers only
    producer_config: dict[str, Any] = Field(default_factory=dict)
    consumer_config: dict[str, Any] = Field(default_factory=dict)
    #: static group membership (KIP-345): a stable name of this process (a pod's name),
    #: unique among the members of its groups. Each subscription joins its group as
    #: `<instance_id>.<stream>`. A member that restarts (crashed or stopped) within its
    #: group's `session.timeout.ms` takes its partitions back at once, with no
    #: rebalance: the others never pause, and their commits are never held up by one.
    #: The price: a member that stops for good (scaled down) holds its partitions
    #: until that session runs out, and two processes given one name fence each other.
    instance_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$"
    )
    #: seconds a publish may wait for the broker's confirmation, retries and leader
    #: changes included, before it raises PublishError (the producer's
    #: `message.timeout.ms`; transactional producers follow `transaction_timeout`)
    publish_timeout: float = Field(default=120.0, ge=0.01, le=2_000_000)
    #: producer batching delay (ms) and compression
    linger_ms: float = Field(default=5.0, ge=0, le=900_000)
    compression: Compression = "none"
    #: records of one partition fetched but not yet finished before the partition is paused
    partition_buffer: int = Field(default=5000, ge=1, le=1_000_000)
    #: bytes (record values and keys) one subscription holds fetched but not yet finished;
    #: its assigned partitions share them evenly, a partition whose share is full pauses
    #: (it always takes one record, however large); also sizes librdkafka's prefetch
    partition_buffer_bytes: int = Field(default=64 * MiB, ge=64 * 1024, le=1 << 40)
    #: how often finished offsets are committed (ms); also on revoke and on stop
    commit_interval_ms: int = Field(default=500, ge=10, le=3_600_000)
    #: seconds `subscribe` waits for the partition assignment ("ready means ready")
    assignment_timeout: float = Field(default=60.0, gt=0)
    #: seconds a revoked partition waits for its in-flight records before it is handed over
    revoke_timeout: float = Field(default=30.0, ge=0)
    #: exactly-once subscriptions: how often (ms) the finished records' outputs, retry and
    #: dead-letter copies and offsets commit in one transaction (replaces
    #: `commit_interval_ms` there). Longer: fewer, larger transactions (more throughput),
    #: and read_committed consumers see the outputs that much later
    transaction_interval_ms: int = Field(default=100, ge=1, le=900_000)
    #: seconds one transaction (begin, produce, send offsets, commit) may take before it is
    #: aborted and its records processed again
    transaction_timeout: float = Field(default=30.0, gt=0)
    #: how often (ms) librdkafka hands the producer and the consumers its statistics:
    #: broker and group-coordinator states (`state()`: connected, attached) and consumer
    #: lag (`backlog()`); 0 turns them off (state() then follows the rebalance callbacks
    #: and fatal errors only, backlog() is None)
    statistics_interval_ms: int = Field(default=1000, ge=0, le=86_400_000)
    #: request/reply: the reply topic of a requesting bus is
    #: `<reply_topic_prefix>.replies.<host>-<pid>-<random>`; a responder replies only to
    #: topics under its own prefix (requesters and responders must agree on it)
    reply_topic_prefix: str = Field(
        default="eventbus", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$"
    )
    #: how long a reply topic keeps its records (ms): replies are read at once or never
    reply_retention_ms: int = Field(default=60_000, ge=1000, le=86_400_000)
    #: seconds `start` waits for the cluster to answer
    connect_timeout: float = Field(default=15.0, gt=0)
    #: seconds admin requests (create/describe topics) may take; also how long listing or
    #: replaying dead letters may go without progress, and how long a dead-letter or retry
    #: copy waits for its delivery report before the pipeline retries (that same copy)
    admin_timeout: float = Field(default=30.0, gt=0)
    #: security: protocol, SASL credentials (also from the URL's user:password), TLS files
    security_protocol: SecurityProtocol | None = None
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_verify_hostname: bool = True

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if isinstance(value, dict):
                yield name, redact_mapping(value)
            else:
                yield name, value


class SubscriptionOptions(BaseModel):
    """Options of one `bus.subscribe(...)` on Kafka."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: partitions of the stream (and retry) topics if this subscription creates them
    partitions: int | None = Field(default=None, ge=1, le=10_000)
    partition_buffer: int | None = Field(default=None, ge=1, le=1_000_000)
    partition_buffer_bytes: int | None = Field(default=None, ge=64 * 1024, le=1 << 40)
    #: librdkafka properties for this subscription's consumer
    config: dict[str, Any] = Field(default_factory=dict)
    #: exactly-once subscriptions: the transactional producer's `transactional.id`.
    #: Default: a new unique one per consumer instance (a zombie member is then fenced by
    #: its group generation when it commits, KIP-447). A stable id per instance (a pod
    #: name) also fences a zombie of the same id at once when its replacement starts.
    transactional_id: str | None = Field(default=None, min_length=1, max_length=200)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_mapping(value) if isinstance(value, dict) else value


def load_kafka_settings(options: dict[str, Any]) -> KafkaSettings:
    return parse_options(
        KafkaSettings, options, label="Kafka EventBus(...) option", prefix="EVENTBUS_KAFKA_"
    )


@dataclass(frozen=True, slots=True, repr=False)
class Target(RedactedTarget):
    """Where to connect, parsed from the URL. `repr` never shows the password."""

    bootstrap: str
    username: str | None
    password: SecretStr | None
    redacted: str


def parse_url(url: str) -> Target:
    """`kafka://[user:password@]host[:port][,host[:port]...]` -> bootstrap servers."""
    redacted = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() != "kafka":
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r}: the Kafka adapter needs kafka://")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"EVENTBUS_URL {redacted!r}: a kafka:// URL is kafka://host:port[,host:port]; "
            "put other settings in EVENTBUS_KAFKA_* options"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = unquote(user)
        password = SecretStr(unquote(secret)) if sep else None
    servers = [_server(item.strip(), redacted) for item in hostlist.split(",") if item.strip()]
    if not servers:
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r} names no Kafka broker")
    return Target(",".join(servers), username, password, redacted)


def _server(item: str, redacted: str) -> str:
    if item.startswith("["):  # [::1]:9092
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        host = f"[{host}]"
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r}: broker {item!r} has no host")
    if not port_text:
        return f"{host}:{DEFAULT_PORT}"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r}: broker {item!r} has a bad port")
    return f"{host}:{port_text}"


class ClientConfigs:
    """The librdkafka configurations of one broker: common, producer, consumer, admin.

    Built once from the URL and the settings; `secrets` are the values that error texts
    and log lines must never show (`scrub`).
    """

    def __init__(self, target: Target, settings: KafkaSettings) -> None:
        self.target = target
        self.settings = settings
        common: dict[str, Any] = {"bootstrap.servers": target.bootstrap}
        secrets: list[str] = []
        username = settings.sasl_username or target.username
        password = settings.sasl_password or target.password
        protocol = settings.security_protocol
        if username is not None:
            common["sasl.username"] = username
            common["sasl.mechanism"] = settings.sasl_mechanism or "PLAIN"
            protocol = protocol or "sasl_plaintext"
        elif settings.sasl_mechanism:
            common["sasl.mechanism"] = settings.sasl_mechanism
        if password is not None:
            common["sasl.password"] = password.get_secret_value()
        if protocol:
            common["security.protocol"] = protocol
        for prop, value in (
            ("ssl.ca.location", settings.ssl_ca_location),
            ("ssl.certificate.location", settings.ssl_certificate_location),
            ("ssl.key.location", settings.ssl_key_location),
        ):
            if value:
                common[prop] = value
        if settings.ssl_key_password is not None:
            common["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
        if not settings.ssl_verify_hostname:
            common["ssl.endpoint.identification.algorithm"] = "none"
        self.user = _plain(settings.config)
        self.user_producer = _plain(settings.producer_config)
        self.user_consumer = _plain(settings.consumer_config)
        for values in (common, self.user, self.user_producer, self.user_consumer):
            for prop, value in values.items():
                secret = is_secret_key(prop) and prop not in NOT_SECRET
                if secret and isinstance(value, str) and value:
                    secrets.append(value)
        self.common = {**common, **self.user}
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """`text` with every secret value replaced by `***`."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def producer(self, *, statistics: bool = False, transactional: bool = False) -> dict[str, Any]:
        """The producer's config; with `statistics` (a producer that polls all the time
        and reads them), librdkafka's statistics every `statistics_interval_ms`. A
        `transactional` producer's delivery timeout is left to librdkafka, which bounds
        it by `transaction.timeout.ms`; the others' is `publish_timeout`."""
        s = self.settings
        config: dict[str, Any] = {
            **self.common,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": s.linger_ms,
            "compression.type": s.compression,
            "partitioner": "murmur2_random",  # the Java client's key -> partition mapping
            "allow.auto.create.topics": False,  # topics are made by eventbus, not by accident
            "message.max.bytes": PRODUCER_MAX_BYTES,
        }
        if not transactional:
            config["message.timeout.ms"] = max(int(s.publish_timeout * 1000), 1)
        if statistics:
            config["statistics.interval.ms"] = s.statistics_interval_ms
        config.update(self.user)
        config.update(self.user_producer)
        return config

    @property
    def producer_max_bytes(self) -> int:
        """The largest record the producer sends (its `message.max.bytes`)."""
        try:
            return int(self.producer()["message.max.bytes"])
        except (TypeError, ValueError):
            return PRODUCER_MAX_BYTES

    def consumer(
        self,
        group: str,
        extra: dict[str, Any] | None = None,
        buffer_bytes: int | None = None,
        *,
        statistics: bool = False,
    ) -> dict[str, Any]:
        """A consumer's config. librdkafka's own prefetch is bounded by a quarter of the
        subscription's byte buffer (`buffer_bytes`), between 1 and 16 MiB. With
        `statistics` (a subscription's consumer), librdkafka's statistics every
        `statistics_interval_ms`."""
        prefetch = min(
            max((buffer_bytes or self.settings.partition_buffer_bytes) // 4, MiB), 16 * MiB
        )
        config = {
            **self.common,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # records of aborted transactions are never delivered, and those of open ones
            # only once committed (librdkafka's default, stated: exactly-once relies on it)
            "isolation.level": "read_committed",
            # incremental cooperative rebalancing: a join or leave revokes only the
            # partitions that change owner, so the rest of the group (and the member's
            # other partitions) never stop for a handler that holds one that moves
            "partition.assignment.strategy": "cooperative-sticky",
            "allow.auto.create.topics": False,
            # how long the broker holds a fetch for partitions with nothing new. A paused
            # partition that resumes joins only the next fetch, after the one in flight,
            # and the group's retry partition is usually empty, so a backlog read through
            # a full `partition_buffer` waits up to this long per refill: at most
            # `partition_buffer` records per partition per fetch (measured with
            # partition_buffer=1000 on 3 partitions: 27k/s at 100 ms, 57k/s at 25 ms).
            # Shorter costs idle fetches, 40/s per subscription: 4 idle subscriptions took
            # 1.5% of a core in the client and 4.8% in a local broker, against 0.9-1.4%
            # and 3.0-3.2% at 100 ms
            "fetch.wait.max.ms": 25,
            # how long librdkafka postpones a partition's next fetch once its local queue
            # holds `queued.max.messages.kbytes` (or `queued.min.messages`): 1000 ms by
            # default since librdkafka 2.4, so a consumer behind by more than its prefetch
            # stopped fetching for a second at a time, though it drains the queue in
            # milliseconds (measured: 10 KB events end to end, 4.6-8.2k/s against the raw
            # loop's 20-25k/s, p99 1 s; at 25 ms, 24.8k/s). 25 ms, as the fetch wait: a
            # re-check of the queue per partition, nothing more
            "fetch.queue.backoff.ms": 25,
            "queued.max.messages.kbytes": prefetch // 1024,
            "fetch.max.bytes": prefetch,
        }
        if statistics:
            config["statistics.interval.ms"] = self.settings.statistics_interval_ms
        chosen = {**self.user, **self.user_consumer, **_plain(extra or {})}
        if "fetch.max.bytes" not in chosen:  # librdkafka: fetch.max.bytes >= message.max.bytes
            with contextlib.suppress(TypeError, ValueError):
                wanted = int(chosen.get("message.max.bytes", 0))
                config["fetch.max.bytes"] = max(prefetch, wanted)
        config.update(chosen)
        return config

    def admin(self) -> dict[str, Any]:
        return dict(self.common)

    def describe(self, config: dict[str, Any]) -> dict[str, Any]:
        """A config as it may be shown (secret values masked)."""
        return {k: ("***" if is_secret_key(k) else v) for k, v in config.items()}


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """librdkafka wants plain values: unwrap the `SecretStr`s of `shield_secrets`."""
    return {k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in config.items()}


def shield_secrets(options: dict[str, Any]) -> None:
    """Wrap secret-looking librdkafka properties inside the `config` options in `SecretStr`,
    so that the kernel's `Settings` repr (which masks top-level option names only) cannot
    show them. Changes the settings' own options dict, never the caller's."""
    for name in ("config", "producer_config", "consumer_config"):
        values = options.get(name)
        if isinstance(values, dict) and any(
            is_secret_key(k) and isinstance(v, str) for k, v in values.items()
        ):
            options[name] = {
                k: (SecretStr(v) if is_secret_key(k) and isinstance(v, str) else v)
                for k, v in values.items()
            }


def config_error(configs: ClientConfigs, exc: BaseException, what: str) -> ConfigurationError:
    """A librdkafka configuration failure as a ConfigurationError naming where to fix it."""
    return ConfigurationError(
        f"Kafka {what} rejected its configuration ({configs.target.redacted}): "
        f"{configs.scrub(str(exc))}; check EVENTBUS_KAFKA_CONFIG / PRODUCER_CONFIG / "
        "CONSUMER_CONFIG and the SASL/SSL options"
    )


def client_configs(settings: Settings) -> ClientConfigs:
    """The client configurations of one bus (secrets in options shielded first)."""
    shield_secrets(settings.options)
    return ClientConfigs(parse_url(settings.url), load_kafka_settings(settings.options))
