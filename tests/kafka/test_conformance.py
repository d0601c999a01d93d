"""kafka:// runs the shipped conformance suite (guarantees and hostile input)."""

import pytest

from eventbus.testing.conformance import AdapterTests

from .harness import KafkaHarness

pytestmark = pytest.mark.kafka


class TestKafka(AdapterTests):
    harness_class = KafkaHarness
