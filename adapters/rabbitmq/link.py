"""One AMQP connection (aio-pika), kept alive: reconnects with backoff after any loss.

Several nodes (a URL naming a cluster's nodes): `start` tries them in the URL's order
(or a random order drawn once, `shuffle_hosts`) and keeps the first that accepts the
login. After a loss, the reconnection tries the node after the one it lost first, then
the others in turn, the lost one last (it is the likeliest to be down): one round
through all of them, then a pause (exponential backoff up to `max_reconnect_backoff`)
before the next round. Each attempt is bounded by `connect_timeout`, so a hung node
(accepting TCP, answering nothing) costs one timeout, not a stall.

Users of the link ask for `await link.connection()` whenever they need to open a channel;
it waits while the link is reconnecting. Channels are not restored by the link: the
publisher and every consumer notice their channel closed and reopen their own, which
keeps recovery in one obvious place per user (see `publisher.py`, `consumer.py`).

`state()` tells health and readiness how the link is now, without I/O: connected (to
which node) or not (and the last error), and how many times it reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from yarl import URL

from eventbus.toolkit import (
    ConfigurationError,
    LinkState,
    get_logger,
)

from .settings import (
    Address,
    RabbitMQSettings,
    Target,
    describe_address,
    tls_hint,
    tls_refusal,
)

#: what a lost connection or channel looks like (the operation may be retried)
LOST = (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError)


class Link:
    def __init__(
        self, target: Target, settings: RabbitMQSettings, context: ssl.SSLContext | None
    ) -> None:
        self.target = target
        self.settings = settings
        self._context = context
        self._connection: AbstractConnection | None = None
        self._up = asyncio.Event()
        self._closed = False
        self._reconnector: asyncio.Task[None] | None = None
        self._log = get_logger(broker=target.redacted)
        #: bumped on every (re)connection; a channel opened in an older one is dead
        self.generation = 0
        #: writes waiting for room in the connection's (bounded) frame queue: released
        #: (TimeoutError) when the connection is lost, whose writer will never drain it
        self.blocked: set[asyncio.Timeout] = set()
        #: successful reconnections since `start` (the first connection not counted)
        self.reconnects = 0
        #: why the link is not connected: the last connection error (`_describe`d)
        self._error = "not started"
        #: where the link is connected (host:port, the server's product and cluster)
        self._node = ""
        #: the nodes to try, in order (the URL's, or shuffled once)
        self._addresses: list[Address] = list(target.addresses)
        if settings.shuffle_hosts:
            random.shuffle(self._addresses)
        #: index in `_addresses` of the node of the current (or last) connection
        self._current = 0

    def __repr__(self) -> str:
        return f"Link({self.target.redacted!r}, up={self._up.is_set()})"

    async def start(self) -> None:
        """First connection: each node once, in order; fail fast with a clear error (no
        retry loop) if none accepts. A TLS refusal (wrong CA, host name or client
        certificate) is a configuration error at once: every node would refuse the same."""
        failures: list[str] = []
        hint = ""
        for index, address in enumerate(self._addresses):
            try:
                connection = await self._connect(address)
            except ConfigurationError as exc:
                self._error = _describe(exc)
                raise
            except aiormq.exceptions.ProbableAuthenticationError:
                self._error = "login refused (check the user, password and vhost)"
                raise ConfigurationError(
                    f"RabbitMQ at {self.target.redacted} refused the login of user "
                    f"{self.target.user!r} on vhost {self.target.vhost!r}: check the user, "
                    "password and vhost in EVENTBUS_URL"
                ) from None
            except (TimeoutError, *LOST) as exc:
                refusal = tls_refusal(exc, self.target, self.settings, address[0])
                if refusal is not None:
                    self._error = _describe(exc)
                    raise ConfigurationError(refusal) from None
                hint = tls_hint(exc, self.target, self.settings)
                failures.append(f"{describe_address(address)}: {_describe(exc)}")
                if len(self._addresses) > 1:
                    self._log.warning(
                        "rabbitmq.node_unreachable",
                        node=describe_address(address),
                        error=_describe(exc),
                    )
                continue
            self._current = index
            self._attach(connection)
            return
        self._error = "; ".join(failures)
        raise ConnectionError(
            f"cannot connect to RabbitMQ at {self.target.redacted}: {self._error} "
            f"(is the broker running? scripts/rabbitmq.sh starts one){hint}"
        )

    async def connection(self) -> AbstractConnection:
        """The live connection (waits while reconnecting)."""
        while True:
            if self._closed:
                raise ConnectionError(f"RabbitMQ link to {self.target.redacted} is closed")
            connection = self._connection
            if self._up.is_set() and connection is not None and not connection.is_closed:
                return connection
            await self._up.wait()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    @property
    def is_connected(self) -> bool:
        """Up, and its connection open (not yet known lost)."""
        connection = self._connection
        return (
            self._up.is_set()
            and not self._closed
            and connection is not None
            and not connection.is_closed
        )

    def state(self) -> LinkState:
        """How the link is now (no I/O): connected to which node, or the last error."""
        if self._closed:
            return LinkState(False, "closed", self.reconnects)
        if self.is_connected:
            return LinkState(True, self._node, self.reconnects)
        return LinkState(False, self._error, self.reconnects)

    async def wait_up(self) -> None:
        await self._up.wait()

    async def close(self) -> None:
        self._closed = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            await asyncio.gather(self._reconnector, return_exceptions=True)
        connection, self._connection = self._connection, None
        self._up.set()  # release waiters: they see `_closed`
        if connection is not None:
            with contextlib.suppress(*LOST):
                await connection.close()

    # --- internals ---------------------------------------------------------------------

    async def _connect(self, address: Address) -> AbstractConnection:
        t = self.target
        host, port = address
        url = URL.build(
            scheme="amqps" if t.tls else "amqp",
            user=t.user,
            password=t.password.get_secret_value(),
            host=host,
            port=port,
            path="/" + quote(t.vhost, safe=""),
            encoded=False,
        ).with_query(
            {"heartbeat": str(self.settings.heartbeat), "name": self.settings.connection_name}
        )
        # made here rather than by `aio_pika.connect`, so that a failed or cancelled attempt
        # is closed at once: left to the garbage collector, aio-pika schedules its close on
        # whatever loop runs then (or warns that the coroutine was never awaited)
        connection = aio_pika.Connection(url, ssl_context=self._context)
        try:
            await connection.connect(timeout=self.settings.connect_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        return connection

    def _attach(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._node = _node(self._addresses[self._current], connection)
        self.generation += 1
        connection.close_callbacks.add(self._on_close)
        self._up.set()

    def _on_close(self, sender: Any, exc: BaseException | None = None) -> None:
        if self._closed or sender is not self._connection:
            return
        self._up.clear()
        self._error = f"connection lost ({_describe(exc)}), reconnecting"
        self._log.warning(
            "rabbitmq.connection_lost",
            node=describe_address(self._addresses[self._current]),
            error=_describe(exc),
        )
        now = asyncio.get_running_loop().time()
        for blocked in list(self.blocked):
            if blocked.when() is None:
                blocked.reschedule(now)
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.get_running_loop().create_task(
                self._reconnect(sender), name="eventbus-rabbitmq-reconnect"
            )

    async def _reconnect(self, dropped: AbstractConnection | None) -> None:
        """Round after round through the nodes, the lost one last, until one accepts.

        The lost connection is closed first: aio-pika leaves a connection the server
        dropped open on its side, and its finalizer would schedule the close on whatever
        loop runs when it is collected (or warn that the coroutine was never awaited)."""
        if dropped is not None:
            with contextlib.suppress(*LOST):
                await dropped.close()
        delay = 0.1
        attempts = 0
        lost = self._error
        count = len(self._addresses)
        while not self._closed:
            for step in range(1, count + 1):
                index = (self._current + step) % count
                address = self._addresses[index]
                attempts += 1
                try:
                    connection = await self._connect(address)
                except (TimeoutError, *LOST) as exc:
                    self._error = (
                        f"{lost}; attempt {attempts} ({describe_address(address)}) failed: "
                        f"{_describe(exc)}"
                    )
                    if attempts <= count or attempts % 10 == 0:
                        self._log.warning(
                            "rabbitmq.reconnect_failed",
                            attempts=attempts,
                            node=describe_address(address),
                            error=_describe(exc),
                        )
                    continue
                if self._closed:
                    await connection.close()
                    return
                self.reconnects += 1
                self._current = index
                self._attach(connection)
                self._log.info(
                    "rabbitmq.reconnected", attempts=attempts, node=describe_address(address)
                )
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.max_reconnect_backoff)


def _node(address: Address, connection: AbstractConnection) -> str:
    """Where a connection goes: the node's host and port (never the URL's credentials),
    and what the server said it is (product, version, cluster name)."""
    where = describe_address(address)
    transport = getattr(connection, "transport", None)
    properties = getattr(getattr(transport, "connection", None), "server_properties", None)
    if not isinstance(properties, dict):
        return where
    facts = [
        " ".join(_text(properties.get(k)) for k in ("product", "version") if properties.get(k)),
        f"cluster {_text(properties['cluster_name'])}" if properties.get("cluster_name") else "",
    ]
    about = ", ".join(fact for fact in facts if fact)
    return f"{where} ({about})" if about else where


def _text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text[:100]


def _describe(exc: BaseException | None) -> str:
    """An error for a log line: its type and reason, never a URL with credentials."""
    if exc is None:
        return "closed"
    text = str(exc)
    if "://" in text or "@" in text:
        text = "(details withheld: may contain credentials)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
