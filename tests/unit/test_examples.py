"""The README example runs unchanged on every broker: the broker is configuration only."""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        pytest.param("amqp://guest:guest@127.0.0.1:5672/", marks=pytest.mark.rabbitmq),
        pytest.param("kafka://127.0.0.1:9092", marks=pytest.mark.kafka),
    ],
)
def test_quickstart_runs_on(url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        env={**os.environ, "EVENTBUS_URL": url, "EVENTBUS_LOG_LEVEL": "ERROR"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "audit:   9 events" in proc.stdout
    assert "order" in proc.stdout and "non-positive total" in proc.stdout


def test_quickstart_without_the_kafka_extra_says_what_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "confluent_kafka.py"  # shadows the installed package: import fails
    shim.write_text(
        "raise ImportError(\"No module named 'confluent_kafka'\", name='confluent_kafka')\n"
    )
    proc = subprocess.run(
        [sys.executable, "examples/quickstart.py"],
        cwd=ROOT,
        env={**os.environ, "EVENTBUS_URL": "kafka://127.0.0.1:9092", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "pip install 'eventbus[kafka]'" in proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        pytest.param("amqp://guest:guest@127.0.0.1:5672/", marks=pytest.mark.rabbitmq),
        pytest.param("kafka://127.0.0.1:9092", marks=pytest.mark.kafka),
    ],
)
def test_the_fastapi_example_on_uvicorn(url: str) -> None:
    """`uvicorn examples.fastapi_app:app` as a process: a POST publishes, the handler logs
    the request's correlation id, SIGTERM stops the server and then the bus."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", "0"],
        cwd=ROOT,
        env={
            **os.environ,
            "EVENTBUS_URL": url,
            "EVENTBUS_LOG_FORMAT": "json",
            "EVENTBUS_LOG_LEVEL": "INFO",  # the handler's info line is what the test reads
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def read() -> None:
        for line in proc.stderr or ():
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()

    def wait_for(found: Callable[[str], bool], what: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            log.append(line)
            if found(line):
                return line
        raise AssertionError(f"no {what} in the log:\n{''.join(log[-30:])}")

    def event(name: str, **fields: str) -> Callable[[str], bool]:
        def matches(line: str) -> bool:
            try:
                entry = json.loads(line)
            except ValueError:
                return False
            return bool(entry.get("event") == name and fields.items() <= entry.items())

        return matches

    try:
        started = wait_for(lambda line: "Uvicorn running on" in line, "uvicorn's start")
        port = re.findall(r"http://127\.0\.0\.1:(\d+)", started)[0]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/readyz").status_code == 200
            placed = client.post(
                "/orders",
                json={"order_id": "o-1", "total_cents": 1200},
                headers={"X-Correlation-ID": "checkout-42"},
            )
            assert placed.status_code == 202, placed.text
            assert placed.headers["X-Correlation-ID"] == "checkout-42"
            assert "/orders" in client.get("/openapi.json").json()["paths"]
        shipping = event("order.shipping", order_id="o-1", correlation_id="checkout-42")
        wait_for(shipping, "the handler's line with the correlation id")
        proc.send_signal(signal.SIGTERM)
        wait_for(event("bus.stopped"), "bus.stopped")  # the lifespan's end, after serving
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
