"""structlog set-up: JSON or console lines, secrets redacted before any renderer sees them."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from .settings import is_secret_key, redact_text, redact_value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask secret-looking keys, and the password of every URL with
    credentials in any value: the message, `error=` strings, exceptions logged as objects,
    rendered tracebacks, nested mappings and lists (see `redact_text`)."""
    for key, value in list(event_dict.items()):
        if key != "event" and is_secret_key(key):
            event_dict[key] = "***"
        elif isinstance(value, str):
            if "://" in value:
                event_dict[key] = redact_text(value)
        elif isinstance(value, BaseException):
            event_dict[key] = redact_text(repr(value))
        elif isinstance(value, Mapping | list | tuple):
            event_dict[key] = redact_value(value)
    return event_dict


def configure(log_format: str = "console", level: str = "INFO", *, force: bool = False) -> None:
    """Configure structlog for eventbus (skipped if the application configured it already)."""
    if structlog.is_configured() and not force:
        return
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # after format_exc_info: a traceback's text is redacted too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        # one write per line (PrintLogger writes the newline apart): processes sharing a
        # stderr (`eventbus run --workers N`) never splice their lines together
        logger_factory=structlog.WriteLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


class _Stderr:
    """The `sys.stderr` of the moment logging was configured, until it is closed: then the
    process's own stderr. A stream swapped in meanwhile and closed since (a test's
    capture, say) must not make every later log line raise."""

    def __init__(self) -> None:
        self.stream = sys.stderr

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except ValueError:  # closed
            self.stream = sys.__stderr__ or sys.stderr
            return self.stream.write(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except ValueError:
            self.stream = sys.__stderr__ or sys.stderr


def get_logger(**bound: Any) -> Any:
    """A lazy logger: it follows the configuration in force when it logs, not at import."""
    return structlog.get_logger(logger_name="eventbus", **bound)
