"""How fast this machine ran Python during a benchmark run, and how much of it others took:
the figures that let a reader compare two runs.

Ratios measured side by side in one run hold across machines; absolute figures do not.
On the VMs these benchmarks run on, the same code's CPU per event has differed by 40%
between two runs of one day (another VM, a noisy neighbour). Each run therefore records:

- `reference_us`: the CPU time (µs) of a fixed piece of pure-Python work shaped like a
  client's per-event work (a dict built, a uuid made, JSON encoded and decoded, a few
  attribute reads), the best of several rounds, measured before the first scenario and
  after the last. Lower is faster. Two runs whose reference figures differ by 30% can be
  expected to differ so in every absolute CPU figure; a drift between start and end says
  the machine changed speed during the run.
- `steal_pct`: the share of the machine's CPU time the hypervisor gave to other guests
  during the run (`steal` of the machine's CPU times): a noisy neighbour, in one number.
- `busy_before_pct`: how busy the machine's CPUs were during the second before the run
  started, while the benchmark itself only waited: something else was running if it is
  well above the few percent the benchmark's own idle brokers take. (Not the load
  average: its one-minute figure still carries what ran the minute before.)

`busy_warning` says in words when either is high enough to distrust absolute figures.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil

#: reference units per round, and rounds (the best counts: interference only slows down)
UNITS = 2_000
ROUNDS = 7
#: above these, absolute figures of the run are not to be trusted (ratios still are)
STEAL_WARNING_PCT = 5.0
BUSY_WARNING_PCT = 20.0
DRIFT_WARNING = 0.15


def reference_unit(n: int) -> None:
    """The reference work, `n` times: what a client does per event in pure Python."""
    dumps, loads, uuid4 = json.dumps, json.loads, uuid.uuid4
    for i in range(n):
        attributes = {
            "id": str(uuid4()),
            "source": "benchmarks",
            "type": "order.created",
            "specversion": "1.0",
            "n": i,
        }
        body = dumps(attributes, separators=(",", ":")).encode()
        back = loads(body)
        if back["n"] != i or len(back["id"]) != 36:
            raise AssertionError("reference unit computed a wrong result")


def reference_us(units: int = UNITS, rounds: int = ROUNDS) -> float:
    """CPU µs of one reference unit: the best of `rounds` rounds of `units` each."""
    reference_unit(units // 10)  # warm-up
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        reference_unit(units)
        best = min(best, time.process_time() - started)
    return best / units * 1e6


def cpu_times() -> tuple[float, float, float]:
    """(all, idle, steal) CPU seconds of the machine since boot (psutil, as
    `servers` uses it); idle counts iowait too, steal is 0 where the OS has none. Guest
    time is left out of the sum: Linux counts it inside user and nice already."""
    times = psutil.cpu_times()
    fields = times._asdict()
    total = sum(v for k, v in fields.items() if k not in ("guest", "guest_nice"))
    return total, times.idle + fields.get("iowait", 0.0), fields.get("steal", 0.0)


def busy_pct(seconds: float = 1.0) -> float | None:
    """How busy the machine's CPUs are over the next `seconds` (this process sleeps)."""
    before = cpu_times()
    time.sleep(seconds)
    after = cpu_times()
    if after[0] <= before[0]:
        return None
    return 100.0 * (1 - (after[1] - before[1]) / (after[0] - before[0]))


@dataclass
class Calibration:
    """The machine's figures over one run: `start()` before it, `finish()` after."""

    reference_us_start: float | None = None
    reference_us_end: float | None = None
    steal_pct: float | None = None
    busy_before_pct: float | None = None
    _times: tuple[float, float, float] | None = None

    def start(self) -> Calibration:
        self.busy_before_pct = busy_pct()
        self.reference_us_start = reference_us()
        self._times = cpu_times()
        return self

    def finish(self) -> Calibration:
        times = cpu_times()
        if self._times is not None:
            total, steal = times[0] - self._times[0], times[2] - self._times[2]
            self.steal_pct = 100.0 * steal / total if total > 0 else 0.0
        self.reference_us_end = reference_us()
        return self

    def to_json(self) -> dict[str, Any]:
        """What results.json keeps (under `machine.calibration`)."""
        figures = {
            "reference_us_start": self.reference_us_start,
            "reference_us_end": self.reference_us_end,
            "steal_pct": self.steal_pct,
            "busy_before_pct": self.busy_before_pct,
        }
        return {k: None if v is None else round(v, 3) for k, v in figures.items()}


def describe(figures: dict[str, Any] | None) -> str:
    """One sentence for the report's header (empty for a run recorded without them)."""
    if not figures:
        return ""
    parts = []
    start, end = figures.get("reference_us_start"), figures.get("reference_us_end")
    if start is not None:
        shown = f"{start:.2f} µs of CPU" + (f" at the start, {end:.2f} at the end" if end else "")
        parts.append(f"reference unit {shown} (lower is faster)")
    if figures.get("steal_pct") is not None:
        parts.append(f"CPU steal {figures['steal_pct']:.1f}% over the run")
    if figures.get("busy_before_pct") is not None:
        parts.append(f"CPUs {figures['busy_before_pct']:.0f}% busy the second before it")
    warning = busy_warning(figures)
    return "Machine: " + "; ".join(parts) + "." + (f" **{warning}**" if warning else "")


def busy_warning(figures: dict[str, Any]) -> str:
    """Why the run's absolute figures are not to be trusted, or ''."""
    reasons = []
    steal = figures.get("steal_pct")
    if steal is not None and steal > STEAL_WARNING_PCT:
        reasons.append(f"the hypervisor took {steal:.1f}% of the CPU")
    busy = figures.get("busy_before_pct")
    if busy is not None and busy > BUSY_WARNING_PCT:
        reasons.append(f"the CPUs were {busy:.0f}% busy before the run (something else ran)")
    start, end = figures.get("reference_us_start"), figures.get("reference_us_end")
    if start and end and abs(end - start) / start > DRIFT_WARNING:
        reasons.append(f"the machine's speed drifted by {100 * (end - start) / start:+.0f}%")
    if not reasons:
        return ""
    return "Busy machine: " + ", ".join(reasons) + "; compare ratios, not absolute figures."
