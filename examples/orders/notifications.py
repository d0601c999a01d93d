"""The notification service on the bus: exactly-once effects with a transactional handler.

For every order event, `notify` writes the e-mail's row (the `notifications` read model)
and publishes `NotificationQueued` with `ctx.publish`. Both go into one transaction of the
store's database with the event's inbox entry (`eventbus.sourcing.transactional`): the
event is queued in the outbox, and the relay service publishes it. A redelivered order
event (a crash before the ack, a relay that published twice) finds its inbox entry and
changes nothing, so each order event gives exactly one row and one `NotificationQueued`.

`send`, the mailer (group `mailer`), sends the queued e-mails. Sending is a side effect
outside the database, so it is at least once: the mailer skips a notification its inbox
has seen, but a crash between sending and recording sends that one again. (It logs
`orders.mail_sent` where a real one would call an SMTP server or a mail API, with the
event id as the idempotency key.)
"""

from __future__ import annotations

from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.log import get_logger
from eventbus.sourcing import EventStore, Inbox, Transaction, transactional

from .commands import order_codec
from .events import NotificationQueued, OrderEvent
from .read_model import notifications, record_mail

_log = get_logger()

#: the consumer group of the mailer (its inbox is keyed by it)
MAILER = "mailer"


def subscribe_notifications(bus: EventBus, store: EventStore) -> None:
    """Subscribe the notification handler (group `notifications`, the projection's name,
    so its inbox and read model are the projection's) and the mailer to `bus`. The tables
    must exist (`notifications.setup(db)`) before the bus starts."""
    db = store.database
    assert db is not None, "the order system keeps its read models in the store's database"

    @bus.subscribe(group=notifications.name)
    @transactional(store, codec=order_codec())
    async def notify(event: OrderEvent, ctx: Context, tx: Transaction) -> None:
        mail = await record_mail(tx, event, ctx.envelope.id)
        queued = NotificationQueued(
            order_id=mail.order_id, recipient=mail.recipient, subject=mail.subject
        )
        await ctx.publish(queued, key=mail.order_id)

    sent = Inbox(db, MAILER)

    @bus.subscribe(group=MAILER)
    async def send(event: NotificationQueued, ctx: Context) -> None:
        if await sent.seen(ctx.envelope.id):
            return
        _log.info(
            "orders.mail_sent", notification=ctx.envelope.id, order_id=event.order_id,
            to=event.recipient, subject=event.subject,
        )  # fmt: skip
        await sent.handle(ctx.envelope.id, _sent)


async def _sent(tx: Transaction) -> None:
    """Nothing to write but the inbox entry `Inbox.handle` makes."""
