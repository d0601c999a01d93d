"""RabbitMQ settings: the URL, `EVENTBUS_RABBITMQ_*` options and per-subscription options.

    amqp://user:password@host:5672/vhost        amqps://user:password@host:5671/vhost
    amqp://user:password@host1:5672,host2:5672,[::1]:5672/vhost      (nodes of a cluster)

A URL may name several nodes of one cluster (same credentials and vhost): the connection
goes to the first that answers, in the order given (`shuffle_hosts=True`: a random order
per process, to spread many clients), and a lost connection moves on to the next node
(see `link.py`).

Options come from `EventBus(url, prefetch=300)` or the environment
(`EVENTBUS_RABBITMQ_PREFETCH=300`); explicit options win. Per subscription,
`bus.subscribe(..., partitions=4, queue_type="classic", prefetch=50)`.
The password lives in a `SecretStr` and never reaches a log line, repr or error.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventbus.toolkit import (
    ConfigurationError,
    RedactedTarget,
    parse_options,
    redact_url,
)

QueueType = Literal["quorum", "classic"]


class RabbitMQSettings(BaseSettings):
    """Connection-wide options (environment prefix `EVENTBUS_RABBITMQ_`)."""

    model_config = SettingsConfigDict(env_prefix="EVENTBUS_RABBITMQ_", extra="forbid", frozen=True)

    #: unacknowledged deliveries a consumer channel may hold (basic.qos)
    prefetch: int = Field(default=200, ge=1, le=65535)
    #: publishes awaiting their broker confirm at once (the pipelining window)
    confirm_window: int = Field(default=256, ge=1, le=65535)
    #: queue type of group, retry and dead-letter queues
    queue_type: QueueType = "quorum"
    #: publish `mandatory`: an event that reaches no queue raises UnroutableError
    #: (False: the broker drops it silently, as plain AMQP does)
    mandatory: bool = True
    #: one active consumer per group queue: per-key order (False: competing consumers)
    single_active_consumer: bool = True
    #: AMQP heartbeat in seconds (0 disables)
    heartbeat: int = Field(default=30, ge=0, le=65535)
    #: connection name shown in the management UI
    connection_name: str = "eventbus"
    #: seconds one connection attempt to one node may take (at start and when reconnecting)
    connect_timeout: float = Field(default=15.0, gt=0)
    #: a URL naming several nodes: try them in a random order (drawn once per process)
    #: instead of the order given
    shuffle_hosts: bool = False
    #: upper bound of the exponential backoff between reconnection attempts (seconds)
    max_reconnect_backoff: float = Field(default=5.0, gt=0)
    #: seconds a publish may take, reconnections included, before it raises PublishError
    publish_timeout: float = Field(default=120.0, gt=0)
    #: partitioned groups: seconds between a member's heartbeats to the other members
    member_heartbeat: float = Field(default=1.0, gt=0, le=60)
    #: partitioned groups: a member not heard of for this many seconds is gone and its
    #: partitions are reassigned (the broker fails its queues over at once if its
    #: connection closed; this covers a member that hangs with its connection open)
    member_timeout: float = Field(default=3.5, gt=0, le=600)
    #: TLS (amqps://): CA bundle, client certificate and key, key password, verification
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: SecretStr | None = None
    verify_tls: bool = True


class SubscriptionOptions(BaseModel):
    """Options of one `bus.subscribe(...)` on RabbitMQ."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: N queues `<stream>.<group>.<i>` behind a consistent-hash exchange (None: one queue);
    #: the group's members share them out (at most one active consumer per queue), so up
    #: to N members work in parallel while each key keeps its order
    partitions: int | None = Field(default=None, ge=1, le=1024)
    queue_type: QueueType | None = None
    prefetch: int | None = Field(default=None, ge=1, le=65535)
    single_active_consumer: bool | None = None


def load_rabbitmq_settings(options: dict[str, Any]) -> RabbitMQSettings:
    settings = parse_options(
        RabbitMQSettings,
        options,
        label="RabbitMQ EventBus(...) option",
        prefix="EVENTBUS_RABBITMQ_",
    )
    if settings.member_timeout <= 2 * settings.member_heartbeat:
        raise ConfigurationError(
            f"EVENTBUS_RABBITMQ_MEMBER_TIMEOUT ({settings.member_timeout}) must be more than "
            f"twice EVENTBUS_RABBITMQ_MEMBER_HEARTBEAT ({settings.member_heartbeat}), or "
            "live members of a partitioned group would be dropped between two heartbeats"
        )
    return settings


#: one node: (host, port); an IPv6 host without brackets
Address = tuple[str, int]


@dataclass(frozen=True, slots=True, repr=False)
class Target(RedactedTarget):
    """Where to connect, parsed from the URL. `repr` never shows the password."""

    #: the nodes, in the URL's order (at least one)
    addresses: tuple[Address, ...]
    vhost: str
    user: str
    password: SecretStr
    tls: bool
    redacted: str


def parse_url(url: str) -> Target:
    """`amqp[s]://[user[:password]@]host[:port][,host[:port]...][/vhost]` -> `Target`."""
    redacted = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(
            f"EVENTBUS_URL {redacted!r} is not a valid amqp:// URL: {exc}"
        ) from None
    tls = parts.scheme.lower() == "amqps"
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if "/" in path:
        raise ConfigurationError(
            f"EVENTBUS_URL {redacted!r}: the path is the vhost; encode a '/' in a vhost name as %2F"
        )
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    default_port = 5671 if tls else 5672
    items = [item.strip() for item in hostlist.split(",")]
    if len(items) > 1 and not all(items):
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r}: an empty host in the host list")
    addresses = tuple(_address(item, default_port, redacted) for item in items)
    return Target(
        addresses=addresses,
        vhost=unquote(path) or "/",
        user=unquote(user) if at and user else "guest",
        password=SecretStr(unquote(password) if at and colon and password else "guest"),
        tls=tls,
        redacted=redacted,
    )


