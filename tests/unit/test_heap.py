"""`freeze_heap` and `bus.run()` freezing the heap once started (`eventbus.heap`)."""

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from eventbus import Envelope, EventBus, freeze_heap
from eventbus.testing.conformance import until


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen: the test runner's heap stays as it was."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_garbage_is_collected_first_and_what_is_alive_is_frozen() -> None:
    garbage = _Node()
    garbage.other = _Node()
    garbage.other.other = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    kept = _Node()
    kept.other = kept
    del garbage

    frozen = freeze_heap()

    assert gone() is None  # collected, not frozen for ever
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # the passes no longer visit it
    assert kept.other is kept
    again = _Node()
    assert freeze_heap() > frozen  # a second call freezes what was created since
    assert again.other is None


@pytest.mark.parametrize("setting", [True, False])
async def test_run_freezes_the_heap_once_started_unless_told_not_to(setting: bool) -> None:
    bus = EventBus("memory://unit-heap", freeze_heap=setting)

    @bus.subscribe("orders", group="g")
    async def handle(envelope: Envelope) -> None:
        pass

    runner = asyncio.create_task(bus.run(stop_signals=()))
    try:
        await until(lambda: bus.running, what="the bus to start")
    finally:
        await bus.stop()
        await asyncio.wait_for(runner, 10)
    assert (gc.get_freeze_count() > 0) is setting  # nothing else freezes in this process
