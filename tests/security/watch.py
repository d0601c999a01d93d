"""`SecretsWatch`: collects every text through which a secret could leak during a test,
and asserts that no secret is in any of them.

What it sees: the structlog lines eventbus writes (rendered by eventbus's own processors,
redaction included, at DEBUG and up), the stdlib logging records of every library (aiormq,
aio-pika, ...), whatever reaches the process's stdout and stderr at the file-descriptor
level (librdkafka writes its own log lines there), and the texts the test hands it with
`note`: the message, repr and traceback of exceptions, the reprs of buses, brokers,
settings and health reports.
"""

from __future__ import annotations

import io
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog

from eventbus.log import configure


class SecretsWatch:
    def __init__(self, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
        self._capfd = capfd
        self._caplog = caplog
        self.structlog_lines = io.StringIO()
        self._fd_output: list[str] = []
        self._noted: list[str] = []

    @classmethod
    @contextmanager
    def capturing(
        cls, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> Iterator[SecretsWatch]:
        """structlog configured as eventbus configures it (DEBUG), writing into the watch;
        the previous configuration is restored afterwards."""
        previous = structlog.get_config()
        watch = cls(capfd, caplog)
        configure("console", "DEBUG", force=True)
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(watch.structlog_lines))
        try:
            yield watch
        finally:
            structlog.configure(**previous)

    def note(self, *objects: Any) -> None:
        """Keep the texts of `objects`: an exception's message, repr and whole traceback
        (its chain included), anything else's repr and str."""
        for obj in objects:
            if isinstance(obj, BaseException):
                self._noted += [str(obj), repr(obj), "".join(traceback.format_exception(obj))]
            else:
                self._noted += [repr(obj), str(obj)]

    def report(self, line: str) -> None:
        """Print a figure of the test past the capture (on the terminal, as it runs)."""
        with self._capfd.disabled():
            print(line)

    def text(self) -> str:
        """Everything seen so far."""
        out, err = self._capfd.readouterr()
        self._fd_output += [out, err]
        return "\n".join(
            [
                self.structlog_lines.getvalue(),
                self._caplog.text,
                *(record.getMessage() for record in self._caplog.records),
                *self._fd_output,
                *self._noted,
            ]
        )

    def assert_hidden(self, *secrets: str) -> str:
        """Fail if any of `secrets` shows anywhere; returns the text that was searched."""
        text = self.text()
        for secret in secrets:
            assert secret, "an empty secret proves nothing"
            at = text.find(secret)
            assert at < 0, f"a secret leaked: ...{text[max(at - 200, 0) : at + 50]!r}..."
        return text
