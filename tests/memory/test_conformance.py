"""memory:// runs the shipped conformance suite, as every adapter does."""

from eventbus.testing.conformance import AdapterTests

from .harness import MemoryHarness


class TestMemory(AdapterTests):
    harness_class = MemoryHarness
