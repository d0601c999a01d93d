"""`python -m benchmarks.curves [--quick] [--brokers memory,rabbitmq,kafka]
[--curves payload,groups,rate,rss] [--repetitions N] [--out DIR]`: how cost grows.

- payload: end-to-end throughput and client CPU per event against the size of the
  payload (about 100 B, 1 KB, 10 KB, 100 KB), eventbus beside the raw client;
- groups: the same against the number of consumer groups subscribed to one stream (1, 4,
  16; every group gets every event, so the unit is a delivery);
- rate: latency p50/p99 against the offered publish rate, swept past saturation;
- rss: the resident memory of the process through a sustained run (1M events on memory://,
  200k on each broker) with at most `WINDOW` events in flight: flat means no growth per
  event. On memory:// it also measures what an event waiting in the in-process broker
  costs (the one in-flight event held in this process; a broker holds its own backlog
  and the clients' prefetch is bounded by configuration).

The same run functions as the main suite (`benchmarks.memory`, `.rabbitmq`, `.kafka`),
varied by a `Load`; the same measurement (`run_scenarios`: interleaved implementations,
CPU time of the whole process per event). RabbitMQ uses its default quorum queue, Kafka
its same-headers raw loop (the same bytes on the wire). Writes curves.json, curves.md and
one PNG per curve. Not part of CI's quick run: a full sweep takes about half an hour.

No `from __future__ import annotations`: handlers are annotated with per-run event classes.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from eventbus import Context, EventBus
from eventbus.log import configure as configure_logging

from . import kafka, memory, rabbitmq
from .core import Outcome, Runner, Scenario, Stopwatch, metrics_of, run_scenarios
from .pacing import wait_for_count
from .report import machine, save
from .servers import AMQP_URL, KAFKA_BOOTSTRAP
from .targets import CE, RAW_RABBIT
from .workload import Load, Tally, make_event_class, payload_fields, sample_body

SIZES = (100, 1_000, 10_000, 100_000)
GROUPS = (1, 4, 16)
RATES = {
    "memory": (1_000, 5_000, 10_000, 20_000, 40_000, 80_000, 160_000),
    "rabbitmq": (500, 1_000, 2_000, 4_000, 8_000),
    "kafka": (1_000, 5_000, 10_000, 20_000, 40_000, 80_000),
}
SUSTAINED = {"memory": 1_000_000, "rabbitmq": 200_000, "kafka": 200_000}
WINDOW = 5_000  # events published but not yet handled, at most, in the sustained runs
RAW = {"memory": "raw asyncio.Queue", "rabbitmq": RAW_RABBIT, "kafka": CE}
#: seconds of offered load per point of the rate sweep (within MIN_COUNT..MAX_COUNT events)
SWEEP_SECONDS = 2.0
MIN_COUNT, MAX_COUNT = 2_000, 60_000

#: one end-to-end run of an implementation: (events, rate or None, load) -> metrics
E2E = Callable[[int, float | None, Load], Awaitable[dict[str, float]]]


async def _memory_eventbus(count: int, rate: float | None, load: Load) -> dict[str, float]:
    if rate is None:
        return await memory.eventbus_e2e(count, load)
    return await memory.eventbus_latency(count, rate)


async def _memory_raw(count: int, rate: float | None, load: Load) -> dict[str, float]:
    if rate is None:
        return await memory.raw_e2e(count, load)
    return await memory.raw_latency(count, rate)


IMPLS: dict[str, dict[str, E2E]] = {
    "memory": {"eventbus": _memory_eventbus, RAW["memory"]: _memory_raw},
    "rabbitmq": {
        "eventbus": lambda n, rate, load: rabbitmq.eventbus_run(n, rate, True, load=load),
        RAW_RABBIT: lambda n, rate, load: rabbitmq.raw_run(n, rate, True, load=load),
    },
    "kafka": {
        "eventbus": lambda n, rate, load: kafka.eventbus_run(n, rate, True, load=load),
        CE: lambda n, rate, load: kafka.raw_run(n, rate, True, "CloudEvents", load=load),
    },
}
#: events per run of the payload and groups curves (a tenth in a quick run)
COUNTS = {"memory": 40_000, "rabbitmq": 4_000, "kafka": 20_000}


def pad_for(size: int) -> int:
    """The padding that makes a payload about `size` bytes (0: the standard ~100 B one)."""
    return max(0, size - len(sample_body()) - len(',"note":""'))


def _runners(broker: str, count: int, rate: float | None, load: Load) -> dict[str, Runner]:
    return {name: partial(fn, count, rate, load) for name, fn in IMPLS[broker].items()}


def payload_scenarios(broker: str, quick: bool) -> list[Scenario]:
    base = COUNTS[broker] // (10 if quick else 1)
    result = []
    for size in SIZES:
        # fewer events of the larger payloads: ~the same bytes as 10 KB ones at most
        count = max(200, min(base, base * 1_000 // size))
        result.append(
            Scenario(
                broker,
                f"payload {size:,} B",
                f"end-to-end, {count:,} events of ~{size:,} B",
                _runners(broker, count, None, Load(pad=pad_for(size))),
            )
        )
    return result


def group_scenarios(broker: str, quick: bool) -> list[Scenario]:
    base = COUNTS[broker] // (10 if quick else 1)
    result = []
    for groups in GROUPS:
        count = max(200, base // groups)
        result.append(
            Scenario(
                broker,
                f"groups {groups}",
                f"end-to-end, {count:,} events x {groups} groups (deliveries/s)",
                _runners(broker, count, None, Load(groups=groups)),
            )
        )
    return result


def rate_scenarios(broker: str, quick: bool) -> list[Scenario]:
    result = []
    for rate in RATES[broker][: 3 if quick else None]:
        count = int(min(MAX_COUNT, max(MIN_COUNT, rate * SWEEP_SECONDS)))
        if quick:
            count = min(count, 2_000)
        result.append(
            Scenario(
                broker,
                f"rate {rate:,}/s",
                f"{count:,} events offered at {rate:,}/s",
                _runners(broker, count, rate, Load()),
                metric="p99_ms",
                higher_is_better=False,
            )
        )
    return result


# --- resident memory ---------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size (Linux `/proc/self/statm`)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class RssTrace:
    """RSS sampled every `interval` seconds against the events handled so far."""

    tally: Tally
    interval: float = 0.1
    samples: list[tuple[int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> "RssTrace":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((len(self.tally), rss_bytes()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((len(self.tally), rss_bytes()))

    def summary(self, count: int) -> dict[str, float]:
        """Start (after the first 10% of events: warm caches, full buffers), peak and end
        in MB, and the growth per event: the least-squares slope of RSS over the events
        handled after that first 10%."""
        steady = [(n, rss) for n, rss in self.samples if n >= count // 10] or self.samples
        xs = [float(n) for n, _ in steady]
        ys = [float(rss) for _, rss in steady]
        slope = 0.0
        if len(steady) > 2 and max(xs) > min(xs):
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mx) ** 2 for x in xs
            )
        mb = 1024 * 1024
        return {
            "rss_start_mb": ys[0] / mb,
            "rss_peak_mb": max(ys) / mb,
            "rss_end_mb": ys[-1] / mb,
            "growth_bytes_per_event": slope,
        }


def _url(broker: str) -> str:
    return {
        "memory": f"memory://rss-{uuid.uuid4().hex[:8]}",
        "rabbitmq": AMQP_URL,
        "kafka": f"kafka://{KAFKA_BOOTSTRAP}",
    }[broker]


async def sustained_run(
    broker: str, count: int, traces: dict[str, list[tuple[int, int]]]
) -> dict[str, float]:
    """`count` events through eventbus on `broker`, at most WINDOW in flight, the handler
    counting them (no list grows with the run): RSS sampled throughout, the samples put
    in `traces[broker]`."""
    stream = f"bench{uuid.uuid4().hex[:8]}"
    cls = make_event_class(stream)
    bus = EventBus(_url(broker))
    tally = Tally(every=1_000)

    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        tally.append(time.perf_counter_ns() - event.sent_ns)  # type: ignore[attr-defined]

    bus.add_handler(handle, group="bench")
    try:
        async with bus:
            await bus.publish(cls(**payload_fields(0)))
            await wait_for_count(lambda: len(tally), 1, 60)
            tally.clear()
            watch = Stopwatch()
            with RssTrace(tally) as trace:
                sent = 0
                while sent < count:
                    batch = range(sent, min(sent + 1_000, count))
                    await bus.publish_many([cls(**payload_fields(i)) for i in batch])
                    sent = batch.stop
                    await wait_for_count(lambda: len(tally), sent - WINDOW, 300)
                await wait_for_count(lambda: len(tally), count, 300)
            watch.stop()
    finally:
        if broker == "rabbitmq":
            await rabbitmq._delete(stream, [f"{stream}.bench"])
        elif broker == "kafka":
            await asyncio.to_thread(kafka._delete, stream)
    traces[broker] = trace.samples
    return {**metrics_of(count, watch.wall, watch=watch), **trace.summary(count)}


async def queued_event_bytes(count: int) -> dict[str, float]:
    """What an event waiting in the memory:// broker costs: the Python heap (tracemalloc:
    exact, where RSS would hide it in memory freed earlier) after `count` events were
    published to a group whose member is busy (the handler waits), less before, per
    event. The bodies are the standard ~100 B payload."""
    import gc
    import tracemalloc

    cls = make_event_class(f"bench{uuid.uuid4().hex[:8]}")
    bus = EventBus(f"memory://queued-{uuid.uuid4().hex[:8]}")
    gate = asyncio.Event()
    tally = Tally()

    async def handle(event: cls, ctx: Context) -> None:  # type: ignore[valid-type]
        await gate.wait()
        tally.append(0)

    bus.add_handler(handle, group="bench")
    async with bus:
        await bus.publish(cls(**payload_fields(0)))  # the member is busy from here on
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for first in range(1, count + 1, 1_000):
                batch = range(first, min(first + 1_000, count + 1))
                await bus.publish_many([cls(**payload_fields(i)) for i in batch])
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        gate.set()
        await wait_for_count(lambda: len(tally), count + 1, 120)
    return {"queued_event_bytes": (after - before) / count}


def _sustained_child(broker: str, count: int) -> tuple[dict[str, float], list[tuple[int, int]]]:
    """`sustained_run` in the fresh process (`sustained_in_fresh_process`)."""
    configure_logging("console", "ERROR", force=True)
    traces: dict[str, list[tuple[int, int]]] = {}
    metrics = asyncio.run(sustained_run(broker, count, traces))
    return metrics, traces[broker]


async def sustained_in_fresh_process(
    broker: str, count: int, traces: dict[str, list[tuple[int, int]]]
) -> dict[str, float]:
    """`sustained_run` in a new interpreter: a process that ran other workloads keeps the
    memory it freed (its RSS does not shrink), and growth into that memory would not
    show."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_sustained_child, broker, count)
        metrics, trace = await asyncio.wrap_future(future)
    traces[broker] = trace
    return metrics


