from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .harness import KafkaHarness


@pytest.fixture
async def kafka() -> AsyncIterator[KafkaHarness]:
    """Buses on the test broker; the topics they created are deleted afterwards."""
    harness = KafkaHarness()
    try:
        yield harness
    finally:
        await harness.teardown()
