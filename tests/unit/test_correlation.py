"""`correlation_scope`: the correlation id of work outside handlers (an HTTP request) goes
onto what is published or saved in it; explicit ids and a handler's own chain win."""

# no `from __future__ import annotations`: handlers are annotated with per-test classes

import asyncio

from eventbus import Aggregate, Context, Event, EventBus, applies, correlation_scope, open_store
from eventbus.context import ambient_ids, correlate_attributes
from eventbus.sourcing import Repository
from eventbus.testing.conformance import unique, until


class Noted(Event, stream="notes", type="note.noted"):
    text: str


class Note(Aggregate, category="note"):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.texts: list[str] = []

    def write(self, text: str) -> None:
        self.record(Noted(text=text))

    @applies
    def _noted(self, event: Noted) -> None:
        self.texts.append(event.text)


def test_the_scope_fills_in_a_missing_correlation_id() -> None:
    attributes: dict[str, str] = {}
    correlate_attributes(attributes)
    assert attributes == {}
    with correlation_scope("req-1"):
        correlate_attributes(attributes)
        assert attributes == {"correlationid": "req-1"}  # no causation: no event caused it
        explicit = {"correlationid": "mine"}
        correlate_attributes(explicit)
        assert explicit == {"correlationid": "mine"}
        with correlation_scope(None):
            assert ambient_ids() == (None, None)
        assert ambient_ids() == ("req-1", None)
    assert ambient_ids() == (None, None)


async def test_tasks_and_threads_started_in_the_scope_keep_it() -> None:
    with correlation_scope("req-2"):
        in_task = asyncio.create_task(asyncio.sleep(0, ambient_ids()))
        in_thread = await asyncio.to_thread(ambient_ids)
    assert await in_task == ("req-2", None) and in_thread == ("req-2", None)


async def test_the_repository_saves_the_ambient_ids() -> None:
    store = open_store("memory://")
    await store.open()
    try:
        repo = Repository(store, Note, publish=False)
        note = await repo.load("n-1")
        note.write("first")
        with correlation_scope("req-3"):
            await repo.save(note)
            note.write("explicit")
            await repo.save(note, correlation_id="mine", causation_id="cause")
        note.write("outside")
        await repo.save(note)
        stored = await store.read("note-n-1")
        assert [(e.correlation_id, e.causation_id) for e in stored] == [
            ("req-3", None),
            ("mine", "cause"),
            (None, None),
        ]
    finally:
        await store.close()


async def test_inside_a_handler_its_chain_wins_over_a_scope() -> None:
    """A bus started inside a scope hands it to its consumer tasks; the handlers' events
    still carry the handled event's correlation and causation ids."""
    stream = unique("corr")

    class First(Event, stream=stream, type="first"):
        pass

    class Second(Event, stream=stream, type="second"):
        pass

    bus = EventBus(f"memory://{stream}")
    seconds: list[tuple[str | None, str | None]] = []
    firsts: list[str] = []

    @bus.subscribe(group="relay")
    async def relay(event: First, ctx: Context) -> None:
        firsts.append(ctx.envelope.id)
        await bus.publish(Second())

    @bus.subscribe(group="sink")
    def sink(event: Second, ctx: Context) -> None:  # a worker thread
        seconds.append((ctx.envelope.correlation_id, ctx.envelope.causation_id))

    with correlation_scope("outer"):
        async with bus:
            first = await bus.publish(First(), correlation_id="chain-1")
            await until(lambda: len(seconds) == 1, what="the second event")
    assert firsts == [first.id]
    assert seconds == [("chain-1", first.id)]
