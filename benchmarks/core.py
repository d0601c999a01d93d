"""Measurement plumbing: scenarios, interleaved repetitions, statistics, progress."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: a run of one implementation: returns its metrics (events/s, latency percentiles, ...)
Runner = Callable[[], Awaitable[dict[str, float]]]


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
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        elapsed = time.monotonic() - self.started
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.0f}s  {label[:60]}"
        )
        if self.tty:
            sys.stderr.write("\r" + line.ljust(110))
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


async def run_scenarios(scenarios: list[Scenario], repetitions: int) -> list[Outcome]:
    """Run every scenario `repetitions` times, implementations interleaved within each
    repetition (eventbus, raw, FastStream, eventbus, raw, ...) so drift hits all alike."""
    outcomes = [Outcome(s) for s in scenarios]
    progress = Progress(sum(len(s.runners) for s in scenarios) * repetitions)
    for outcome in outcomes:
        scenario = outcome.scenario
        for rep in range(repetitions):
            for impl, runner in scenario.runners.items():
                label = f"{scenario.broker}/{scenario.name}/{impl} #{rep + 1}"
                cpu = time.process_time()
                try:
                    metrics = await runner()
                except Exception as exc:  # one failing run must not hide the others
                    outcome.failures.setdefault(impl, []).append(f"{type(exc).__name__}: {exc}")
                    progress.step(label + f" FAILED: {type(exc).__name__}: {exc}"[:200])
                    continue
                events = metrics.pop("events", 0)
                if events:  # the whole run, client library threads included (not the broker)
                    metrics["cpu_us_per_event"] = (time.process_time() - cpu) * 1e6 / events
                for metric, value in metrics.items():
                    outcome.samples.setdefault(impl, {}).setdefault(metric, []).append(value)
                progress.step(label)
    return outcomes


def percentiles(latencies_ns: list[int]) -> dict[str, float]:
    if not latencies_ns:
        return {}
    ordered = sorted(latencies_ns)

    def pct(p: float) -> float:
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": ordered[-1] / 1e6}


def metrics_of(count: int, seconds: float, latencies_ns: list[int] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "throughput": count / seconds if seconds > 0 else 0.0,
        "events": float(count),  # becomes cpu_us_per_event in run_scenarios
    }
    if latencies_ns:
        result.update(percentiles(latencies_ns))
    return result
