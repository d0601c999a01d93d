"""Measurement plumbing: scenarios, interleaved repetitions, statistics, progress."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from eventbus import freeze_heap

from .servers import SERVERS, ServerClock

#: µs of this process's CPU per event (user + system, client library threads included)
CPU = "cpu_us_per_event"
#: µs of the local broker's (or database server's) CPU per event, beside the client's
SERVER_CPU = "server_cpu_us_per_event"

#: a run of one implementation: returns its metrics (events/s, latency percentiles, ...)
Runner = Callable[[], Awaitable[dict[str, float]]]

#: the local server of the scenario being run (`run_scenarios` sets it; stopwatches read it)
_SERVER: ContextVar[ServerClock | None] = ContextVar("benchmark_server", default=None)
_NO_SERVER = ServerClock(None)


class Stopwatch:
    """The stretch of a run that is measured, on three clocks: wall-clock, this process's
    CPU time (client library threads included) and the CPU time of the scenario's local
    server (`servers.ServerClock`; None where there is none). It starts when made (again
    on `restart`); `stop` reads it, and so does leaving a `with` block.

    A run's CPU per event is taken over the stretch its throughput is: what comes before
    (the bus starting, a topic created, the warm-up event) and after (stopping, deleting)
    costs the same for 5k events as for 50k, and counted per event it made the figure
    follow the run's length and the setup's moods (1 to 3 µs of a Kafka publish's 6.5)."""

    def __init__(self) -> None:
        self.server = _SERVER.get() or _NO_SERVER
        self.wall = self.cpu = 0.0
        self.server_cpu: float | None = None
        self.restart()

    def restart(self) -> None:
        self._server = self.server.seconds()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def lap(self) -> float:
        """Wall-clock seconds since the start (the watch runs on)."""
        return time.perf_counter() - self._wall

    def stop(self) -> Stopwatch:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        now, started = self.server.seconds(), self._server
        self.server_cpu = None if now is None or started is None else now - started
        return self

    def __enter__(self) -> Stopwatch:
        self.restart()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class Scenario:
    """One workload on one broker, run by several implementations side by side."""

    broker: str
    name: str
    description: str
    #: implementation name -> runner; the first is eventbus, the others baselines
    runners: dict[str, Runner]
    #: the metric this scenario is judged by ("throughput" or "p99_ms", ...)
    metric: str = "throughput"
    higher_is_better: bool = True


@dataclass
class Outcome:
    scenario: Scenario
    #: implementation -> metric -> values of every repetition
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: implementation -> the error of every failed repetition
    failures: dict[str, list[str]] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, str]:
        """Implementations that failed every repetition -> their last error."""
        return {i: f[-1] for i, f in self.failures.items() if i not in self.samples}

    def median(self, impl: str, metric: str | None = None) -> float | None:
        values = self.samples.get(impl, {}).get(metric or self.scenario.metric)
        return statistics.median(values) if values else None

    def spread(self, impl: str, metric: str | None = None) -> tuple[float, float] | None:
        values = self.samples.get(impl, {}).get(metric or self.scenario.metric)
        return (min(values), max(values)) if values else None

    def ratio(self, impl: str, baseline: str, metric: str | None = None) -> float | None:
        """eventbus/baseline, oriented so that > 1 means eventbus is better."""
        a, b = self.median(impl, metric), self.median(baseline, metric)
        if a is None or b is None or a == 0 or b == 0:
            return None
        return a / b if self.scenario.higher_is_better else b / a


