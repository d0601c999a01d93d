"""The cost curves (`python -m benchmarks.curves`): payloads of the sizes they claim,
every group receiving every event, a tally that counts without growing, a growth slope
that tells flat from leaking, and a report written from a real (memory://) run."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import curves, memory
from benchmarks.curves import RssTrace, pad_for
from benchmarks.workload import Load, PaddedOrderPayload, Tally, payload_fields, sample_body


@pytest.mark.parametrize("size", [1_000, 10_000, 100_000])
def test_a_padded_payload_is_the_size_its_curve_point_says(size: int) -> None:
    body = PaddedOrderPayload(**payload_fields(7, pad_for(size))).model_dump_json().encode()
    assert abs(len(body) - size) <= 0.02 * size
    assert pad_for(100) == 0 and 90 <= len(sample_body()) <= 120  # the standard payload


def test_a_tally_counts_every_event_and_keeps_one_latency_in_every() -> None:
    tally = Tally(every=10)
    for latency in range(95):
        tally.append(latency)
    assert len(tally) == 95
    assert list(tally) == [9, 19, 29, 39, 49, 59, 69, 79, 89]
    tally.clear()
    assert len(tally) == 0 and list(tally) == []


def test_the_growth_slope_tells_flat_from_leaking() -> None:
    flat = RssTrace(Tally())
    flat.samples = [(n, 50_000_000 + (n % 3) * 4096) for n in range(0, 1_000_001, 10_000)]
    assert abs(flat.summary(1_000_000)["growth_bytes_per_event"]) < 0.1
    leaking = RssTrace(Tally())
    leaking.samples = [(n, 50_000_000 + 200 * n) for n in range(0, 1_000_001, 10_000)]
    summary = leaking.summary(1_000_000)
    assert summary["growth_bytes_per_event"] == pytest.approx(200)
    assert summary["rss_end_mb"] > summary["rss_start_mb"]


@pytest.mark.parametrize("run", [memory.eventbus_e2e, memory.raw_e2e])
async def test_every_group_handles_every_event(
    run: Callable[..., Awaitable[dict[str, Any]]],
) -> None:
    tally = Tally(every=1)
    metrics = await run(200, Load(groups=3, tally=tally))
    assert len(tally) == 600
    assert metrics["events"] == 600


async def test_a_padded_run_delivers_padded_events() -> None:
    tally = Tally(every=1)
    await memory.eventbus_e2e(100, Load(pad=pad_for(10_000), tally=tally))
    assert len(tally) == 100


def test_a_memory_run_writes_the_tables_and_charts(tmp_path: Path) -> None:
    code = curves.main(
        ["--quick", "--brokers", "memory", "--curves", "groups,rss", "--out", str(tmp_path),
         "--progress", "quiet"]
    )  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "curves.json").read_text())
    groups = data["curves"]["groups"]["memory"]
    assert [p["x"] for p in groups["eventbus"]] == [1, 4, 16]
    assert all(p["throughput"] > 0 and p["cpu_us_per_event"] > 0 for p in groups["eventbus"])
    [rss] = data["curves"]["rss"]["memory"]["eventbus"]
    assert rss["rss_peak_mb"] >= rss["rss_start_mb"] > 0
    [queued] = data["curves"]["queued"]["memory"]["eventbus"]
    assert 100 < queued["queued_event_bytes"] < 20_000
    assert len(data["rss_traces"]["memory"]) > 1
    markdown = (tmp_path / "curves.md").read_text()
    assert "### groups" in markdown and "bytes of Python heap" in markdown
    assert {p.name for p in tmp_path.glob("*.png")} == {"curve-groups.png", "curve-rss.png"}
