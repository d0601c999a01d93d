"""An adapter written before `SelectsDeadLetters` keeps working: the bus lists and replays
all its dead letters as before, and says clearly that it cannot replay or purge a
selection (`Unsupported`), as does `eventbus dlq` (exit 2, the reason on stderr)."""

import pytest

from eventbus import EventBus, Reject, RetryPolicy
from eventbus.errors import Unsupported
from eventbus.protocol import SelectsDeadLetters
from eventbus.testing.conformance import make_events, unique, wait_dead
from tests.unit.dlq_probe import run_in_process


async def test_an_adapter_without_selection_replays_all_and_refuses_a_selection() -> None:
    ev = make_events(unique())
    url = f"tinybus://{unique('dead')}"
    bus = EventBus(url)
    broken = True
    handled: list[str] = []

    @bus.subscribe(group="billing", retry=RetryPolicy(attempts=1))
    async def billing(event: ev.Created) -> None:  # type: ignore[name-defined]
        if broken:
            raise Reject("billing is broken")
        handled.append(event.order_id)

    assert not isinstance(bus.broker, SelectsDeadLetters)
    async with bus:
        await bus.publish(ev.Created(order_id="a"))
        await wait_dead(bus, ev.stream, "billing", 1)
        with pytest.raises(Unsupported, match="TinyBroker adapter cannot replay a selection"):
            await bus.replay_dead_letters(ev.stream, "billing", select=lambda d: True)
        with pytest.raises(Unsupported, match="cannot purge dead letters"):
            await bus.purge_dead_letters(ev.stream, "billing")
        assert len(await wait_dead(bus, ev.stream, "billing", 1)) == 1
        broken = False
        assert await bus.replay_dead_letters(ev.stream, "billing") == 1


def test_the_cli_refuses_a_selection_on_such_an_adapter() -> None:
    url = f"tinybus://{unique('dead')}"
    where = ["--url", url, "--stream", "s", "--group", "g"]
    code, _out, err, _probe = run_in_process(["dlq", "replay", *where, "--type", "order.*"])
    assert code == 2
    assert "cannot replay a selection of dead letters" in err
    code, _out, err, _probe = run_in_process(["dlq", "purge", *where, "--yes"])
    assert code == 2
    assert "TinyBroker adapter cannot purge dead letters" in err
    code, out, _err, _probe = run_in_process(["dlq", "replay", *where])  # all: as before
    assert code == 0
    assert "replayed 0 dead letter(s) to s.g" in out
