"""The order system end to end, every service in this process, on each (bus, store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.bus import EventBus
from eventbus.sourcing import OutboxRelay, StoredEvent, open_store
from examples.orders.commands import order_codec
from examples.orders.demo import drive, settled
from examples.orders.services import RelayService, System, load_orders_settings
from examples.orders.web import JsonClient

from .support import assert_read_model_is_exact


async def test_order_lifecycle(bus_url: str, store_url: str, stream: str, tmp_path: Path) -> None:
    settings = load_orders_settings(store_url=store_url, stream=stream, snapshot_every=2)
    async with System(settings, bus_url=bus_url, ephemeral_ports=True) as system:
        assert system.command is not None and system.query is not None
        command = JsonClient("127.0.0.1", system.command.server.port)
        query = JsonClient("127.0.0.1", system.query.server.port)
        store = open_store(store_url)
        await store.open()
        try:
            tally = await drive(command, 48)
            assert tally["rejected: concurrent update"] == 1
            assert tally["created"] == 49 and tally["delivered"] == 12
            # clear errors for what is not allowed
            status, body = await command.request("POST", "/orders/nope/pay", {"amount_cents": 1})
            assert (status, body["error"]) == (404, "not_found")
            status, body = await command.request("POST", "/orders", {"customer_id": "x"})
            assert (status, body["error"]) == (422, "invalid_command")
            status, body = await command.request("DELETE", "/orders", None)
            assert status == 405
            assert store.database is not None
            await settled(store, store.database)

            status, summary = await query.request("GET", "/customers/c001")
            assert status == 200 and summary["total_orders"] >= 1
            recent = summary["recent_orders"]
            assert recent and all(o["customer_id"] == "c001" for o in recent)
            order_id = recent[0]["order_id"]
            status, order = await query.request("GET", f"/orders/{order_id}")
            assert status == 200 and order["order_id"] == order_id
            status, mails = await query.request("GET", f"/notifications/{order_id}")
            stored = await store.read(f"order-{order_id}")
            assert len(mails) == len(stored)
            assert {m["event_id"] for m in mails} == {e.id for e in stored}
            assert all(e.stream == stream and e.key == order_id for e in stored)
            status, _ = await query.request("GET", "/customers/nobody")
            assert status == 404

            await assert_read_model_is_exact(store, store.database, str(tmp_path))
        finally:
            await command.close()
            await query.close()
            await store.close()


class RelayCrash(BaseException):
    """Ends the relay task like a kill: after publishing, before marking sent."""


async def test_relay_dies_between_publish_and_mark(
    bus_url: str, store_url: str, stream: str, tmp_path: Path
) -> None:
    """The relay dies (twice) after the broker confirmed a batch but before it marked the
    batch sent; each restart re-publishes those events with the same ids, the inboxes
    drop the duplicates, and the read model equals the replayed one."""
    settings = load_orders_settings(store_url=store_url, stream=stream)
    async with System(settings, bus_url=bus_url, ephemeral_ports=True) as system:
        assert system.command is not None and system.relay is not None
        command = JsonClient("127.0.0.1", system.command.server.port)
        store = open_store(store_url)
        await store.open()
        try:
            await system.relay.stop()
            for seed in range(2):
                await drive(command, 12, seed=seed)
                relay_bus = EventBus(bus_url)
                relay = OutboxRelay(store, relay_bus, order_codec(), batch_size=7)

                def die(batch: list[StoredEvent]) -> None:
                    raise RelayCrash

                relay.before_mark = die
                async with relay_bus:
                    with pytest.raises(RelayCrash):
                        await relay.run()
                assert relay.published == 0 and await store.outbox_pending() != []
            restarted = RelayService(store, EventBus(bus_url))
            await restarted.start()
            system.running.append(restarted)
            assert store.database is not None
            await settled(store, store.database)
            await assert_read_model_is_exact(store, store.database, str(tmp_path))
        finally:
            await command.close()
            await store.close()
