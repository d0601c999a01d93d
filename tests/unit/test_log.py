"""Failure lines carry the event id, stream, type, group and attempt; secrets never appear."""

import asyncio
import json

import pytest
import structlog

from eventbus import Context, Event, EventBus, RetryPolicy
from eventbus.log import configure


class Boom(Event, stream="logs", type="boom.happened"):
    n: int


def test_failure_retry_and_dead_letter_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "INFO", force=True)
    bus = EventBus("memory://user:hunter2@logtest")
    done = asyncio.Event()

    @bus.subscribe(group="g", retry=RetryPolicy(attempts=2, backoff=0.0))
    async def fail(event: Boom, ctx: Context) -> None:
        if ctx.attempt == 2:
            done.set()
        raise RuntimeError("boom")

    async def main() -> str:
        async with bus:
            sent = await bus.publish(Boom(n=1), key="k")
            await asyncio.wait_for(done.wait(), 10)
            for _ in range(100):
                if [d async for d in bus.dead_letters("logs", "g")]:
                    break
                await asyncio.sleep(0.01)
        return sent.id

    try:
        event_id = asyncio.run(main())
    finally:
        structlog.reset_defaults()
    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    failures = [line for line in lines if line["event"] == "handler.failed"]
    assert [f["outcome"] for f in failures] == ["retry", "dead_letter"]
    for f in failures:
        assert f["event_id"] == event_id
        assert f["stream"] == "logs" and f["group"] == "g" and f["type"] == "boom.happened"
    assert [f["attempt"] for f in failures] == [1, 2]
    started = next(line for line in lines if line["event"] == "bus.started")
    assert "hunter2" not in started["url"]


def test_each_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes share a stderr (`eventbus run --workers N`): a line written in two
    parts (the text, then its newline) can be spliced with another process's line."""
    import io
    import sys

    writes: list[str] = []

    class Recording(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    saved = structlog.get_config()
    monkeypatch.setattr(sys, "stderr", Recording())
    configure("json", "INFO", force=True)
    try:
        structlog.get_logger().info("one.line", n=1)
        structlog.get_logger().info("two.lines", n=2)
    finally:
        monkeypatch.undo()
        structlog.configure(**saved)  # as the session had it
    assert len(writes) == 2 and all(w.endswith("}\n") and w.count("\n") == 1 for w in writes)
    assert [json.loads(w)["event"] for w in writes] == ["one.line", "two.lines"]