def _address(item: str, default_port: int, redacted: str) -> Address:
    """`host`, `host:port`, `[v6]` or `[v6]:port` -> (host, port)."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"EVENTBUS_URL {redacted!r}: bad IPv6 host {item!r}")
        port_text = rest[1:]
    elif item.count(":") > 1:
        raise ConfigurationError(
            f"EVENTBUS_URL {redacted!r}: write the IPv6 host {item!r} in brackets"
        )
    else:
        host, _, port_text = item.partition(":")
    if not port_text:
        return (unquote(host) or "localhost", default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"EVENTBUS_URL {redacted!r}: {item!r} has a bad port")
    return (unquote(host) or "localhost", int(port_text))


def describe_address(address: Address) -> str:
    """`host:port` (an IPv6 host in brackets), for log lines and health."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_context(target: Target, settings: RabbitMQSettings) -> ssl.SSLContext | None:
    """The TLS context of an `amqps://` URL (None for `amqp://`)."""
    if not target.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"EVENTBUS_RABBITMQ_CA_FILE ({settings.ca_file}): cannot load the CA "
            f"certificates: {_load_error(exc)}"
        ) from None
    if settings.cert_file:
        password = settings.key_password.get_secret_value() if settings.key_password else None
        try:
            context.load_cert_chain(settings.cert_file, settings.key_file, password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"EVENTBUS_RABBITMQ_CERT_FILE ({settings.cert_file}) / KEY_FILE "
                f"({settings.key_file or 'in the CERT_FILE'}): cannot load the client "
                f"certificate and key: {_load_error(exc)} (a wrong or missing "
                "EVENTBUS_RABBITMQ_KEY_PASSWORD for an encrypted key, or a key that does not "
                "belong to the certificate, fails like this)"
            ) from None
    elif settings.key_file:
        raise ConfigurationError(
            "EVENTBUS_RABBITMQ_KEY_FILE is set but EVENTBUS_RABBITMQ_CERT_FILE is not: a "
            "client key needs its certificate"
        )
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_error(exc: OSError | ssl.SSLError) -> str:
    """Why TLS material did not load (never a password: OpenSSL does not echo it)."""
    if isinstance(exc, ssl.SSLError):
        return f"{type(exc).__name__}: {exc.reason or exc}"
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def tls_refusal(
    exc: BaseException, target: Target, settings: RabbitMQSettings, host: str | None = None
) -> str | None:
    """What a failed first connection (to `host`: the first node if None) says about the
    TLS settings, naming the one to change; None when it is no TLS refusal (a broker that
    is down, say).

    aiormq wraps the `ssl` error in its own (keeping only its text), so this reads the
    OpenSSL reason in the texts of the exception and of its chain."""
    if not target.tls:
        return None
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts)
    where = f"RabbitMQ at {target.redacted}"
    reason = _openssl_reason(text)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "mismatch" in text:
            return (
                f"the TLS certificate of {where} is not valid for the host "
                f"{host or target.addresses[0][0]!r} "
                f"({reason}): connect to a host name the certificate names (the host in "
                "EVENTBUS_URL), or turn verification off with EVENTBUS_RABBITMQ_VERIFY_TLS="
                "false (never in production)"
            )
        return (
            f"the TLS certificate of {where} could not be verified ({reason}) with "
            f"{'the CA file ' + repr(settings.ca_file) if settings.ca_file else 'the system CAs'}: "
            "set EVENTBUS_RABBITMQ_CA_FILE to the CA that signed the broker's certificate"
        )
    if "CERTIFICATE_REQUIRED" in text or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text:
        return (
            f"{where} requires a client certificate ({reason}): set "
            "EVENTBUS_RABBITMQ_CERT_FILE and EVENTBUS_RABBITMQ_KEY_FILE (and "
            "EVENTBUS_RABBITMQ_KEY_PASSWORD for an encrypted key)"
        )
    if any(alert in text for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
        return (
            f"{where} rejected the client certificate EVENTBUS_RABBITMQ_CERT_FILE "
            f"({settings.cert_file}) ({reason}): it must be signed by a CA the broker trusts"
        )
    return None


def tls_hint(exc: BaseException, target: Target, settings: RabbitMQSettings) -> str:
    """A hint for a first TLS connection the broker closed without saying why. Under TLS
    1.3 a broker that requires client certificates checks them after the client finished
    its handshake, so its alert often reaches the client as a mere reset."""
    if not target.tls:
        return ""
    text = str(exc)
    if not any(word in text for word in ("reset", "EOF", "closed")):
        return ""
    if settings.cert_file:
        return (
            "; the broker closed the TLS connection: if it checks client certificates, it "
            f"rejected EVENTBUS_RABBITMQ_CERT_FILE ({settings.cert_file}): it must be signed "
            "by a CA the broker trusts"
        )
    return (
        "; the broker closed the TLS connection: if it requires a client certificate, set "
        "EVENTBUS_RABBITMQ_CERT_FILE and EVENTBUS_RABBITMQ_KEY_FILE"
    )


def _openssl_reason(text: str) -> str:
    """The OpenSSL part of an error text: `[SSL: CODE] reason` up to its `(_ssl.c:...)`."""
    start = text.find("[SSL")
    if start < 0:
        return "TLS handshake failed"
    end = text.find(" (_ssl.c", start)
    return text[start : end if end > 0 else start + 200]
