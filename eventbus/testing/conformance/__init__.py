"""The conformance suite, shipped for every adapter (ours and third parties').

An adapter's test module runs it in a few lines::

    from eventbus.testing.conformance import AdapterTests, Harness

    class AcmeHarness(Harness):
        def url(self) -> str: ...
        async def inject_raw(self, stream, event_type, body, key=None, *, headers=None): ...

    class TestAcme(AdapterTests):
        harness_class = AcmeHarness

Needs pytest and pytest-asyncio (`pip install 'eventbus[testing]'`).
"""

from .batches import BatchTests
from .harness import Harness, made_names, unique
from .hostile import HostileInputTests
from .requests import RequestReplyTests
from .suite import ConformanceTests
from .support import Events, dead_letters, make_events, settle, until, wait_dead
from .telemetry import TelemetryTests
from .transactions import ExactlyOnceTests


class AdapterTests(
    ConformanceTests,
    HostileInputTests,
    TelemetryTests,
    RequestReplyTests,
    ExactlyOnceTests,
    BatchTests,
):
    """Every test of the suite: the guarantees, the hostile-input section, telemetry
    (traces, metrics, health), request/reply (skipped by `Capabilities.request_reply`),
    exactly-once subscriptions (by `Capabilities.transactions`: committed with the
    settlement, or refused at start) and batch handlers. Subclass it as
    `Test<YourAdapter>` with `harness_class = YourHarness`."""


__all__ = [
    "AdapterTests",
    "BatchTests",
    "ConformanceTests",
    "Events",
    "ExactlyOnceTests",
    "Harness",
    "HostileInputTests",
    "RequestReplyTests",
    "TelemetryTests",
    "dead_letters",
    "made_names",
    "make_events",
    "settle",
    "unique",
    "until",
    "wait_dead",
]
