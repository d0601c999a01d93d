"""A responder process for the request/reply tests (`tests.responder_app`), and the
classes both sides declare: `ResponderProcess(url, stream)` starts it, `started()` says
when its subscription is attached (the `bus.started` log line: wait for it with
`until`), `stop()` ends it gracefully."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from eventbus import Event

ROOT = Path(__file__).resolve().parents[1]


class OrderView(BaseModel):
    order_id: str
    total: float
    pid: int


def query_class(stream: str) -> type[Event]:
    class GetOrder(Event, stream=stream, type="order.get"):
        order_id: str
        n: int = 0

    return GetOrder


class ResponderProcess:
    """`eventbus run tests.responder_app:bus` on `url`, answering on `stream`."""

    def __init__(self, url: str, stream: str) -> None:
        self.url = url
        self.stream = stream
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "eventbus", "run", "tests.responder_app:bus",
                "--log-format", "json", "--log-level", "INFO",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "EVENTBUS_URL": url, "RESPONDER_STREAM": stream},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"event": "text", "line": line.rstrip()})

    def started(self) -> bool:
        """Whether its subscription is attached (fails if the process ended)."""
        if any(line.get("event") == "bus.started" for line in self.lines):
            return True
        if self.proc.poll() is not None:
            raise AssertionError(f"the responder exited ({self.proc.returncode}):\n{self.tail()}")
        return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then its exit code (it must stop gracefully in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def tail(self) -> str:
        return "\n".join(json.dumps(line) for line in self.lines[-30:])