class Progress:
    """Where a run is, on stderr, in one of three modes:

    - `bar`: a rich progress bar (runs done of all, elapsed, ETA, the run under way);
    - `plain`: one line per finished run with its count, elapsed time and ETA (CI logs);
    - `quiet`: nothing.

    `auto` is `bar` on a terminal and `plain` otherwise. The bar is redrawn only when a run
    begins or ends, never by a refresh thread: the CPU time of a run is measured for the
    whole process (`cpu_us_per_event`), and a 10 Hz redraw would be counted in it.
    """

    def __init__(self, total: int, mode: str = "auto", console: Console | None = None) -> None:
        if mode not in {"auto", "bar", "plain", "quiet"}:
            raise ValueError(f"progress mode {mode!r}: auto, bar, plain or quiet")
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self.console = console or Console(stderr=True)
        if mode == "auto":
            mode = "bar" if self.console.is_terminal else "plain"
        self.mode = mode
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            self._bar = RichProgress(
                TextColumn("[bold]{task.completed}/{task.total}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                console=self.console,
                auto_refresh=False,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.stop()
            self._bar = None

    def begin(self, label: str) -> None:
        """A run starts."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=label[:60])
            self._bar.refresh()

    def finish(self, label: str, error: str | None = None) -> None:
        """A run ended (`error`: how it failed)."""
        self.done += 1
        if self._bar is not None and self._task is not None:
            if error is not None:
                self._bar.console.print(f"{label} FAILED: {error}"[:200], markup=False)
            self._bar.update(self._task, completed=self.done)
            self._bar.refresh()
        elif self.mode == "plain":
            elapsed = time.monotonic() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            line = f"{self.done}/{self.total} {elapsed:5.0f}s eta {eta:5.0f}s  {label}"
            if error is not None:
                line = f"{line} FAILED: {error}"[:200]
            print(line, file=self.console.file, flush=True)


async def run_scenarios(
    scenarios: list[Scenario], repetitions: int, progress: str = "auto"
) -> list[Outcome]:
    """Run every scenario `repetitions` times, implementations interleaved within each
    repetition (eventbus, raw, FastStream, eventbus, raw, ...) so drift hits all alike.
    `progress`: how to show it (`Progress`).

    Each run measures its own stretch with a `Stopwatch`, which reads the CPU clock of
    the scenario's local server (`servers.SERVERS`) set here for it.

    Every run starts on a frozen heap (`eventbus.freeze_heap`, what `bus.run()` does once
    a service started): the collector's full passes then visit what the run itself
    creates, not everything the runs before it left in this process. Without it a run's
    cost depends on its place in the suite: the Kafka batch scenario measured 1.7x one
    event per call in a fresh process and 1.0x at the end of a full run."""
    outcomes = [Outcome(s) for s in scenarios]
    total = sum(len(s.runners) for s in scenarios) * repetitions
    clocks: dict[str, ServerClock] = {}
    with Progress(total, progress) as shown:
        for outcome in outcomes:
            scenario = outcome.scenario
            broker = scenario.broker
            if broker not in clocks:  # found once: the server's pid stays the same
                clocks[broker] = ServerClock.at(SERVERS.get(broker))
            server = clocks[broker]
            for rep in range(repetitions):
                for impl, runner in scenario.runners.items():
                    label = f"{scenario.broker}/{scenario.name}/{impl} #{rep + 1}"
                    shown.begin(label)
                    freeze_heap()
                    token = _SERVER.set(server)
                    try:
                        metrics = await runner()
                    except Exception as exc:  # one failing run must not hide the others
                        error = f"{type(exc).__name__}: {exc}"
                        outcome.failures.setdefault(impl, []).append(error)
                        shown.finish(label, error)
                        continue
                    finally:
                        _SERVER.reset(token)
                    metrics.pop("events", None)
                    for metric, value in metrics.items():
                        outcome.samples.setdefault(impl, {}).setdefault(metric, []).append(value)
                    shown.finish(label)
    return outcomes


def percentiles(latencies_ns: Iterable[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    if not ordered:
        return {}

    def pct(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": ordered[-1] / 1e6}


def metrics_of(
    count: int,
    seconds: float,
    latencies_ns: Iterable[int] | None = None,
    watch: Stopwatch | None = None,
) -> dict[str, Any]:
    """Throughput of `count` events in `seconds`, the latency percentiles, and the CPU per
    event (this process's and the server's) over the stretch `watch` measured (stopped)."""
    result: dict[str, Any] = {
        "throughput": count / seconds if seconds > 0 else 0.0,
        "events": float(count),  # what the figures are per (not kept as a sample)
    }
    if latencies_ns is not None:
        result.update(percentiles(latencies_ns))
    if watch is not None and count > 0:
        result[CPU] = watch.cpu * 1e6 / count
        if watch.server_cpu is not None:
            result[SERVER_CPU] = watch.server_cpu * 1e6 / count
    return result
