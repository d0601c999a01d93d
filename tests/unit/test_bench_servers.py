"""The server CPU clock of the benchmarks (`benchmarks.servers`): it finds the process
listening on a port, counts the CPU of the children that process reaped, and reads
nothing for a server it cannot see; the report shows the figure beside the client's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.core import CPU, SERVER_CPU, Outcome, Scenario
from benchmarks.report import to_markdown
from benchmarks.servers import ServerClock, address_of

#: a "server": listens, then on each input line runs a CPU-bound child to its end
_SERVER = r"""
import socket, subprocess, sys
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
for _ in sys.stdin:
    subprocess.run([sys.executable, "-c", "import time\nwhile time.process_time() < 0.3: pass"])
    print("done", flush=True)
"""


def test_the_clock_finds_the_listener_and_counts_the_children_it_reaped() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        clock = ServerClock.at(f"amqp://guest:secret@127.0.0.1:{port}/")
        assert clock.pid == proc.pid
        before = clock.seconds()
        assert before is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"  # the child ran and was reaped
        per_event = clock.per_event(before, 1_000)
        assert per_event is not None and per_event >= 250  # 0.3 s over 1,000 events
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("url", [None, "kafka.example.com:9092", "127.0.0.1:1"])
def test_a_server_it_cannot_see_is_not_measured(url: str | None) -> None:
    clock = ServerClock.at(url)
    assert clock.pid is None and clock.seconds() is None
    assert clock.per_event(1.0, 100) is None


def test_addresses_of_urls_and_bootstrap_lists() -> None:
    assert address_of("127.0.0.1:9092,127.0.0.1:9093") == ("127.0.0.1", 9092)
    assert address_of("postgresql://u:p@localhost:5432/db") == ("localhost", 5432)
    assert address_of("amqp://guest:guest@127.0.0.1/") is None  # no port: not guessed


def test_the_report_shows_the_servers_cpu_beside_the_clients() -> None:
    scenario = Scenario("kafka", "end-to-end", "", {})
    outcome = Outcome(
        scenario,
        {
            "eventbus": {"throughput": [1000.0], CPU: [20.0], SERVER_CPU: [12.5]},
            "raw": {"throughput": [2000.0], CPU: [10.0]},
        },
    )
    info = {"date": "-", "cpu": "-", "cores": 2, "python": "3", "versions": {}}
    rows = to_markdown([outcome], "quick", info).splitlines()
    assert "| server CPU µs/event |" in rows[2]
    assert "| 20.0 | 12.5 |  |" in next(r for r in rows if "| eventbus |" in r)
    assert "| 10.0 | - | 0.50x |" in next(r for r in rows if "| raw |" in r)
