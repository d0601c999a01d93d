"""RabbitMQ over TLS against real listeners (scripts/rabbitmq-tls.sh): `amqps://` with
verification on by default, a wrong CA and a wrong host name refused at start-up with an
error naming the setting, and mutual TLS. Neither the AMQP password nor the client key's
password shows in any log line, repr or error (`SecretsWatch`).

The nodes have no plain-AMQP listener at all, so a round trip proves TLS by itself.
No `from __future__ import annotations`: handlers are annotated with per-test classes.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

from eventbus import ConfigurationError, EventBus, SyncPublisher
from eventbus.adapters.rabbitmq.settings import load_rabbitmq_settings, parse_url, tls_context
from eventbus.testing.conformance import make_events, unique, until

from .conftest import TlsRabbit, run_script
from .watch import SecretsWatch

pytestmark = pytest.mark.rabbitmq

#: a refused start-up must say so within this many seconds (connect_timeout is 15)
PROMPT = 10.0


class Buses:
    """The buses of one test: stopped, and their streams' topology deleted, afterwards."""

    def __init__(self, rabbit: TlsRabbit, watch: SecretsWatch) -> None:
        self.rabbit = rabbit
        self.watch = watch
        self.made: list[tuple[EventBus, str, dict[str, Any]]] = []
        self.streams: list[str] = []

    def bus(self, url: str, **options: Any) -> EventBus:
        bus = EventBus(url, **options)
        self.made.append((bus, url, options))
        self.watch.note(bus, bus.settings, bus.broker)
        return bus

    def stream(self) -> str:
        name = unique("tls")
        self.streams.append(name)
        return name

    async def close(self) -> None:
        for bus, _url, _options in self.made:
            self.watch.note(bus.health())
            await bus.stop()
        if self.streams:
            await delete_topology(self.rabbit, self.streams)


@pytest.fixture
async def buses(tls_rabbit: TlsRabbit, secrets_watch: SecretsWatch) -> AsyncIterator[Buses]:
    made = Buses(tls_rabbit, secrets_watch)
    try:
        yield made
    finally:
        await made.close()


async def delete_topology(rabbit: TlsRabbit, streams: list[str]) -> None:
    """Delete the exchanges and queues a test's streams made (over TLS, as the user)."""
    settings = load_rabbitmq_settings({"ca_file": str(rabbit.pki.ca)})
    url = rabbit.url()
    connection = await aio_pika.connect(url, ssl_context=tls_context(parse_url(url), settings))
    async with connection:
        channel = await connection.channel()
        for stream in streams:
            for queue in (f"{stream}.billing", f"{stream}.billing.dlq"):
                await channel.queue_delete(queue)
            await channel.exchange_delete(stream)


def options(rabbit: TlsRabbit, **changes: Any) -> dict[str, Any]:
    """Verification on (the default), our CA; `changes` win."""
    return {"ca_file": str(rabbit.pki.ca), "connect_timeout": 15, **changes}


def client_cert(rabbit: TlsRabbit) -> dict[str, Any]:
    """The CA-signed client certificate, its key encrypted with the key password."""
    pki = rabbit.pki
    return {
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "key_password": pki.key_password,
    }


async def round_trip(buses: Buses, url: str, count: int = 20, **opts: Any) -> float:
    """Publish `count` events with confirms and consume them in a group; -> seconds."""
    events = make_events(buses.stream())
    Created = events.Created
    seen: list[int] = []
    bus = buses.bus(url, **opts)

    @bus.subscribe(group="billing")
    async def billing(event: Created) -> None:  # type: ignore[valid-type]
        seen.append(event.n)  # type: ignore[attr-defined]

    started = time.monotonic()
    async with bus:
        for n in range(count):
            await bus.publish(Created(order_id=f"o-{n}", n=n), key=f"o-{n % 3}")
        await until(lambda: len(seen) >= count, 30, f"{count} events over TLS")
    took = time.monotonic() - started
    assert sorted(seen) == list(range(count))
    return took


async def refused(
    buses: Buses, url: str, expected: type[Exception] | tuple[type[Exception], ...], **opts: Any
) -> str:
    """Start a bus that must be refused promptly with `expected`; -> the error's text."""
    bus = buses.bus(url, **opts)
    started = time.monotonic()
    with pytest.raises(expected) as info:
        await bus.start()
    took = time.monotonic() - started
    buses.watch.note(info.value)
    assert took < PROMPT, f"refused only after {took:.1f}s: {info.value}"
    buses.watch.report(f"refused in {took:.2f}s: {type(info.value).__name__}: {info.value}")
    return str(info.value)


def hidden(buses: Buses) -> str:
    """Assert that no secret of the test showed anywhere; -> what was searched."""
    rabbit = buses.rabbit
    return buses.watch.assert_hidden(rabbit.password, rabbit.pki.key_password)


async def test_round_trip_over_amqps_with_verification_on_by_default(buses: Buses) -> None:
    rabbit = buses.rabbit
    settings = load_rabbitmq_settings({})
    assert settings.verify_tls, "verification is on unless turned off"
    took = await round_trip(buses, rabbit.url(), **options(rabbit))
    buses.watch.report(f"amqps round trip of 20 events (verification on): {took:.2f}s")
    text = hidden(buses)
    assert "bus.started" in text, "the watch sees eventbus's log lines"
    assert "eventbus-app:***@" in text, "the URL is shown, its password masked"