def rss_scenarios(
    brokers: Sequence[str], quick: bool, traces: dict[str, list[tuple[int, int]]]
) -> list[Scenario]:
    result = []
    for broker in brokers:
        count = SUSTAINED[broker] // (20 if quick else 1)
        result.append(
            Scenario(
                broker,
                f"rss {count:,} events",
                f"eventbus, {count:,} events, at most {WINDOW:,} in flight",
                {"eventbus": partial(sustained_in_fresh_process, broker, count, traces)},
            )
        )
    if "memory" in brokers:
        count = 10_000 if quick else 100_000
        result.append(
            Scenario(
                "memory",
                "queued event",
                f"heap bytes per event waiting in the broker, {count:,} events",
                {"eventbus": partial(queued_event_bytes, count)},
                metric="queued_event_bytes",
                higher_is_better=False,
            )
        )
    return result


# --- report ------------------------------------------------------------------------------


def _x(outcome: Outcome) -> float:
    """The curve's x of a scenario ("payload 1,000 B" -> 1000)."""
    return float(outcome.scenario.name.split()[1].replace(",", "").rstrip("/s"))


def _kind(outcome: Outcome) -> str:
    return outcome.scenario.name.split()[0]


def to_json(
    outcomes: list[Outcome], traces: dict[str, list[tuple[int, int]]], info: dict[str, Any]
) -> dict[str, Any]:
    curves: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    for o in outcomes:
        for impl in o.samples:
            point: dict[str, float] = {"x": _x(o)} if _kind(o) != "queued" else {}
            point.update({m: o.median(impl, m) or 0.0 for m in o.samples[impl]})
            curves.setdefault(_kind(o), {}).setdefault(o.scenario.broker, {}).setdefault(
                impl, []
            ).append(point)
    errors = {
        f"{o.scenario.broker}/{o.scenario.name}/{impl}": error
        for o in outcomes
        for impl, error in o.errors.items()
    }
    return {"machine": info, "curves": curves, "rss_traces": traces, "errors": errors}


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s curves over `old`'s; each curve keeps the date it was measured on."""
    dates = old.get("dates") or dict.fromkeys(old["curves"], old["machine"]["date"])
    for kind in new["curves"]:
        dates[kind] = new["machine"]["date"]
    kept_errors = {
        key: error
        for key, error in old["errors"].items()
        if key.split("/")[1].split()[0] not in new["curves"]
    }
    return {
        "machine": new["machine"],
        "dates": dates,
        "curves": {**old["curves"], **new["curves"]},
        "rss_traces": new["rss_traces"] or old["rss_traces"],
        "errors": {**kept_errors, **new["errors"]},
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def to_markdown(data: dict[str, Any]) -> str:
    info = data["machine"]
    curves = data["curves"]
    lines = [
        f"Cost curves, {info['date']}: {info['cpu']}, {info['cores']} cores, Python "
        f"{info['python']}. Medians of the repetitions; CPU = the client process's user + "
        "system time per event (per delivery in the groups curve).",
        "",
    ]
    if "dates" in data:
        lines += [
            "Measured on: " + ", ".join(f"{k} {d}" for k, d in data["dates"].items()),
            "",
        ]
    titles = {
        "payload": ("payload size (B)", ("throughput", "cpu_us_per_event")),
        "groups": ("groups on one stream", ("throughput", "cpu_us_per_event")),
        "rate": ("offered rate (/s)", ("throughput", "p50_ms", "p99_ms")),
        "rss": ("events", ("throughput", "rss_start_mb", "rss_peak_mb", "rss_end_mb",
                           "growth_bytes_per_event")),
    }  # fmt: skip
    for kind, (xlabel, metrics) in titles.items():
        if kind not in curves:
            continue
        header = f"| broker | implementation | {xlabel} | " + " | ".join(metrics) + " |"
        lines += [f"### {kind}", "", header, "|---|---|---|" + "---|" * len(metrics)]
        for broker, impls in curves[kind].items():
            for impl, points in impls.items():
                for p in points:
                    cells = [_fmt(p.get(m), 0 if m == "throughput" else 2) for m in metrics]
                    lines.append(
                        f"| {broker} | {impl} | {p['x']:,.0f} | " + " | ".join(cells) + " |"
                    )
        lines.append("")
    if "queued" in curves:
        for point in curves["queued"]["memory"]["eventbus"]:
            lines.append(
                f"An event waiting in the memory:// broker costs "
                f"{point['queued_event_bytes']:,.0f} bytes of Python heap (~100 B payload)."
            )
        lines.append("")
    if data["errors"]:
        lines += ["Failed points:", ""] + [f"- {k}: {v}" for k, v in data["errors"].items()]
    return "\n".join(lines) + "\n"


def charts(data: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = data["curves"]
    written = []
    for kind, metrics, xlabel, logx in (
        ("payload", ("throughput", "cpu_us_per_event"), "payload bytes", True),
        ("groups", ("throughput", "cpu_us_per_event"), "groups on one stream", False),
        ("rate", ("p50_ms", "p99_ms"), "offered events/s", True),
    ):
        if kind not in curves:
            continue
        brokers = list(curves[kind])
        fig, axes = plt.subplots(
            len(metrics), len(brokers), figsize=(4.5 * len(brokers), 3.6 * len(metrics)),
            squeeze=False,
        )  # fmt: skip
        for col, broker in enumerate(brokers):
            for row, metric in enumerate(metrics):
                ax = axes[row][col]
                for impl, points in curves[kind][broker].items():
                    xs = [p["x"] for p in points if metric in p]
                    ys = [p[metric] for p in points if metric in p]
                    style = "-o" if impl == "eventbus" else "--s"
                    ax.plot(xs, ys, style, label=impl)
                if logx:
                    ax.set_xscale("log")
                if metric.endswith("_ms"):
                    ax.set_yscale("log")
                ax.set_title(f"{broker}: {metric}", fontsize=9)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.legend(fontsize=7)
        written.append(save(plt, fig, directory / f"curve-{kind}.png", dpi=100))
    traces = data["rss_traces"]
    if traces:
        fig, axes = plt.subplots(1, len(traces), figsize=(4.5 * len(traces), 3.6), squeeze=False)
        for ax, (broker, samples) in zip(axes[0], traces.items(), strict=True):
            ax.plot([n for n, _ in samples], [rss / 2**20 for _, rss in samples])
            ax.set_title(f"{broker}: RSS during a sustained run", fontsize=9)
            ax.set_xlabel("events handled", fontsize=8)
            ax.set_ylabel("MB")
            ax.set_ylim(bottom=0)
        written.append(save(plt, fig, directory / "curve-rss.png", dpi=100))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curves", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of small counts")
    parser.add_argument("--brokers", default="memory,rabbitmq,kafka", help="comma-separated")
    parser.add_argument("--curves", default="payload,groups,rate,rss", help="comma-separated")
    parser.add_argument("--repetitions", type=int, default=None, help="default 1 quick, 3 full")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--progress", choices=("auto", "bar", "plain", "quiet"), default="auto")
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the curves not run now from DIR/curves.json (re-run one curve)",
    )
    args = parser.parse_args(argv)
    brokers = args.brokers.split(",")
    kinds = args.curves.split(",")
    for name in brokers:
        if name not in IMPLS:
            parser.error(f"unknown broker {name!r}; known: {', '.join(IMPLS)}")
    for kind in kinds:
        if kind not in {"payload", "groups", "rate", "rss"}:
            parser.error(f"unknown curve {kind!r}; known: payload, groups, rate, rss")
    configure_logging("console", "ERROR", force=True)
    traces: dict[str, list[tuple[int, int]]] = {}
    builders = {"payload": payload_scenarios, "groups": group_scenarios, "rate": rate_scenarios}
    scenarios = [
        s for k in kinds if k in builders for b in brokers for s in builders[k](b, args.quick)
    ]
    repetitions = args.repetitions or (1 if args.quick else 3)

    async def run() -> list[Outcome]:
        outcomes = await run_scenarios(scenarios, repetitions, args.progress)
        if "rss" in kinds:  # once: a sustained run is long, and its trace is one run's
            outcomes += await run_scenarios(rss_scenarios(brokers, args.quick, traces), 1)
        return outcomes

    outcomes = asyncio.run(run())
    data = to_json(outcomes, traces, machine())
    previous = args.out / "curves.json"
    if args.update and previous.exists():
        data = merged(json.loads(previous.read_text()), data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curves.json").write_text(json.dumps(data, indent=1))
    markdown = to_markdown(data)
    (args.out / "curves.md").write_text(markdown)
    paths = charts(data, args.out)
    print(markdown)
    print("written: " + ", ".join(str(p) for p in [args.out / "curves.json", *paths]))
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
