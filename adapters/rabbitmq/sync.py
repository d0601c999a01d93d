"""The sync face on RabbitMQ: pika `BlockingConnection`, publisher confirms, mandatory,
persistent, the same CloudEvents headers as the async path.

Thread-safety: pika's blocking connection must not be used by two threads at once, so
`publish` holds a lock; threads publishing through one transport take turns (give each
busy thread its own `SyncPublisher` for parallelism). pika confirms one message at a
time here (no pipelining in `BlockingChannel`); use the async bus for throughput.
A lost connection is re-opened once and the unconfirmed message sent again (a duplicate
is possible, a loss is not); a URL naming several nodes: pika tries them in the URL's
order, the node of the last loss last. A message that cannot travel (a routing key over
255 bytes, headers larger than a frame) is refused with `PublishError` before it is sent
(`limits`): RabbitMQ would close the connection over it.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.exchange_type import ExchangeType

from eventbus.toolkit import (
    ConfigurationError,
    Message,
    PublishError,
    Settings,
    UnroutableError,
    to_amqp,
)

from .limits import DEFAULT_FRAME_MAX, check_publish
from .settings import (
    Address,
    RabbitMQSettings,
    Target,
    load_rabbitmq_settings,
    parse_url,
    tls_context,
    tls_hint,
    tls_refusal,
)

_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
    OSError,
)


class RabbitMQSyncTransport:
    system = "rabbitmq"

    def __init__(self, settings: Settings) -> None:
        self.settings: RabbitMQSettings = load_rabbitmq_settings(dict(settings.options))
        self.target: Target = parse_url(settings.url)
        self._context: ssl.SSLContext | None = tls_context(self.target, self.settings)
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._declared: set[str] = set()
        self._frame_max = DEFAULT_FRAME_MAX
        #: the node of the current connection, and of the last one lost (tried last)
        self._node: Address | None = None
        self._lost: Address | None = None

    def __repr__(self) -> str:
        return f"RabbitMQSyncTransport({self.target.redacted!r})"

    def publish(self, messages: Sequence[Message]) -> None:
        with self._lock:
            for message in messages:
                self._publish_one(message)

    def close(self) -> None:
        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None and connection.is_open:
                with contextlib.suppress(*_LOST):
                    connection.close()

    # --- internals ---------------------------------------------------------------------

    def _publish_one(self, message: Message) -> None:
        headers, content_type = to_amqp(message.attributes, message.attempt)
        properties = pika.BasicProperties(
            content_type=content_type,
            headers=headers,
            delivery_mode=2,
            message_id=message.attributes.get("id"),
        )
        check_publish(
            message.id,
            message.stream,
            message.type,
            headers,
            (properties.message_id, properties.content_type),
            self._frame_max,
            lambda: b"".join(properties.encode()),
        )
        for last_try in (False, True):
            try:
                channel = self._open()
                if message.stream not in self._declared:
                    channel.exchange_declare(message.stream, ExchangeType("topic"), durable=True)
                    self._declared.add(message.stream)
                channel.basic_publish(
                    message.stream,
                    message.type,
                    message.body,
                    properties,
                    mandatory=self.settings.mandatory,
                )
                return
            except pika.exceptions.UnroutableError:
                raise UnroutableError(
                    f"event {message.id} ({message.type}) published to stream "
                    f"{message.stream!r} reached no queue: no group subscribes to this type"
                ) from None
            except pika.exceptions.NackError:
                raise PublishError(
                    f"RabbitMQ did not store event {message.id} ({message.type}): nacked"
                ) from None
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._channel = None
                self._declared.clear()
                if last_try:
                    raise PublishError(
                        f"RabbitMQ closed the channel publishing {message.id}: "
                        f"{exc.reply_code} {exc.reply_text}"
                    ) from None
            except _LOST as exc:
                self._drop()
                if last_try:
                    raise PublishError(
                        f"event {message.id} not confirmed: lost RabbitMQ at "
                        f"{self.target.redacted} ({type(exc).__name__})"
                    ) from None

    def _open(self) -> BlockingChannel:
        channel = self._channel
        if channel is not None and channel.is_open:
            return channel
        if self._connection is None or not self._connection.is_open:
            self._connection = self._connect()
            self._declared.clear()
            params = getattr(getattr(self._connection, "_impl", None), "params", None)
            self._frame_max = int(getattr(params, "frame_max", 0) or DEFAULT_FRAME_MAX)
        channel = self._connection.channel()
        channel.confirm_delivery()
        self._channel = channel
        self._declared.clear()
        return channel

    def _connect(self) -> pika.BlockingConnection:
        """A connection to the first node that accepts, in the URL's order (pika tries
        each once); the node of the last loss is tried last."""
        t = self.target
        addresses = list(t.addresses)
        if self._lost is not None and self._lost in addresses and len(addresses) > 1:
            addresses.remove(self._lost)
            addresses.append(self._lost)
        params = [self._parameters(address) for address in addresses]
        try:
            connection = pika.BlockingConnection(params)
        except pika.exceptions.ProbableAuthenticationError:
            raise ConfigurationError(
                f"RabbitMQ at {t.redacted} refused the login of user {t.user!r} on vhost "
                f"{t.vhost!r}: check the user, password and vhost in EVENTBUS_URL"
            ) from None
        except _LOST as exc:
            refusal = tls_refusal(exc, t, self.settings)
            if refusal is not None:
                raise ConfigurationError(refusal) from None
            raise ConnectionError(
                f"cannot connect to RabbitMQ at {t.redacted}: {type(exc).__name__}"
                f"{tls_hint(exc, t, self.settings)}"
            ) from None
        params_used = getattr(getattr(connection, "_impl", None), "params", None)
        host, port = getattr(params_used, "host", None), getattr(params_used, "port", None)
        self._node = (host, port) if isinstance(host, str) and isinstance(port, int) else None
        return connection

    def _parameters(self, address: Address) -> pika.ConnectionParameters:
        t = self.target
        host, port = address
        tls: dict[str, Any] = (
            {"ssl_options": pika.SSLOptions(self._context, host)} if self._context else {}
        )
        return pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=t.vhost,
            credentials=pika.PlainCredentials(t.user, t.password.get_secret_value()),
            heartbeat=self.settings.heartbeat,
            blocked_connection_timeout=self.settings.publish_timeout,
            socket_timeout=self.settings.connect_timeout,
            client_properties={"connection_name": self.settings.connection_name},
            **tls,
        )

    def _drop(self) -> None:
        self._lost = self._node
        connection, self._connection, self._channel = self._connection, None, None
        self._declared.clear()
        if connection is not None and connection.is_open:
            with contextlib.suppress(*_LOST):
                connection.close()
