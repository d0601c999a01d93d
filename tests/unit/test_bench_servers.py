"""The server CPU clock of the benchmarks (`benchmarks.servers`): it finds the process
listening on a port, counts the CPU of the children that process reaped, and reads
nothing for a server it cannot see; the report shows the figure beside the client's."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from benchmarks import servers
from benchmarks.core import CPU, SERVER_CPU, Outcome, Scenario, Stopwatch, metrics_of, run_scenarios
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


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A local "server" process (`_SERVER`) and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    try:
        yield proc, int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def _busy_child(proc: subprocess.Popen[str]) -> None:
    """Make the server run a CPU-bound child to its end."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"


def _burn(seconds: float) -> None:
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass


def test_the_clock_finds_the_listener_and_counts_the_children_it_reaped(
    server: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = server
    clock = ServerClock.at(f"amqp://guest:secret@127.0.0.1:{port}/")
    assert clock.pid == proc.pid
    before = clock.seconds()
    assert before is not None
    _busy_child(proc)  # the child ran and was reaped
    after = clock.seconds()
    assert after is not None and after - before >= 0.25  # the child's 0.3 s


async def test_a_run_counts_the_cpu_of_its_measured_stretch_only_and_its_servers(
    server: tuple[subprocess.Popen[str], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, port = server
    monkeypatch.setitem(servers.SERVERS, "kafka", f"127.0.0.1:{port}")

    async def run() -> dict[str, float]:
        _burn(0.3)  # setting up: not per event
        with Stopwatch() as watch:
            _burn(0.05)
            _busy_child(proc)  # the server's 0.3 s
        return metrics_of(1_000, watch.wall, watch=watch)

    scenario = Scenario("kafka", "publish", "", {"eventbus": run})
    [outcome] = await run_scenarios([scenario], 1, "quiet")
    cpu, on_server = outcome.median("eventbus", CPU), outcome.median("eventbus", SERVER_CPU)
    assert cpu is not None and 50 <= cpu < 250  # 0.05 s over 1,000 events, not the 0.3 before
    assert on_server is not None and on_server >= 250
    assert "events" not in outcome.samples["eventbus"]


@pytest.mark.parametrize("url", [None, "kafka.example.com:9092", "127.0.0.1:1"])
def test_a_server_it_cannot_see_is_not_measured(url: str | None) -> None:
    clock = ServerClock.at(url)
    assert clock.pid is None and clock.seconds() is None


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
