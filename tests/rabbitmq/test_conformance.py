"""amqp:// runs the shipped conformance suite (guarantees and hostile input)."""

import pytest

from eventbus.testing.conformance import AdapterTests

from .harness import RabbitMQHarness

pytestmark = pytest.mark.rabbitmq


class TestRabbitMQ(AdapterTests):
    harness_class = RabbitMQHarness
