"""Our adapters' harnesses for the shipped conformance suite (`eventbus.testing.conformance`)."""

from __future__ import annotations

import importlib

from eventbus.testing.conformance.harness import Harness, unique

__all__ = ["HARNESSES", "Harness", "load_harness", "unique"]

#: harness name -> "module:Class"; the adapter issues add theirs here
HARNESSES: dict[str, str] = {
    "memory": "tests.memory.harness:MemoryHarness",
    "rabbitmq": "tests.rabbitmq.harness:RabbitMQHarness",
    "kafka": "tests.kafka.harness:KafkaHarness",
}


def load_harness(name: str) -> Harness:
    module_name, _, cls_name = HARNESSES[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    harness: Harness = cls()
    return harness
