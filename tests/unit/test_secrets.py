"""Secrets never appear in reprs, errors or log lines, whatever characters the password
holds: an unencoded '/', '#', '?', '@', ':', '%' or a space make `urlsplit` mis-parse the
URL, so the redactor does not parse it (DESIGN §5)."""

from __future__ import annotations

import json
import re

import pytest
import structlog

from eventbus import ConfigurationError, EventBus, Settings
from eventbus.log import configure, get_logger
from eventbus.settings import load_settings, redact_text, redact_url
from eventbus.sourcing import open_store

#: each piece between the URL delimiters is distinctive, so a partial leak shows too
PASSWORDS = [
    "Zq9plain",
    "Zq9/Xk7#Wv5?Rt3",
    "Zq9@Xk7@",
    "Zq9:Xk7:Wv5",
    "Zq9%Xk7%2FWv5",
    "Zq9 Xk7 Wv5",
    "Zq9/Xk7 Wv5?Rt3#Yp1@Ln4:Mc8%",
]


def assert_hidden(password: str, text: str) -> None:
    assert password not in text
    for piece in re.split(r"[/#?@:%\s]+", password):
        if len(piece) >= 3:
            assert piece not in text, f"{piece!r} of the password shows in {text!r}"


@pytest.mark.parametrize("password", PASSWORDS)
def test_redact_url_masks_the_whole_password(password: str) -> None:
    for url, expected in (
        (f"amqp://app:{password}@rabbit.example:5672/prod", "amqp://app:***@rabbit.example:5672/prod"),
        (f"kafka://app:{password}@k1:9092,k2:9092", "kafka://app:***@k1:9092,k2:9092"),
        (f"postgresql://eventbus:{password}@db/orders?schema=s", "postgresql://eventbus:***@db/orders?schema=s"),
        (f"app:{password}@host", "app:***@host"),
    ):  # fmt: skip
        assert redact_url(url) == expected


@pytest.mark.parametrize("password", PASSWORDS)
def test_redact_text_finds_urls_inside_longer_text(password: str) -> None:
    text = (
        f"cannot connect to amqp://u:{password}@h/ (refused); "
        f"fallback kafka://k:{password}@k1:9092 too\nnext line amqp://guest@h2/"
    )
    redacted = redact_text(text)
    assert_hidden(password, redacted)
    assert redacted == (
        "cannot connect to amqp://u:***@h/ (refused); "
        "fallback kafka://k:***@k1:9092 too\nnext line amqp://guest@h2/"
    )


def test_redact_text_leaves_text_without_credentials_alone() -> None:
    plain = "no url here: user@example.com, key=value"
    assert redact_text(plain) is plain
    for text in ("amqp://guest@h/", "kafka://h1:9092,h2:9092", "amqp://[::1]:5672/v", "memory://"):
        assert redact_text(text) == text
    assert redact_url("postgresql://h/db?sslpassword=abc&x=1") == (
        "postgresql://h/db?sslpassword=***&x=1"
    )
    assert redact_url("host=db password='a b' user=u") == "host=db password=*** user=u"


@pytest.mark.parametrize("password", PASSWORDS)
def test_settings_repr_hides_the_password(password: str) -> None:
    url = f"amqp://app:{password}@rabbit.example/"
    settings = Settings(url=url, options={"fallback": url, "nested": {"urls": [url]}})
    assert_hidden(password, repr(settings))
    assert_hidden(password, str(settings))
    assert "amqp://app:***@rabbit.example/" in repr(settings)


@pytest.mark.parametrize("password", PASSWORDS)
def test_configuration_errors_hide_the_password(password: str) -> None:
    with pytest.raises(ConfigurationError) as unknown_scheme:
        EventBus(f"nats://app:{password}@127.0.0.1/")
    assert "app:***@127.0.0.1" in str(unknown_scheme.value)
    with pytest.raises(ConfigurationError) as bad_value:
        load_settings(f"memory://app:{password}@h/", max_message_bytes=f"amqp://u:{password}@h/")
    assert "EVENTBUS_MAX_MESSAGE_BYTES" in str(bad_value.value)
    with pytest.raises(ConfigurationError) as bad_store:
        open_store(f"mysql://app:{password}@db/orders")
    for error in (unknown_scheme.value, bad_value.value, bad_store.value):
        assert_hidden(password, str(error))


@pytest.mark.parametrize("password", PASSWORDS)
async def test_postgres_store_repr_and_connection_error_hide_the_password(
    password: str,
) -> None:
    from eventbus.sourcing.postgres import PostgresEventStore

    url = f"postgresql://eventbus:{password}@127.0.0.1:1/eventbus"
    for store in (PostgresEventStore(url, schema="s"), open_store(url)):
        assert_hidden(password, repr(store))
        with pytest.raises(ConnectionError) as info:  # nothing listens on port 1
            await store.open()
        await store.close()
        assert_hidden(password, str(info.value))
        assert "127.0.0.1" in str(info.value)


@pytest.mark.parametrize("log_format", ["json", "console"])
@pytest.mark.parametrize("password", PASSWORDS)
def test_log_lines_hide_the_password(
    password: str, log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(log_format, "INFO", force=True)
    log = get_logger()
    try:
        log.error("relay.failed", error=f"cannot connect to amqp://u:{password}@h/ (refused)")
        log.warning(f"reconnecting to kafka://k:{password}@k1:9092", attempt=2)
        log.error("publish.failed", error=ConnectionError(f"amqp://u:{password}@h/ refused"))
        log.error("bus.config", options={"urls": [f"amqp://u:{password}@h/"]})
        try:
            raise ConnectionError(f"cannot reach amqp://u:{password}@h/")
        except ConnectionError:
            log.exception("consumer.died")
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert err.count("***@") >= 5, err
    assert_hidden(password, err)
    if log_format == "json":
        first = json.loads(err.splitlines()[0])
        assert first["error"] == "cannot connect to amqp://u:***@h/ (refused)"
