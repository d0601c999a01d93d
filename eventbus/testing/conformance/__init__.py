"""The conformance suite, shipped for every adapter (ours and third parties').

An adapter's test module runs it in a few lines::

    from eventbus.testing.conformance import Harness

    class AcmeHarness(Harness):
        def url(self) -> str: ...
        async def inject_raw(self, stream, event_type, body, key=None, *, headers=None): ...

Needs pytest and pytest-asyncio (`pip install 'eventbus[testing]'`).
"""

from .harness import Harness, unique
from .support import Events, dead_letters, make_events, settle, until, wait_dead

__all__ = [
    "Events",
    "Harness",
    "dead_letters",
    "make_events",
    "settle",
    "unique",
    "until",
    "wait_dead",
]
