"""`python -m tests.unit.dlq_probe ARGS...`: `eventbus ARGS...` (its `main`, in this
process) with the dead-letter listing watched; what it saw is written as JSON to
`$EVENTBUS_TEST_DLQ_REPORT`. Tests of memory:// run `run_in_process` instead (a memory
broker lives in its process).

- `yielded`: dead letters the adapter handed out;
- `ahead`: the most dead letters handed out and not printed yet when the adapter hands out
  the next one: 0 when the command prints each as it is read, about the whole queue when
  it collects them first;
- `held`: the most dead letters the adapter held beyond those it handed out, at any hand-
  out: Kafka, letters its reader took from the client; RabbitMQ, messages delivered to
  its pass and not acknowledged (the broker's unacked count). Bounded, whatever the queue
  holds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from eventbus.adapters.kafka import KafkaBroker
from eventbus.adapters.kafka.dlq import DeadLetterReader
from eventbus.adapters.memory import MemoryBroker
from eventbus.adapters.rabbitmq import RabbitMQBroker
from eventbus.protocol import DeadLetter

REPORT = "EVENTBUS_TEST_DLQ_REPORT"


class Lines(io.TextIOBase):
    """A text stream that counts the lines written through it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return int(self.stream.write(text))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return bool(self.stream.isatty())

    def fileno(self) -> int:
        return int(self.stream.fileno())


@dataclass
class Probe:
    yielded: int = 0
    ahead: int = 0
    held: int = 0
    out: Lines | None = field(default=None, repr=False)
    readers: list[DeadLetterReader] = field(default_factory=list, repr=False)

    def report(self) -> dict[str, int]:
        return {"yielded": self.yielded, "ahead": self.ahead, "held": self.held}

    def _held(self, broker: object) -> int:
        if isinstance(broker, KafkaBroker) and self.readers:
            return self.readers[-1].read - self.yielded
        sweep = getattr(broker, "last_sweep", None)
        if sweep is not None:
            return int(sweep.outstanding())
        return 0

    async def watch(
        self, broker: object, letters: AsyncIterator[DeadLetter]
    ) -> AsyncIterator[DeadLetter]:
        try:
            async for dead in letters:
                printed = self.out.lines if self.out is not None else 0
                self.ahead = max(self.ahead, self.yielded - printed)
                self.yielded += 1
                self.held = max(self.held, self._held(broker))
                yield dead
        finally:
            aclose = getattr(letters, "aclose", None)
            if aclose is not None:
                await aclose()


@contextlib.contextmanager
def installed(probe: Probe) -> Iterator[None]:
    """Watch every adapter's `dead_letters` (and the Kafka reader) while inside."""
    saved: list[tuple[type, str, Any]] = []

    def patch(cls: type, name: str, value: Callable[..., Any]) -> None:
        saved.append((cls, name, cls.__dict__[name]))
        setattr(cls, name, value)

    for cls in (MemoryBroker, RabbitMQBroker, KafkaBroker):
        original = cls.__dict__["dead_letters"]

        def watched(
            self: Any, stream: str, group: str, _original: Any = original
        ) -> AsyncIterator[DeadLetter]:
            return probe.watch(self, _original(self, stream, group))

        patch(cls, "dead_letters", watched)
    reader = KafkaBroker.__dict__["_reader"]

    def recorded(self: KafkaBroker, stream: str, group: str) -> DeadLetterReader:
        made: DeadLetterReader = reader(self, stream, group)
        probe.readers.append(made)
        return made

    patch(KafkaBroker, "_reader", recorded)
    try:
        yield
    finally:
        for cls, name, value in reversed(saved):
            setattr(cls, name, value)


def run_in_process(argv: list[str], stdin: str = "") -> tuple[int, str, str, Probe]:
    """`eventbus argv` here (sync caller only: it runs its own event loop)."""
    from eventbus.cli import main
    from eventbus.log import configure

    configure()  # (if nothing did yet) on the real stderr, not on the one redirected here
    out, err = io.StringIO(), io.StringIO()
    probe = Probe(out=Lines(out))
    saved_in = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with (
            installed(probe),
            contextlib.redirect_stdout(probe.out),
            contextlib.redirect_stderr(err),
        ):
            code = main(argv)
    finally:
        sys.stdin = saved_in
    return code, out.getvalue(), err.getvalue(), probe


def main() -> int:
    from eventbus.cli import main as eventbus

    probe = Probe(out=Lines(sys.stdout))
    sys.stdout = probe.out
    try:
        with installed(probe):
            return eventbus(sys.argv[1:])
    finally:
        path = os.environ.get(REPORT)
        if path:
            with open(path, "w") as file:
                json.dump(probe.report(), file)


if __name__ == "__main__":
    raise SystemExit(main())
