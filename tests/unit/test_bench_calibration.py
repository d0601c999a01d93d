"""The machine figures a benchmark run records: measured, kept in results.json, said in
the report's header, and a busy machine named as such."""

from __future__ import annotations

import os
import threading

import pytest

from benchmarks.calibration import Calibration, busy_pct, busy_warning, describe, reference_unit
from benchmarks.report import to_markdown

QUIET = {
    "reference_us_start": 10.0,
    "reference_us_end": 10.5,
    "steal_pct": 0.4,
    "busy_before_pct": 3.0,
}


def test_a_run_records_the_reference_cost_steal_and_load() -> None:
    figures = Calibration().start().finish().to_json()
    assert set(figures) == {
        "reference_us_start",
        "reference_us_end",
        "steal_pct",
        "busy_before_pct",
    }
    assert figures["reference_us_start"] is not None and figures["reference_us_start"] > 0
    assert figures["reference_us_end"] is not None and figures["reference_us_end"] > 0
    assert figures["steal_pct"] is not None and 0 <= figures["steal_pct"] <= 100
    busy = figures["busy_before_pct"]
    assert busy is not None and 0 <= busy <= 100


def test_the_reference_unit_checks_its_own_result() -> None:
    reference_unit(3)  # computes and verifies: a broken json or uuid would raise


def test_a_quiet_run_is_described_without_a_warning() -> None:
    text = describe(QUIET)
    assert "reference unit 10.00 µs of CPU at the start, 10.50 at the end" in text
    assert "CPU steal 0.4%" in text and "CPUs 3% busy the second before it" in text
    assert busy_warning(QUIET) == "" and "Busy" not in text
    assert describe(None) == "" and describe({}) == ""


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"steal_pct": 12.0}, "the hypervisor took 12.0% of the CPU"),
        ({"busy_before_pct": 60.0}, "the CPUs were 60% busy before the run"),
        ({"reference_us_end": 13.0}, "the machine's speed drifted by +30%"),
    ],
)
def test_a_busy_run_is_named_busy(change: dict[str, float], said: str) -> None:
    warning = busy_warning({**QUIET, **change})
    assert said in warning and "compare ratios" in warning
    assert said in describe({**QUIET, **change})


def test_the_report_header_carries_the_figures() -> None:
    info = {
        "date": "2026-12-02T00:00:00+00:00",
        "cpu": "test cpu",
        "cores": 2,
        "python": "3.x",
        "versions": {},
        "calibration": QUIET,
    }
    assert "Machine: reference unit 10.00 µs of CPU" in to_markdown([], "full", info)
    del info["calibration"]  # a results.json recorded before the figures existed
    assert "Machine:" not in to_markdown([], "full", info)


def test_busy_pct_sees_a_core_kept_busy() -> None:
    """A thread spinning on one core while `busy_pct` sleeps: at least most of that
    core's share shows."""
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy = busy_pct(0.5)
    finally:
        stop.set()
        spinner.join()
    assert busy is not None and busy > 0.6 * 100 / (os.cpu_count() or 1), busy
