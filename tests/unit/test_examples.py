"""The README example runs unchanged on every broker: the broker is configuration only."""

import os
import subprocess
import sys
from pathlib import Path

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
