"""The targets the benchmark report checks (`benchmarks.targets`): each names a scenario
and implementations that the suites run, so none reads "not measured" by a typo."""

from __future__ import annotations

import importlib

from benchmarks.__main__ import SUITES
from benchmarks.core import CPU, Outcome, Scenario
from benchmarks.targets import TARGETS, evaluate


def test_every_target_names_a_scenario_and_implementations_the_suite_runs() -> None:
    """A target whose scenario or baseline was renamed would read "not measured" forever."""
    runners = {
        (s.broker, s.name): list(s.runners)
        for module in SUITES.values()
        for s in importlib.import_module(module).scenarios(True)
    }
    for target in TARGETS:
        impls = runners.get((target.broker, target.scenario))
        assert impls is not None, target.describe()
        assert target.impl in impls, target.describe()
        if target.baseline:
            assert any(i.startswith(target.baseline) for i in impls), target.describe()


def test_a_versioned_baseline_is_the_peer_itself_not_a_variant_of_it() -> None:
    """`eventsourcing` names `eventsourcing 9.4.6`, never `eventsourcing 9.4.6 (a thread
    trip per append)` beside it, whichever of the two the run measured first."""
    scenario = Scenario("sqlite", "append (batched)", "", {})
    outcome = Outcome(scenario)
    outcome.samples = {
        "eventbus": {"throughput": [100.0], CPU: [4.0]},
        "eventsourcing 9.9 (a thread trip per append)": {"throughput": [50.0], CPU: [8.0]},
        "eventsourcing 9.9": {"throughput": [200.0], CPU: [2.0]},
    }
    rows = {r["target"]: r["value"] for r in evaluate([outcome])}
    assert rows["sqlite append (batched): >= 1x eventsourcing"] == 0.5
    assert rows["sqlite append (batched): CPU per event, eventsourcing's / eventbus's >= 1"] == 0.5
