"""The order system end to end, every service in this process, on each (bus, store)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from eventbus import Context, Envelope
from eventbus.bus import EventBus
from eventbus.sourcing import OutboxRelay, StoredEvent, open_store
from eventbus.testing.conformance import until
from examples.orders.commands import order_codec
from examples.orders.demo import client, drive, settled
from examples.orders.events import NotificationQueued, use_stream
from examples.orders.services import RelayService, System, load_orders_settings

from .support import assert_read_model_is_exact


async def test_order_lifecycle(bus_url: str, store_url: str, stream: str, tmp_path: Path) -> None:
    settings = load_orders_settings(store_url=store_url, stream=stream, snapshot_every=2)
    use_stream(stream)  # the probe reads this system's notification stream
    probe = EventBus(bus_url)
    notes: Counter[str] = Counter()
    causes: dict[str, str | None] = {}

    @probe.subscribe(group="probe")
    async def watch(event: NotificationQueued, ctx: Context) -> None:
        notes[ctx.envelope.id] += 1
        causes[ctx.envelope.id] = ctx.envelope.causation_id

    async with probe, System(settings, bus_url=bus_url, ephemeral_ports=True) as system:
        assert system.command is not None and system.query is not None
        assert system.relay is not None
        command = client(system.command.port)
        query = client(system.query.port)
        store = open_store(store_url)
        await store.open()
        try:
            tally = await drive(command, 48)
            assert tally["rejected: concurrent update"] == 1
            assert tally["created"] == 49 and tally["delivered"] == 12
            # clear errors for what is not allowed
            answer = await command.post("/orders/nope/pay", json={"amount_cents": 1})
            assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
            answer = await command.post("/orders", json={"customer_id": "x"})
            assert (answer.status_code, answer.json()["error"]) == (422, "invalid_command")
            answer = await command.post("/orders/x/pay", json={"amount_cents": "lots"})
            assert (answer.status_code, answer.json()["error"]) == (422, "invalid_command")
            answer = await command.post(
                "/orders", content=b"{oops", headers={"Content-Type": "application/json"}
            )
            assert (answer.status_code, answer.json()["error"]) == (400, "bad_json")
            answer = await command.delete("/orders")
            assert (answer.status_code, answer.json()["error"]) == (405, "method_not_allowed")
            answer = await command.post("/orders/bad%20id/pay", json={"amount_cents": 1})
            assert answer.status_code == 422
            assert store.database is not None
            await settled(store, store.database)

            answer = await query.get("/customers/c001")
            summary = answer.json()
            assert answer.status_code == 200 and summary["total_orders"] >= 1
            recent = summary["recent_orders"]
            assert recent and all(o["customer_id"] == "c001" for o in recent)
            order_id = recent[0]["order_id"]
            answer = await query.get(f"/orders/{order_id}")
            assert answer.status_code == 200 and answer.json()["order_id"] == order_id
            mails = (await query.get(f"/notifications/{order_id}")).json()
            stored = await store.read(f"order-{order_id}")
            assert len(mails) == len(stored)
            assert {m["event_id"] for m in mails} == {e.id for e in stored}
            assert all(e.stream == stream and e.key == order_id for e in stored)
            answer = await query.get("/customers/nobody")
            assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
            for service in (command, query):
                assert (await service.get("/readyz")).status_code == 200
                assert (await service.get("/openapi.json")).json()["info"]["title"] in {
                    "Orders: commands",
                    "Orders: queries",
                }
                assert (await service.get("/docs")).status_code == 200

            await assert_read_model_is_exact(store, store.database, str(tmp_path))
            # the notification service queued one NotificationQueued per order event, in
            # the transaction of its e-mail; the relay published each stored event once,
            # and a group of its own received each notification once
            async with store.database.transaction() as tx:
                queued: dict[str, str | None] = dict(
                    await tx.fetchall(
                        "SELECT event_id, causation_id FROM events WHERE type = ?",
                        (NotificationQueued.__event_type__,),
                    )
                )
            assert len(queued) == len((await query.get("/notifications")).json())
            await until(lambda: len(notes) >= len(queued), 60, "every notification at the probe")
            assert causes == queued and set(notes.values()) == {1}
            assert system.relay.relay.published == await store.last_position()
        finally:
            await command.aclose()
            await query.aclose()
            await store.close()


async def test_a_requests_correlation_id_travels_through_the_outbox_to_the_handlers(
    bus_url: str, store_url: str, stream: str
) -> None:
    """The command API stores its events with the request's correlation id (its
    X-Correlation-ID, or a new one it answers with); the relay publishes them with it, so a
    handler of the order events sees it in `ctx.envelope.correlation_id`."""
    settings = load_orders_settings(store_url=store_url, stream=stream)
    probe = EventBus(bus_url)
    seen: dict[str, str | None] = {}

    @probe.subscribe(stream, "order.#", group="probe")
    async def watch(envelope: Envelope, ctx: Context) -> None:
        seen[envelope.type] = ctx.envelope.correlation_id

    async with probe, System(settings, bus_url=bus_url, ephemeral_ports=True) as system:
        assert system.command is not None
        async with client(system.command.port) as command:
            created = await command.post(
                "/orders",
                json={"customer_id": "c1", "email": "c1@example.com", "total_cents": 500},
                headers={"X-Correlation-ID": "checkout-42"},
            )
            assert created.status_code == 201, created.text
            assert created.headers["X-Correlation-ID"] == "checkout-42"
            order_id = created.json()["order_id"]
            paid = await command.post(f"/orders/{order_id}/pay", json={"amount_cents": 500})
            assert paid.status_code == 200, paid.text
            made_up = paid.headers["X-Correlation-ID"]  # none given: the API made one
        await until(lambda: len(seen) == 2, 60, "both events at the probe")
        stored = await system.stores[0].read(f"order-{order_id}")
    assert [e.correlation_id for e in stored] == ["checkout-42", made_up]
    assert seen == {"order.created": "checkout-42", "order.paid": made_up}


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
        command = client(system.command.port)
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
            await command.aclose()
            await store.close()
