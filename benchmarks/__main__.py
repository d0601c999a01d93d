"""`python -m benchmarks [--quick] [--brokers memory,rabbitmq,kafka,store] [--only TEXT,...]
[--out DIR] [--progress auto|bar|plain|quiet]`.

Runs every scenario on every broker through eventbus and its baselines, interleaved,
several repetitions; writes results.json, results.md and PNG charts.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eventbus.log import configure as configure_logging

from .calibration import Calibration, busy_warning
from .core import Scenario, run_scenarios
from .report import load, machine, write

#: broker name -> module with `scenarios(quick) -> list[Scenario]`
SUITES = {
    "memory": "benchmarks.memory",
    "rabbitmq": "benchmarks.rabbitmq",
    "kafka": "benchmarks.kafka",
    "store": "benchmarks.store",
    "telemetry": "benchmarks.telemetry",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds (CI)")
    parser.add_argument("--brokers", default=",".join(SUITES), help="comma-separated")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated; keep the scenarios whose '<broker> <scenario>' contains one "
        "(e.g. 'memory end-to-end,kafka batch handler'): a re-run of what a change touched",
    )
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--render", type=Path, metavar="RESULTS_JSON", help="only re-render a results.json"
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "bar", "plain", "quiet"),
        default="auto",
        help="on stderr: a bar with an ETA (auto on a terminal), a line per run (auto "
        "otherwise) or nothing",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        data = json.loads(args.render.read_text())
        paths = write(
            load(args.render), args.render.parent, data.get("mode", "full"), data["machine"]
        )
        print("written: " + ", ".join(str(p) for p in paths.values()))
        return 0
    repetitions = args.repetitions or (1 if args.quick else 5)
    # the failure scenario fails thousands of times on purpose: one log line each would
    # flood the output (and measure the terminal); warnings and below are off here
    configure_logging("console", "ERROR", force=True)
    scenarios: list[Scenario] = []
    for name in args.brokers.split(","):
        if name not in SUITES:
            parser.error(f"unknown broker {name!r}; known: {', '.join(SUITES)}")
        module = importlib.import_module(SUITES[name])
        scenarios += module.scenarios(args.quick)
    scenarios = selected(scenarios, args.only)
    if not scenarios:
        parser.error(f"no scenario matches --only {args.only!r}")
    calibration = Calibration().start()
    if warning := busy_warning(calibration.to_json()):
        print(warning, file=sys.stderr)
    outcomes = asyncio.run(run_scenarios(scenarios, repetitions, args.progress))
    info = machine()
    info["calibration"] = calibration.finish().to_json()
    paths = write(outcomes, args.out, "quick" if args.quick else "full", info)
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    failed = [f"{o.scenario.broker}/{o.scenario.name}/{i}" for o in outcomes for i in o.errors]
    if failed:
        print("failed runs: " + ", ".join(failed), file=sys.stderr)
    return 1 if any("eventbus" in f.split("/")[-1] for f in failed) else 0


def selected(scenarios: list[Scenario], only: str) -> list[Scenario]:
    """The scenarios whose `<broker> <name>` contains one of the comma-separated `only`
    (all of them when `only` is empty)."""
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    if not wanted:
        return scenarios
    return [s for s in scenarios if any(w in f"{s.broker} {s.name}" for w in wanted)]


if __name__ == "__main__":
    raise SystemExit(main())
