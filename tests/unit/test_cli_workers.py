"""`eventbus run app:bus --workers N`: the supervisor starts N worker processes, starts a
killed one again, forwards SIGTERM so every worker stops gracefully, and gives up (exit 2)
instead of looping when a worker cannot start for a configuration error.

On memory:// each worker has its own in-process broker: these tests check the processes,
not the sharing of a group (tests/kafka/test_workers.py does that on a real broker).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.unit.workers_app:bus"


class Run:
    """`eventbus run APP --workers N --log-format json` with its JSON log lines collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "eventbus",
                "run",
                APP,
                "--log-format",
                "json",
                "--log-level",
                "INFO",
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, "EVENTBUS_URL": "memory://", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.text.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.lines.append(record)

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            r
            for r in list(self.lines)
            if r.get("event") == name and all(r.get(k) == v for k, v in fields.items())
        ]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll the collected lines until `condition()` holds (the processes' own pace);
        give up early once the output ended (every writer exited) without it."""
        deadline = time.monotonic() + timeout
        while not condition():
            ended = not self._reader.is_alive()
            if time.monotonic() > deadline or (ended and not condition()):
                raise AssertionError(f"{what}: not seen; output:\n{''.join(self.text)[-3000:]}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(10)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    made: list[Run] = []
    yield made
    for run in made:
        run.close()


def test_workers_are_restarted_when_killed_and_stop_gracefully_on_sigterm(
    runs: list[Run],
) -> None:
    run = Run("--workers", "2")
    runs.append(run)
    run.wait(lambda: len(run.events("bus.started")) == 2, "two workers running")
    started = {r["worker"]: r["pid"] for r in run.events("supervisor.worker_started")}
    assert sorted(started) == [0, 1] and len(set(started.values())) == 2

    os.kill(started[0], signal.SIGKILL)  # a crash
    run.wait(
        lambda: bool(run.events("supervisor.worker_exited", worker=0, returncode=-9)),
        "the killed worker's exit",
    )
    run.wait(lambda: len(run.events("bus.started")) == 3, "the killed worker running again")
    again = run.events("supervisor.worker_started", worker=0)[-1]["pid"]
    assert again != started[0]
    assert not run.events("supervisor.worker_exited", worker=1), "the other one kept running"

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(60) == 0, "".join(run.text)[-3000:]
    run._reader.join(10)
    assert len(run.events("bus.stopped")) == 2, "".join(run.text)[-6000:]
    [stopped] = run.events("supervisor.stopped")
    assert stopped["returncodes"] == [0, 0] and stopped["status"] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_workers_stop_when_the_supervisor_is_killed(runs: list[Run]) -> None:
    run = Run("--workers", "2")
    runs.append(run)
    run.wait(lambda: len(run.events("bus.started")) == 2, "two workers running")
    pids = [r["pid"] for r in run.events("supervisor.worker_started")]
    run.proc.kill()
    run.proc.wait(30)
    run.wait(lambda: len(run.events("bus.stopped")) == 2, "both workers stopped gracefully")
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):  # reaped by init: polled
        assert time.monotonic() < deadline, f"workers {pids} outlived their supervisor"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_bad_setting_is_refused_before_any_worker_starts(runs: list[Run]) -> None:
    run = Run(
        "--workers", "2", env={"EVENTBUS_URL": "amqp://u:p@h/", "EVENTBUS_RABBITMQ_PREFETCH": "x"}
    )
    runs.append(run)
    code = run.proc.wait(60)
    run._reader.join(10)
    output = "".join(run.text)
    assert code == 2, output[-3000:]
    assert "eventbus: error:" in output and "prefetch" in output.lower(), output[-3000:]
    assert not run.events("supervisor.worker_started")


def test_a_worker_that_cannot_start_stops_the_supervisor(runs: list[Run]) -> None:
    """Worker 1 cannot serve its probes (its port, PORT+1, is taken): a start-up error that
    every restart would meet again. The supervisor stops worker 0 and exits 2, once."""
    with socket.socket() as taken:
        port = _port_below_a_taken_one(taken)
        run = Run("--workers", "2", "--http", f"127.0.0.1:{port}")
        runs.append(run)
        code = run.proc.wait(90)
    run._reader.join(10)
    output = "".join(run.text)
    assert code == 2, output[-3000:]
    assert f"cannot serve HTTP on 127.0.0.1:{port + 1}" in output, output[-3000:]
    [gave_up] = run.events("supervisor.giving_up")
    assert gave_up["worker"] == 1
    assert len(run.events("supervisor.worker_started", worker=1)) == 1, "no restart loop"


def _port_below_a_taken_one(taken: socket.socket) -> int:
    """Bind `taken` to a free port P+1 such that P is free too; -> P."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1]) - 1
        try:
            with socket.socket() as below:
                below.bind(("127.0.0.1", port))
            taken.bind(("127.0.0.1", port + 1))
            taken.listen()
            return port
        except OSError:
            continue
    raise AssertionError("no two adjacent free ports")


def test_workers_must_be_a_positive_number() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "eventbus", "run", APP, "--workers", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVENTBUS_URL": "memory://"},
    )
    assert done.returncode == 2
    assert "--workers: expected a whole number >= 1, got '0'" in done.stderr
