"""Adapters are found by URL scheme through the `eventbus.adapters` entry-point group,
so a third-party adapter installs like ours. Optional client libraries load only here,
when their scheme is used."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

from .errors import ConfigurationError
from .protocol import Adapter
from .settings import Settings, redact_url

#: the extra that installs a client library an adapter imports
_EXTRA_OF_MODULE = {
    "pika": "rabbitmq",
    "aio_pika": "rabbitmq",
    "aiormq": "rabbitmq",
    "confluent_kafka": "kafka",
    "psycopg": "postgres",
}


def known_schemes() -> list[str]:
    return sorted({ep.name for ep in entry_points(group="eventbus.adapters")})


def find_adapter(settings: Settings) -> Adapter:
    scheme = settings.scheme
    found = [ep for ep in entry_points(group="eventbus.adapters") if ep.name == scheme]
    if not found:
        known = known_schemes()
        hint = (
            f"known schemes: {', '.join(known)}"
            if known
            else "no adapter is registered at all: install eventbus (pip install -e .) so its "
            "entry points exist"
        )
        raise ConfigurationError(
            f"EVENTBUS_URL={redact_url(settings.url)!r}: no adapter for scheme {scheme!r}; {hint}"
        )
    target = found[0].value
    try:
        return cast(Adapter, found[0].load())
    except ImportError as exc:
        if exc.name and exc.name == target.split(":")[0]:
            raise ConfigurationError(
                f"EVENTBUS_URL={redact_url(settings.url)!r}: the adapter module "
                f"{exc.name!r} is missing from this installation: reinstall eventbus"
            ) from None
        missing = (exc.name or "").split(".")[0]
        extra = _EXTRA_OF_MODULE.get(missing)
        hint = f"pip install 'eventbus[{extra}]'" if extra else "install the adapter's package"
        raise ConfigurationError(
            f"EVENTBUS_URL={redact_url(settings.url)!r} needs the Python package "
            f"{missing or exc.name!r}, which is not installed: {hint}"
        ) from None
