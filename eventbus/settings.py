"""Configuration: `EVENTBUS_*` environment variables or a `Settings` object.

Adapters read their own options (prefix `EVENTBUS_<ADAPTER>_`) from `Settings.options`
and the environment; the kernel only knows the settings every broker shares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError

_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|sasl\.|credential|private|api[_-]?key)", re.I)


#: `scheme://user:` then the password: everything up to the LAST '@' before the end of the
#: line or the next `scheme://`. A password may hold any character, an unencoded '/', '#',
#: '?', '@', ':', '%' or space included (urlsplit mis-parses those), so the authority is not
#: parsed; the greedy window backtracks to its last '@'. Where an '@' follows later on the
#: same line (an e-mail address after the URL) the mask covers more than the password:
#: redaction errs on the side of hiding.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@\[\]]*:)(?:(?!://)[^\n])*@"
)
#: the same without a scheme (`user:password@host`), for a value known to be one URL
_BARE_CREDENTIALS = re.compile(r"^(?P<head>[^\s:/?#@\[\]]*:)[^\n]*@")
#: query parameters that carry secrets (`?password=...`, `&sslkey=...`, `&token=...`)
_QUERY_SECRET = re.compile(
    r"([?&;][^=&;?#\s]*(?:pass|secret|token|key)[^=&;?#\s]*=)[^&;#\s]*", re.I
)
#: libpq-style `password=...` key/value pairs (a conninfo string instead of a URL)
_KEY_VALUE_SECRET = re.compile(
    r"(?:(?<=\s)|^)((?:ssl)?pass(?:word|wd)?\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I
)


def redact_text(text: str) -> str:
    """`text` with the password of every `scheme://user:password@` in it masked, wherever
    the URL sits (`"cannot connect to amqp://u:secret@h/ (refused)"` ->
    `"cannot connect to amqp://u:***@h/ (refused)"`), and secret query parameters too.

    Cheap for text without `://`: one substring search, and the text itself comes back."""
    if "://" not in text:
        return text
    redacted = _URL_CREDENTIALS.sub(r"\g<head>***@", text)
    if "?" in redacted:
        redacted = _QUERY_SECRET.sub(r"\1***", redacted)
    return redacted


def redact_url(url: str) -> str:
    """`amqp://user:secret@host/` -> `amqp://user:***@host/`; a password with unencoded
    '/', '#', '?', '@' or spaces is masked whole (everything between the first ':' after
    `//` and the last '@'). Also masks secret query parameters, a scheme-less
    `user:password@host` and a libpq `password=...` conninfo."""
    if "://" in url:
        return redact_text(url)
    redacted = _BARE_CREDENTIALS.sub(r"\g<head>***@", url)
    if "?" in redacted:
        redacted = _QUERY_SECRET.sub(r"\1***", redacted)
    if "=" in redacted:
        redacted = _KEY_VALUE_SECRET.sub(r"\1***", redacted)
    return redacted


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name))


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with secret-looking keys masked and credentials in URLs masked, nested
    mappings and lists included."""
    return {k: "***" if is_secret_key(str(k)) else redact_value(v) for k, v in values.items()}


def redact_value(value: Any) -> Any:
    """`value` with credentials masked: strings by `redact_text`, mappings by
    `redact_mapping`, lists and tuples item by item; anything else as it is."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


class Settings(BaseSettings):
    """Settings every broker shares. Environment: `EVENTBUS_URL`, `EVENTBUS_LOG_FORMAT`, ..."""

    model_config = SettingsConfigDict(env_prefix="EVENTBUS_", extra="forbid", frozen=True)

    url: str = "memory://"
    #: CloudEvents `source` of published events
    source: str = "eventbus"
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: write the optional CloudEvents attributes `time`, `datacontenttype` and
    #: `dataschema` on every published event (the default); False writes the required
    #: ones only (id, source, specversion, type) and the extensions: three headers fewer
    #: per record, for producers whose cost is dominated by per-header work (Kafka).
    #: Consumers need none of the three (the payload is JSON when no content type says
    #: otherwise); `Envelope.time` is then "" and `Envelope.timestamp` None
    optional_attributes: bool = True
    #: an encoded event larger than this is refused at publish and dead-lettered on receive
    max_message_bytes: int = Field(default=1_048_576, gt=0)
    #: `bus.run()` (and `eventbus run`) freezes the objects alive once the bus started
    #: (`eventbus.freeze_heap`): the modules, classes and setup of the service, which the
    #: cycle collector's full passes would otherwise rescan for as long as it runs.
    #: False leaves the process's collector alone
    freeze_heap: bool = True
    #: seconds that graceful stop waits for in-flight handlers
    shutdown_timeout: float = Field(default=30.0, gt=0)
    #: OpenTelemetry spans for publish and process: None (default) traces when the
    #: application configured a tracer provider (`eventbus[otel]`), False never, True
    #: always (an error at start without opentelemetry-api)
    tracing: bool | None = None
    #: count published / handled / failed events and their durations (`bus.metrics`, the
    #: Prometheus endpoint of `eventbus run --http`, the OpenTelemetry metrics API); also
    #: on when the application configured an OpenTelemetry meter provider (None, the
    #: default); False never
    metrics: bool | None = None
    #: seconds between polls of each subscription's backlog (Kafka lag, RabbitMQ queue
    #: depth) for `bus.health()` and the metrics; 0 turns polling off
    backlog_interval: float = Field(default=10.0, ge=0)
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
            yield name, redact_url(value) if name == "url" else redact_value(value)


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
    """One line per invalid setting, naming it; secret values and credentials in URLs
    (anywhere in the value or the message) are masked."""
    lines = []
    for err in exc.errors():
        name = ".".join(str(p) for p in err["loc"]) or "settings"
        value = err.get("input")
        if is_secret_key(name):
            shown = "***"
        elif isinstance(value, str) and name.lower().endswith("url"):
            shown = repr(redact_url(value))
        else:
            shown = redact_text(repr(redact_value(value)))
        lines.append(f"{prefix}{name.upper()} (= {shown}): {redact_text(err['msg'])}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
