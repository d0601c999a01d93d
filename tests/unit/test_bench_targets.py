"""The targets the benchmark report checks (`benchmarks.targets`): each names a scenario
and implementations that the suites run, so none reads "not measured" by a typo."""

from __future__ import annotations

import importlib

from benchmarks.__main__ import SUITES
from benchmarks.targets import TARGETS


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
