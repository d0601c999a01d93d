"""Configuration: `EVENTBUS_*` environment variables or a `Settings` object.

Adapters read their own options (prefix `EVENTBUS_<ADAPTER>_`) from `Settings.options`
and the environment; the kernel only knows the settings every broker shares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError

_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|sasl\.|credential|private|api[_-]?key)", re.I)


def redact_url(url: str) -> str:
    """`amqp://user:secret@host/` -> `amqp://user:***@host/` (also in query strings)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
    query = re.sub(
        r"((?:^|&)[^=&]*(?:pass|secret|token|key)[^=&]*=)[^&]*", r"\1***", parts.query, flags=re.I
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def redact_mapping(values: dict[str, Any]) -> dict[str, Any]:
    """A copy with secret-looking keys masked, nested mappings included."""
    return {
        k: (
            "***"
            if is_secret_key(k)
            else redact_mapping(v)
            if isinstance(v, dict)
            else redact_url(v)
            if isinstance(v, str) and "://" in v and "@" in v
            else v
        )
        for k, v in values.items()
    }


class Settings(BaseSettings):
    """Settings every broker shares. Environment: `EVENTBUS_URL`, `EVENTBUS_LOG_FORMAT`, ..."""

    model_config = SettingsConfigDict(env_prefix="EVENTBUS_", extra="forbid", frozen=True)

    url: str = "memory://"
    #: CloudEvents `source` of published events
    source: str = "eventbus"
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: an encoded event larger than this is refused at publish and dead-lettered on receive
    max_message_bytes: int = Field(default=1_048_576, gt=0)
    #: seconds that graceful stop waits for in-flight handlers
    shutdown_timeout: float = Field(default=30.0, gt=0)
    #: adapter options (`EventBus(url, prefetch=200)`), validated by the adapter
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if not scheme:
            raise ValueError(
                f"EVENTBUS_URL {redact_url(value)!r} has no scheme: use memory://, "
                "amqp://host, amqps://host or kafka://host:port"
            )
        return value

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str):
                yield name, redact_url(value)
            elif name == "options" and isinstance(value, dict):
                yield name, redact_mapping(value)
            else:
                yield name, value


def load_settings(url: str | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment plus explicit values; errors name the setting.

    Keyword arguments that are not `Settings` fields are adapter options.
    """
    values: dict[str, Any] = {}
    options = dict(overrides.pop("options", None) or {})
    for name, value in overrides.items():
        if name in Settings.model_fields:
            values[name] = value
        else:
            options[name] = value
    if options:
        values["options"] = options
    if url is not None:
        values["url"] = url
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, "EVENTBUS_")) from None


M = TypeVar("M", bound=BaseModel)


def parse_options(model: type[M], options: Mapping[str, Any], *, label: str, prefix: str) -> M:
    """Adapter options -> `model`; an unknown option or a bad value is a ConfigurationError
    that names it (`label`: what the options are, e.g. "Kafka EventBus(...) option";
    `prefix`: how a setting is named in messages, e.g. "EVENTBUS_KAFKA_")."""
    known = model.model_fields
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(f"unknown {label}(s) {unknown}; known: {sorted(known)}")
    try:
        return model(**options)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, prefix)) from None


def format_validation_error(exc: ValidationError, prefix: str) -> str:
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        shown = "***" if is_secret_key(name) else repr(err.get("input"))
        if name in ("url",) and isinstance(err.get("input"), str):
            shown = repr(redact_url(err["input"]))
        lines.append(f"{prefix}{name.upper()} (= {shown}): {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
