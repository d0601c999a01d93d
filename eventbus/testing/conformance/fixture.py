"""The `harness` fixture every suite class shares: one fresh harness per test."""

from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
import pytest_asyncio

from .harness import Harness


class UsesHarness:
    """Set `harness_class` (or override `make_harness`) in the subclass that runs a suite.

    Tests are marked for pytest-asyncio, so the suite runs in its strict mode too."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]
    harness_class: ClassVar[type[Harness]]

    def make_harness(self) -> Harness:
        return self.harness_class()

    @pytest_asyncio.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        harness = self.make_harness()
        await harness.setup()
        try:
            yield harness
        finally:
            await harness.teardown()
