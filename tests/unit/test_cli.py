import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def eventbus(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventbus", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EVENTBUS_LOG_FORMAT": "json"},
    )


def test_run_stops_gracefully_on_sigterm_letting_the_handler_finish() -> None:
    proc = eventbus("run", "tests.unit.cli_app:bus")
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("started") or not line:
            break
    assert line.strip() == "started one", proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "finished one" in out  # the in-flight handler finished before exit
    assert "bus.stopped" in err


def test_run_with_bad_target_is_a_clear_error() -> None:
    proc = eventbus("run", "tests.unit.no_such_module:bus")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "cannot import 'tests.unit.no_such_module'" in err


def test_dlq_with_bad_url_is_a_clear_error() -> None:
    proc = eventbus("dlq", "list", "--stream", "s", "--group", "g", "--url", "nats://x:pw@h/")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "no adapter for scheme 'nats'" in err
    assert "pw" not in err.replace("pw@", "")  # only the redacted form may appear
    assert "x:***@h" in err
