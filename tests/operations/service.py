"""`Service`: an `eventbus run ... --http 127.0.0.1:0` process, its HTTP endpoints and logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from eventbus import Event
from eventbus.testing.conformance import unique

ROOT = Path(__file__).resolve().parents[2]


class Service:
    """Runs the service app on `url` with a fresh stream; `base` is its HTTP address."""

    def __init__(self, url: str, stream: str | None = None) -> None:
        self.url = url
        self.stream = stream or unique("ops")
        self.lines: list[dict[str, Any]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "eventbus", "run", "tests.operations.service_app:bus",
                "--http", "127.0.0.1:0", "--log-format", "json", "--log-level", "INFO",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "EVENTBUS_URL": url, "SERVICE_STREAM": self.stream},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        serving = self.wait_log("http.serving")
        self.address = str(serving["address"])
        self.base = f"http://{self.address}"
        self.client = httpx.Client(base_url=self.base, timeout=5)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"event": "text", "line": line.rstrip()})

    def wait_log(self, event: str, timeout: float = 60) -> dict[str, Any]:
        found = wait(
            lambda: next((line for line in self.lines if line.get("event") == event), None),
            timeout,
            f"log line {event!r}",
            self,
        )
        assert isinstance(found, dict)
        return found

    def get(self, path: str) -> httpx.Response:
        return self.client.get(path)

    def ready(self) -> bool:
        try:
            return self.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def not_ready(self) -> httpx.Response | None:
        response = self.get("/readyz")
        return response if response.status_code == 503 else None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels` (0 if none)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code (the process must stop gracefully in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        self.client.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.client.close()

    def log_tail(self) -> str:
        return "\n".join(json.dumps(line) for line in self.lines[-30:])


def wait(
    condition: Callable[[], Any], timeout: float, what: str, service: Service | None = None
) -> Any:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if service is not None and service.proc.poll() is not None:
            raise AssertionError(
                f"the service exited ({service.proc.returncode}) while waiting for {what}:\n"
                + service.log_tail()
            )
        if time.monotonic() > deadline:
            tail = service.log_tail() if service is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(0.05)


def order_class(stream: str) -> type[Event]:
    """The service app's event class, declared on the test's side."""

    class Order(Event, stream=stream, type="order.placed"):
        order_id: str

    return Order
