"""The benchmark suite's progress display: a rich bar with an ETA on a terminal, one plain
line per run otherwise, nothing when quiet; a failing run is reported and the rest go on."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from benchmarks.core import Progress, Scenario, run_scenarios


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_auto_is_a_bar_on_a_terminal_and_plain_lines_otherwise() -> None:
    on_terminal, _ = console(True)
    assert Progress(3, console=on_terminal).mode == "bar"
    in_a_log, _ = console(False)
    assert Progress(3, console=in_a_log).mode == "plain"
    with pytest.raises(ValueError, match="progress mode"):
        Progress(3, "fancy")


def test_the_bar_shows_the_count_the_eta_and_failures() -> None:
    terminal, out = console(True)
    with Progress(2, "bar", terminal) as progress:
        progress.begin("memory/end-to-end/eventbus #1")
        progress.finish("memory/end-to-end/eventbus #1")
        progress.begin("memory/end-to-end/raw #1")
        progress.finish("memory/end-to-end/raw #1", "OSError: refused")
    text = out.getvalue()
    assert "2/2" in text and "eta" in text
    assert "memory/end-to-end/raw #1 FAILED: OSError: refused" in text


def test_plain_lines_carry_count_elapsed_and_eta_and_quiet_says_nothing() -> None:
    log, out = console(False)
    with Progress(2, "plain", log) as progress:
        progress.begin("a")
        progress.finish("a")
        progress.finish("b", "RuntimeError: no")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("1/2") and "eta" in lines[0] and lines[0].endswith("a")
    assert lines[1].startswith("2/2") and lines[1].endswith("b FAILED: RuntimeError: no")
    silent, out = console(False)
    with Progress(2, "quiet", silent) as progress:
        progress.finish("a")
    assert out.getvalue() == ""


async def test_run_scenarios_goes_on_after_a_failing_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def good() -> dict[str, float]:
        return {"throughput": 10.0, "events": 5.0}

    async def bad() -> dict[str, float]:
        raise RuntimeError("broker gone")

    scenario = Scenario("memory", "end-to-end", "", {"eventbus": good, "raw": bad})
    [outcome] = await run_scenarios([scenario], 2, "plain")
    assert outcome.samples["eventbus"]["throughput"] == [10.0, 10.0]
    assert outcome.errors == {"raw": "RuntimeError: broker gone"}
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[0] for line in err] == ["1/4", "2/4", "3/4", "4/4"]


def test_only_keeps_the_scenarios_it_names_by_broker_and_name() -> None:
    from benchmarks.__main__ import selected

    def scenario(broker: str, name: str) -> Scenario:
        return Scenario(broker, name, "", {})

    every = [
        scenario("memory", "end-to-end"),
        scenario("kafka", "end-to-end"),
        scenario("kafka", "batch handler"),
        scenario("sqlite", "replay"),
    ]
    assert selected(every, "") == every
    picked = selected(every, "memory end-to-end, kafka batch")
    assert [(s.broker, s.name) for s in picked] == [
        ("memory", "end-to-end"),
        ("kafka", "batch handler"),
    ]
    assert [s.broker for s in selected(every, "end-to-end")] == ["memory", "kafka"]
    assert selected(every, "rabbitmq") == []
