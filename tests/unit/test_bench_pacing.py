"""The benchmarks' pacing: every paced sender (asyncio or a raw client's thread) sleeps
by one rule, so all implementations send on one schedule."""

from __future__ import annotations

import pytest

from benchmarks.pacing import pause


@pytest.mark.parametrize(
    ("ahead", "sleep"),
    [
        (-0.5, 0.0),  # behind schedule: send now
        (0.0, 0.0),
        (0.000_001, 0.001),  # ahead at all: the next whole millisecond, as the loop waits
        (0.000_99, 0.001),  # 1k/s: one event a millisecond (before: no sleep, a pair)
        (0.001, 0.001),
        (0.001_2, 0.002),
        (0.050, 0.050),
    ],
)
def test_a_sender_ahead_of_its_schedule_sleeps_whole_milliseconds(
    ahead: float, sleep: float
) -> None:
    assert pause(ahead) == pytest.approx(sleep)
