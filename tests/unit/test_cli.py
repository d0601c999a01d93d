import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventbus import Event, EventBus, Reject, RetryPolicy
from eventbus.testing.conformance import unique

ROOT = Path(__file__).resolve().parents[2]


def eventbus(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventbus", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EVENTBUS_LOG_FORMAT": "json", "EVENTBUS_LOG_LEVEL": "INFO"},
    )


def wait_for_started(proc: subprocess.Popen[str]) -> str:
    """The first `started ...` line the service prints (or "" if it ends first)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("started") or not line:
            break
    return line.strip()


def test_run_stops_gracefully_on_sigterm_letting_the_handler_finish() -> None:
    proc = eventbus("run", "tests.unit.cli_app:bus")
    assert wait_for_started(proc) == "started one", proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "finished one" in out  # the in-flight handler finished before exit
    assert "bus.stopped" in err
    # startup was over: the heap built so far is frozen (Settings.freeze_heap)
    frozen = [json.loads(line) for line in err.splitlines() if '"heap.frozen"' in line]
    assert len(frozen) == 1 and frozen[0]["objects"] > 10_000, err


def test_run_exits_on_sigterm_although_a_sync_handler_never_returns() -> None:
    """The stuck handler's thread is a daemon: the graceful stop gives up after the
    shutdown timeout and the process exits."""
    proc = eventbus("run", "tests.unit.blocked_app:bus")
    assert wait_for_started(proc) == "started stuck"
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("eventbus run did not exit after SIGTERM") from None
    assert proc.returncode == 0, err
    assert "shutdown.timeout" in err


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


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("amqp://guest:guest@127.0.0.1:5672/", marks=pytest.mark.rabbitmq),
        pytest.param("kafka://127.0.0.1:9092", marks=pytest.mark.kafka),
    ],
)
def test_dlq_list_and_replay_on_a_real_broker(url: str) -> None:
    """Dead letters made by one process are listed and replayed by `eventbus dlq`."""
    stream = unique("cli")

    class Job(Event, stream=stream, type="job.requested"):
        name: str

    handled: list[str] = []
    healthy = False

    async def make_dead_letters() -> None:
        bus = EventBus(url)

        @bus.subscribe(group="workers", retry=RetryPolicy(attempts=1))
        async def work(job: Job) -> None:
            if not healthy:
                raise Reject(f"cannot run {job.name} yet")
            handled.append(job.name)

        async with bus:
            for name in ("a", "b"):
                await bus.publish(Job(name=name), key=name)
            for _ in range(3000):
                if len([d async for d in bus.dead_letters(stream, "workers")]) == 2:
                    return
                await asyncio.sleep(0.01)
        raise AssertionError("no dead letters")

    asyncio.run(make_dead_letters())
    listing = eventbus(
        "dlq", "list", "--url", url, "--stream", stream, "--group", "workers", "--json"
    )
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    letters = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted(json.loads(d["body"])["name"] for d in letters) == ["a", "b"]
    assert {d["headers"]["x-exception-type"] for d in letters} == {"eventbus.Reject"}

    replay = eventbus("dlq", "replay", "--url", url, "--stream", stream, "--group", "workers")
    out, err = replay.communicate(timeout=60)
    assert replay.returncode == 0, err
    assert "replayed 2 dead letter(s)" in out

    healthy = True

    async def consume_replayed() -> None:
        bus = EventBus(url)

        @bus.subscribe(group="workers")
        async def work(job: Job) -> None:
            handled.append(job.name)

        async with bus:
            for _ in range(3000):
                if len(handled) == 2:
                    return
                await asyncio.sleep(0.01)

    asyncio.run(consume_replayed())
    assert sorted(handled) == ["a", "b"]
