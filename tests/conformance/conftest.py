from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from .harness import HARNESSES, Harness, load_harness

_MARKS = {"rabbitmq": pytest.mark.rabbitmq, "kafka": pytest.mark.kafka}


def _params() -> list[object]:
    wanted = os.environ.get("EVENTBUS_CONFORMANCE")  # e.g. "memory,kafka"
    names = [n for n in HARNESSES if not wanted or n in wanted.split(",")]
    return [pytest.param(n, marks=_MARKS[n]) if n in _MARKS else n for n in names]


@pytest.fixture(params=_params())
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = load_harness(request.param)
    await h.setup()
    try:
        yield h
    finally:
        await h.teardown()
