"""Killing a process at random moments, again and again (the crash proofs): start it,
let it make progress up to a random point, SIGKILL it, start it again; the last run
finishes the work and stops gracefully (SIGTERM)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eventbus.testing.conformance import until

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class KillRun:
    """What happened: where each kill struck (progress reached) and how long each run
    took from its start to the kill (or, for the last, to the end of the work)."""

    kills: list[int] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.kills)} kills at progress {self.kills}; runs took "
            f"{', '.join(f'{r:.1f}' for r in self.runs)} s"
        )


async def kill_repeatedly(
    module: str,
    args: Sequence[str],
    progress: Callable[[], int],
    activity: Callable[[], int],
    done: Callable[[], bool],
    *,
    total: int,
    kills: int,
    seed: int,
    timeout: float = 240.0,
) -> KillRun:
    """Run `python -m module *args` `kills` times, SIGKILLing each run at a random
    moment: once it has handled a random number of events (`activity()`, re-runs
    included), up to twice its even share of the work not yet done (`total - progress()`)
    so that every run has work left; then once more until `done()`, stopped with SIGTERM."""
    rng = random.Random(seed)
    run = KillRun()
    env = {**os.environ, "EVENTBUS_LOG_LEVEL": "WARNING"}
    for kill in range(kills):
        remaining = total - progress()
        share = remaining // (kills - kill + 1)
        assert share >= 1, f"too little work left for {kills - kill} more kills"
        target = activity() + rng.randint(1, 2 * share - 1)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, cwd=ROOT, env=env
        )
        try:

            def reached(t: int = target, p: asyncio.subprocess.Process = proc) -> bool:
                return activity() >= t or p.returncode is not None

            await until(reached, timeout=timeout, what=f"activity {target} of {module}")
            assert proc.returncode is None, f"{module} exited early: {proc.returncode}"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
        run.kills.append(progress())
        run.runs.append(time.monotonic() - started)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=ROOT, env=env
    )
    try:
        await until(
            lambda: done() or proc.returncode is not None,
            timeout=timeout,
            what=f"the last run of {module} finishing the work",
        )
        assert proc.returncode is None, f"{module} exited early: {proc.returncode}"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    run.runs.append(time.monotonic() - started)
    return run


def progress_of(path: Path) -> Callable[[], int]:
    """Distinct numbers the process wrote to `path`, one per line (a line cut by the kill
    does not count)."""

    def count() -> int:
        seen = set()
        for line in path.read_text().splitlines():
            if line.strip().isdigit():
                seen.add(int(line))
        return len(seen)

    return count


def activity_of(path: Path) -> Callable[[], int]:
    """Lines the processes wrote to `path` (every handled event, re-runs included)."""
    return lambda: path.read_bytes().count(b"\n")


def outputs_of(outputs: Iterable[tuple[str, int]], total: int) -> dict[str, int]:
    """Figures of what a crash run committed: `(key, input number)` per output, in the
    order it was committed per key. Counts outputs, inputs with none (`missing`), extra
    copies (`duplicates`) and breaks of key order among first occurrences."""
    counts: Counter[int] = Counter()
    per_key: dict[str, list[int]] = defaultdict(list)
    for key, n in outputs:
        counts[n] += 1
        per_key[key].append(n)
    out_of_order = 0
    for ns in per_key.values():
        first_seen = list(dict.fromkeys(ns))  # duplicates removed, first occurrence kept
        out_of_order += sum(1 for a, b in itertools.pairwise(first_seen) if b < a)
    return {
        "outputs": sum(counts.values()),
        "missing": sum(1 for n in range(total) if n not in counts),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "out of key order": out_of_order,
    }
