"""Bad configuration fails at start-up with a message naming the setting; secrets stay out."""

import sys

import pytest

from eventbus import ConfigurationError, EventBus, Settings, SyncPublisher


def test_default_is_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTBUS_URL", raising=False)
    assert EventBus().settings.url == "memory://"


def test_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_URL", "memory://from-env")
    monkeypatch.setenv("EVENTBUS_MAX_MESSAGE_BYTES", "4096")
    bus = EventBus()
    assert bus.settings.url == "memory://from-env"
    assert bus.settings.max_message_bytes == 4096


def test_unknown_scheme_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"EVENTBUS_URL.*no adapter for scheme 'nats'"):
        EventBus("nats://127.0.0.1:4222")


def test_url_without_scheme() -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_URL"):
        EventBus("127.0.0.1:9092")


def test_bad_setting_value_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_MAX_MESSAGE_BYTES", "lots")
    with pytest.raises(ConfigurationError, match="EVENTBUS_MAX_MESSAGE_BYTES"):
        EventBus("memory://")


def test_unknown_adapter_option_names_it() -> None:
    with pytest.raises(ConfigurationError, match="prefecth"):
        EventBus("memory://", prefecth=10)


def test_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "eventbus.adapters.kafka" or name.startswith(
            ("eventbus.adapters.kafka.", "confluent_kafka")
        ):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails as if absent
    with pytest.raises(ConfigurationError) as info:
        EventBus("kafka://127.0.0.1:9092")
    assert "pip install 'eventbus[kafka]'" in str(info.value)
    assert "confluent_kafka" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"eventbus\[kafka\]"):
        SyncPublisher("kafka://127.0.0.1:9092")


def test_password_never_in_repr_or_errors() -> None:
    settings = Settings(url="amqp://app:s3cr3t-pw@127.0.0.1:5672/prod")
    assert "s3cr3t-pw" not in repr(settings)
    with pytest.raises(ConfigurationError) as info:
        EventBus("nats://app:s3cr3t-pw@127.0.0.1/")
    assert "s3cr3t-pw" not in str(info.value)
    assert "app:***@" in str(info.value)
    settings = Settings(url="memory://", options={"sasl_password": "s3cr3t-pw"})
    assert "s3cr3t-pw" not in repr(settings)
