"""The shipped suite's helpers (re-exported while the tests move into the package)."""

from eventbus.testing.conformance.support import (
    Events,
    dead_letters,
    make_events,
    settle,
    until,
    wait_dead,
)

__all__ = ["Events", "dead_letters", "make_events", "settle", "until", "wait_dead"]
