"""Adapters are found by URL scheme through the `eventbus.adapters` entry-point group,
so a third-party adapter installs like ours. Optional client libraries load only here,
when their scheme is used."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, cast

from .broker import Adapter
from .errors import ConfigurationError
from .settings import Settings, redact_url

#: fallback when eventbus runs from a source tree without installed metadata
_BUILTIN = {
    "memory": ("adapters.memory:adapter", None),
    "amqp": ("adapters.rabbitmq:adapter", "rabbitmq"),
    "amqps": ("adapters.rabbitmq:adapter", "rabbitmq"),
    "kafka": ("adapters.kafka:adapter", "kafka"),
}
_EXTRA_OF_MODULE = {
    "pika": "rabbitmq",
    "aio_pika": "rabbitmq",
    "aiormq": "rabbitmq",
    "confluent_kafka": "kafka",
    "psycopg": "postgres",
}


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def known_schemes() -> list[str]:
    names = {ep.name for ep in entry_points(group="eventbus.adapters")}
    return sorted(names | set(_BUILTIN))


def find_adapter(settings: Settings) -> Adapter:
    scheme = settings.scheme
    found = [ep for ep in entry_points(group="eventbus.adapters") if ep.name == scheme]
    target = found[0].value if found else _BUILTIN.get(scheme, (None, None))[0]
    if target is None:
        raise ConfigurationError(
            f"EVENTBUS_URL={redact_url(settings.url)!r}: no adapter for scheme {scheme!r}; "
            f"known schemes: {', '.join(known_schemes())}"
        )
    try:
        return cast(Adapter, found[0].load() if found else _load(target))
    except ImportError as exc:
        if exc.name and exc.name == target.split(":")[0]:
            raise ConfigurationError(
                f"EVENTBUS_URL={redact_url(settings.url)!r}: the adapter module "
                f"{exc.name!r} is missing from this installation: reinstall eventbus"
            ) from None
        missing = (exc.name or "").split(".")[0]
        extra = _EXTRA_OF_MODULE.get(missing) or _BUILTIN.get(scheme, (None, None))[1]
        hint = f"pip install 'eventbus[{extra}]'" if extra else "install the adapter's package"
        raise ConfigurationError(
            f"EVENTBUS_URL={redact_url(settings.url)!r} needs the Python package "
            f"{missing or exc.name!r}, which is not installed: {hint}"
        ) from None
