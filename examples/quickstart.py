"""The README example, runnable: `python examples/quickstart.py`.

The broker is configuration only: `EVENTBUS_URL=amqp://guest:guest@127.0.0.1:5672/` or
`EVENTBUS_URL=kafka://127.0.0.1:9092` runs the same code on RabbitMQ or Kafka.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from eventbus import Context, DeadLetter, Envelope, Event, EventBus, Reject, RetryPolicy


class OrderCreated(Event, stream="orders", type="order.created"):
    order_id: str
    customer_id: str
    total: float


class OrderPaid(Event, stream="orders", type="order.paid"):
    order_id: str
    amount: float


bus = EventBus()  # EVENTBUS_URL, default memory://
charged: list[str] = []
audit_log: list[str] = []


@bus.subscribe(group="billing", retry=RetryPolicy(attempts=3, backoff=0.05))
async def charge(event: OrderCreated, ctx: Context) -> None:
    if event.total <= 0:
        raise Reject(f"order {event.order_id} has a non-positive total")
    charged.append(event.order_id)
    await ctx.publish(OrderPaid(order_id=event.order_id, amount=event.total), key=event.order_id)


@bus.subscribe("orders", "order.#", group="audit")
def audit(envelope: Envelope) -> None:  # sync handlers run in a worker thread
    audit_log.append(f"{envelope.type} {envelope.data['order_id']}")


async def main() -> int:
    run = uuid.uuid4().hex[:6]  # on a shared broker, earlier runs' events are not ours
    ours = [f"{run}-o-{n}" for n in range(1, 6)]
    dead: list[DeadLetter] = []
    async with bus:
        for n, order_id in enumerate(ours):
            await bus.publish(
                OrderCreated(order_id=order_id, customer_id="c-1", total=10.0 * n), key=order_id
            )
        for _ in range(1000):
            dead = [
                d
                async for d in bus.dead_letters("orders", "billing")
                if d.envelope.data.get("order_id") in ours
            ]
            mine = [line for line in audit_log if line.split()[1] in ours]
            if len(set(charged) & set(ours)) == 4 and len(mine) == 9 and dead:
                break
            await asyncio.sleep(0.02)
        print(f"charged: {sorted(set(charged) & set(ours))}")
        print(f"audit:   {len(mine)} events")
        for d in dead:
            print(f"dead letter: {d.envelope.id} {d.reason}")
    return 0 if len(set(charged) & set(ours)) == 4 and len(dead) == 1 and len(mine) == 9 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
