"""Results as JSON, a Markdown table and PNG charts."""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .calibration import describe
from .core import CPU, SERVER_CPU, Outcome, Scenario
from .targets import evaluate


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    brokers: dict[str, str] = {}
    try:
        out = subprocess.run(
            ["rabbitmqctl", "version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        brokers["rabbitmq"] = out or "-"
    except (OSError, subprocess.SubprocessError):
        brokers["rabbitmq"] = "-"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": _cores(),
        "versions": {
            p: _version(p)
            for p in ("eventbus", "pydantic", "aio-pika", "pika", "confluent-kafka", "faststream")
        },
        "brokers": brokers,
    }


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def to_json(
    outcomes: list[Outcome], mode: str, info: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "mode": mode,
        "machine": info or machine(),
        "scenarios": [
            {
                "broker": o.scenario.broker,
                "name": o.scenario.name,
                "description": o.scenario.description,
                "metric": o.scenario.metric,
                "higher_is_better": o.scenario.higher_is_better,
                "samples": o.samples,
                "medians": {
                    impl: {m: o.median(impl, m) for m in metrics}
                    for impl, metrics in o.samples.items()
                },
                "ratios": {
                    impl: o.ratio("eventbus", impl) for impl in o.samples if impl != "eventbus"
                },
                "errors": o.errors,
                "failed_repetitions": o.failures,
            }
            for o in outcomes
        ],
        "targets": evaluate(outcomes),
    }


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric == "throughput":
        return f"{value:,.0f}/s"
    return f"{value:.2f} ms"


def to_markdown(outcomes: list[Outcome], mode: str, info: dict[str, Any] | None = None) -> str:
    info = info or machine()
    lines = [
        f"Benchmark results ({mode} mode), {info['date']}: {info['cpu']}, {info['cores']} cores, "
        f"Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "",
        *([calibrated, ""] if (calibrated := describe(info.get("calibration"))) else []),
        "| broker | scenario | implementation | median | spread (min-max) | p50 / p99 "
        "| CPU µs/event | server CPU µs/event | eventbus vs this |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        metric = o.scenario.metric
        for impl in [*o.samples, *o.errors]:
            if impl in o.errors:
                lines.append(
                    f"| {o.scenario.broker} | {o.scenario.name} | {impl} | failed: "
                    f"{o.errors[impl][:60]} | | | | | |"
                )
                continue
            failed = len(o.failures.get(impl, []))
            shown_impl = f"{impl} ({failed} run(s) failed)" if failed else impl
            spread = o.spread(impl)
            p50, p99 = o.median(impl, "p50_ms"), o.median(impl, "p99_ms")
            ratio = o.ratio("eventbus", impl) if impl != "eventbus" else None
            lines.append(
                f"| {o.scenario.broker} | {o.scenario.name} | {shown_impl} | "
                f"{_fmt(o.median(impl), metric)} | "
                + (f"{_fmt(spread[0], metric)} - {_fmt(spread[1], metric)}" if spread else "-")
                + f" | {_fmt(p50, 'ms')} / {_fmt(p99, 'ms')} | "
                + (f"{cpu:.1f}" if (cpu := o.median(impl, CPU)) is not None else "-")
                + " | "
                + (f"{server:.1f}" if (server := o.median(impl, SERVER_CPU)) is not None else "-")
                + " | "
                + (f"{ratio:.2f}x" if ratio is not None else "")
                + " |"
            )
    lines += ["", "| target (DESIGN §7, issue #13) | measured | met |", "|---|---|---|"]
    for row in evaluate(outcomes):
        value = row["value"]
        shown = "-" if value is None else f"{value:,.2f}"
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]  # type: ignore[index]
        lines.append(f"| {row['target']} | {shown} | {met} |")
    return "\n".join(lines) + "\n"


def charts(outcomes: list[Outcome], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    throughput = [o for o in outcomes if o.scenario.metric == "throughput" and o.samples]
    # what a busy machine barely moves: the client's CPU time per event, beside throughput
    cpu = [o for o in throughput if any(CPU in m for m in o.samples.values())]
    # and the local broker's or database server's: which side sets the pace
    server = [o for o in throughput if any(SERVER_CPU in m for m in o.samples.values())]
    for chosen, metric, unit, name in (
        (throughput, "throughput", "events/s", "throughput.png"),
        (cpu, CPU, "client CPU, µs/event (lower is better)", "cpu.png"),
        (server, SERVER_CPU, "server CPU, µs/event (lower is better)", "server_cpu.png"),
    ):
        if chosen:
            written.append(_bars(plt, chosen, metric, unit, directory / name))
    latency = [o for o in outcomes if o.scenario.metric == "p99_ms" and o.samples]
    if latency:
        fig, axes = _grid(plt, len(latency))
        for ax, o in zip(axes, latency, strict=False):
            impls = list(o.samples)
            width = 0.25
            for k, pct in enumerate(("p50_ms", "p95_ms", "p99_ms")):
                ax.bar(
                    [x + (k - 1) * width for x in range(len(impls))],
                    [o.median(i, pct) or 0 for i in impls],
                    width,
                    label=pct.replace("_ms", ""),
                )
            ax.set_xticks(range(len(impls)), impls, rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{o.scenario.broker}: {o.scenario.name}", fontsize=9)
            ax.set_yscale("log")  # one slow outlier must not flatten the others
            ax.set_ylabel("ms (log)")
            ax.legend(fontsize=7)
        written.append(save(plt, fig, directory / "latency.png"))
    return written


def save(plt: Any, fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a chart."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _bars(plt: Any, outcomes: list[Outcome], metric: str, unit: str, path: Path) -> Path:
    """One bar chart per scenario: the median of `metric` per implementation, with its
    spread over the repetitions."""
    fig, axes = _grid(plt, len(outcomes))
    for ax, o in zip(axes, outcomes, strict=False):
        impls = [i for i in o.samples if o.median(i, metric) is not None]
        values = [o.median(i, metric) or 0 for i in impls]
        spreads = [o.spread(i, metric) or (v, v) for v, i in zip(values, impls, strict=True)]
        lows = [v - low for v, (low, _) in zip(values, spreads, strict=True)]
        highs = [high - v for v, (_, high) in zip(values, spreads, strict=True)]
        colors = ["#2a6fdb" if i == "eventbus" else "#9aa5b1" for i in impls]
        ax.bar(range(len(impls)), values, yerr=[lows, highs], color=colors, capsize=4)
        ax.set_xticks(range(len(impls)), impls, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{o.scenario.broker}: {o.scenario.name}", fontsize=9)
        ax.set_ylabel(unit)
    return save(plt, fig, path)


def _grid(plt: Any, count: int) -> tuple[Any, list[Any]]:
    """Charts in rows of at most four; unused cells hidden."""
    cols = min(4, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def load(path: Path) -> list[Outcome]:
    """Outcomes back from a results.json (to re-render the report without re-running)."""
    data = json.loads(path.read_text())
    outcomes = []
    for item in data["scenarios"]:
        scenario = Scenario(
            item["broker"],
            item["name"],
            item["description"],
            {},
            metric=item["metric"],
            higher_is_better=item["higher_is_better"],
        )
        outcomes.append(Outcome(scenario, item["samples"], item.get("failed_repetitions", {})))
    return outcomes


def write(
    outcomes: list[Outcome], directory: Path, mode: str, info: dict[str, Any] | None = None
) -> dict[str, Path]:
    """`info`: the machine the results were measured on (default: this one, now)."""
    info = info or machine()
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "results.json"
    json_path.write_text(json.dumps(to_json(outcomes, mode, info), indent=2))
    md_path = directory / "results.md"
    md_path.write_text(to_markdown(outcomes, mode, info))
    paths = {"json": json_path, "markdown": md_path}
    for chart in charts(outcomes, directory):
        paths[chart.stem] = chart
    return paths