async def test_the_default_trust_store_refuses_our_ca_naming_the_setting(buses: Buses) -> None:
    text = await refused(buses, buses.rabbit.url(), ConfigurationError, connect_timeout=15)
    assert "EVENTBUS_RABBITMQ_CA_FILE" in text and "the system CAs" in text
    assert "CERTIFICATE_VERIFY_FAILED" in text
    hidden(buses)


async def test_a_wrong_ca_is_refused_at_start_up_naming_the_setting(buses: Buses) -> None:
    rabbit = buses.rabbit
    text = await refused(
        buses, rabbit.url(), ConfigurationError, **options(rabbit, ca_file=str(rabbit.pki.other_ca))
    )
    assert "EVENTBUS_RABBITMQ_CA_FILE" in text and str(rabbit.pki.other_ca) in text
    hidden(buses)


async def test_a_wrong_host_name_is_refused_at_start_up_naming_the_setting(
    buses: Buses,
) -> None:
    rabbit = buses.rabbit
    url = rabbit.url(host="127.0.0.2")  # the same listener; the certificate does not name it
    text = await refused(buses, url, ConfigurationError, **options(rabbit))
    assert "'127.0.0.2'" in text and "mismatch" in text
    assert "EVENTBUS_URL" in text and "EVENTBUS_RABBITMQ_VERIFY_TLS" in text
    # the documented way out (not for production) does connect
    await round_trip(buses, url, count=3, **options(rabbit, verify_tls=False))
    hidden(buses)


async def test_mutual_tls_with_a_client_certificate(buses: Buses) -> None:
    rabbit = buses.rabbit
    connections: list[str] = []
    bus_url = rabbit.url(port=5676)

    took = await round_trip(buses, bus_url, **options(rabbit, **client_cert(rabbit)))
    buses.watch.report(f"mutual TLS round trip of 20 events (encrypted client key): {took:.2f}s")
    # while a bus is connected, the node shows the client certificate it verified
    bus = buses.bus(bus_url, **options(rabbit, **client_cert(rabbit)))
    async with bus:
        listing = ("list_connections", "user", "ssl", "ssl_protocol", "peer_cert_subject")
        out = await asyncio.to_thread(run_script, "rabbitmq-tls.sh", "ctl", "mtls", "-q", *listing)
        connections += out.splitlines()
    buses.watch.report(f"node rabbit-mtls sees: {connections}")
    mine = [line for line in connections if line.startswith(rabbit.username)]
    assert mine and all("true" in line and "CN=eventbus-client" in line for line in mine)
    hidden(buses)


@pytest.mark.parametrize(
    "certificate",
    [
        pytest.param(lambda rabbit: {}, id="no-certificate"),
        pytest.param(
            lambda rabbit: {
                "cert_file": str(rabbit.pki.stranger_cert),
                "key_file": str(rabbit.pki.stranger_key),
            },
            id="untrusted-certificate",
        ),
    ],
)
async def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    buses: Buses, certificate: Callable[[TlsRabbit], dict[str, Any]]
) -> None:
    """Under TLS 1.3 the broker checks the client certificate after the client finished
    its handshake: its alert arrives either as such (ConfigurationError) or, when the
    client was already writing, as a reset (ConnectionError); both name the setting."""
    rabbit = buses.rabbit
    text = await refused(
        buses,
        rabbit.url(port=5676),
        (ConfigurationError, ConnectionError),
        **options(rabbit, **certificate(rabbit)),
    )
    assert "EVENTBUS_RABBITMQ_CERT_FILE" in text
    hidden(buses)


async def test_a_wrong_key_password_is_refused_naming_the_setting(buses: Buses) -> None:
    rabbit = buses.rabbit
    wrong = "WrongKeyPw-5f1c9a"
    with pytest.raises(ConfigurationError) as info:
        buses.bus(
            rabbit.url(port=5676),
            **options(rabbit, **{**client_cert(rabbit), "key_password": wrong}),
        )
    buses.watch.note(info.value)
    assert "EVENTBUS_RABBITMQ_KEY_PASSWORD" in str(info.value)
    buses.watch.assert_hidden(wrong, rabbit.password, rabbit.pki.key_password)


async def test_the_sync_face_publishes_over_amqps_and_names_the_setting_when_refused(
    buses: Buses,
) -> None:
    rabbit = buses.rabbit
    Created = make_events(buses.stream()).Created
    seen: list[int] = []
    bus = buses.bus(rabbit.url(), **options(rabbit))

    @bus.subscribe(group="billing")
    async def billing(event: Created) -> None:  # type: ignore[valid-type]
        seen.append(event.n)  # type: ignore[attr-defined]

    def publish(n: int, **changes: Any) -> None:
        with SyncPublisher(rabbit.url(), **options(rabbit, **changes)) as publisher:
            buses.watch.note(publisher)
            publisher.publish(Created(order_id=f"o-{n}", n=n), key=f"o-{n}")

    async with bus:
        await asyncio.to_thread(publish, 1)
        await until(lambda: seen == [1], 30, "the sync face's event")
    with pytest.raises(ConfigurationError) as info:
        await asyncio.to_thread(publish, 2, ca_file=str(rabbit.pki.other_ca))
    buses.watch.note(info.value)
    assert "EVENTBUS_RABBITMQ_CA_FILE" in str(info.value)
    hidden(buses)
