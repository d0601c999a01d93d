"""The load harness of the fault scenarios, on memory:// (no fault): its figures count
what they claim to count."""

import json
from pathlib import Path

import pytest

from eventbus import EventBus
from eventbus.testing.conformance import unique

from .load import ROW_KEYS, Load, longest_gap


async def test_a_faultless_run_reports_nothing_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = tmp_path / "reliability.json"
    monkeypatch.setenv("EVENTBUS_RELIABILITY_REPORT", str(report))
    bus = EventBus("memory://")
    load = Load(unique("load"), scenario="no-fault", broker="memory", keys=8, rate=2000)
    load.attach(bus)
    async with bus:
        async with load.publishing(bus):
            await load.progress(300)
        await load.drain(timeout=30)
    figures = load.report()
    figures.check(max_recovery_s=5)
    assert figures.published == figures.confirmed == figures.handled >= 300
    assert figures.duplicates == figures.failed == 0
    [row] = [json.loads(line) for line in report.read_text().splitlines()]
    assert list(row)[: len(ROW_KEYS)] == list(ROW_KEYS)
    assert row["scenario"] == "no-fault" and row["handled"] == figures.handled


def test_figures_count_losses_duplicates_and_order_breaks() -> None:
    load = Load(unique("load"), scenario="synthetic", broker="none", keys=2)
    for n in range(4):
        load.outcomes[("a", n)] = "confirmed"
    load.outcomes[("b", 0)] = "failed"  # stored although unconfirmed
    load.outcomes[("b", 1)] = "failed"
    for key, n in [("a", 0), ("a", 2), ("a", 1), ("a", 2), ("b", 0)]:
        load.record(key, n)
    figures = load.figures()
    assert (figures.published, figures.confirmed, figures.failed) == (6, 4, 2)
    assert (figures.handled, figures.lost, figures.duplicates) == (4, 1, 1)
    assert figures.order_violations == 1  # a: 0, 2, 1 (the second 2 is a duplicate)
    assert figures.stored_unconfirmed == 1
    with pytest.raises(AssertionError, match="lost"):
        figures.check(max_recovery_s=60)


def test_longest_gap_runs_until_handling_caught_up_with_the_end_of_publishing() -> None:
    assert longest_gap([], 10.0) == 0.0
    assert longest_gap([1.0, 2.0, 6.0, 6.5], 3.0) == 4.0  # 6.0 is the first at/after 3.0
    assert longest_gap([1.0, 2.0, 6.0, 16.0], 3.0) == 4.0  # later gaps: after publishing
    assert longest_gap([1.0, 1.5], 30.0) == 0.5


def test_deliveries_reported_by_several_processes_count_in_the_order_they_were_handled() -> None:
    """Records may arrive out of time order (one pipe read after another): key order is
    judged on when each was handled."""
    load = Load(unique("load"), scenario="synthetic", broker="none", keys=1)
    load.record("a", 1, at=2.0)
    load.record("a", 0, at=1.0)  # handled first, reported second
    assert load.order_breaks() == []
    load.record("a", 3, at=3.0)
    load.record("a", 2, at=4.0)  # handled after 3
    assert load.order_breaks() == [("a", 3, 2)]


async def test_a_stall_says_where_the_load_stood() -> None:
    """A scenario that times out names the publishes' outcomes and what each bus's health
    says is missing: the message of a failed CI run is all there is to go on."""
    consumer, publisher = EventBus("memory://"), EventBus("memory://")
    load = Load(unique("load"), scenario="stall", broker="memory", keys=2, rate=500)
    load.attach(consumer)
    async with consumer, publisher:
        async with load.publishing(publisher):
            await load.progress(20)
            await consumer.stop()  # the group goes away; publishing goes on
            with pytest.raises(AssertionError) as stalled:
                await load.progress(10_000, timeout=0.5)
        with pytest.raises(AssertionError) as undrained:
            await load.drain(timeout=0.2)
    text = str(stalled.value)
    assert "timed out after 0.5s waiting for 10000 more handled events" in text
    assert "publishes confirmed=" in text and "last handled" in text
    assert "consumer bus: not running" in text and "publishing bus: ok" in text
    assert "not)" in str(undrained.value) and "consumer bus:" in str(undrained.value)
