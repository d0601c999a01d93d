"""A bus to document for the CLI test: `eventbus asyncapi tests.unit.asyncapi_app:bus`.

Its URL names a RabbitMQ broker with a password; making the bus connects to nothing."""

from eventbus import Envelope, Event, EventBus, RetryPolicy


class TicketOpened(Event, stream="apidoc-cli-tickets", type="ticket.opened"):
    """A support ticket was opened."""

    ticket_id: str
    subject: str


class TicketClosed(Event, stream="apidoc-cli-tickets", type="ticket.closed"):
    ticket_id: str


bus = EventBus("amqp://support:cli-secret-9@127.0.0.1:5672/helpdesk")


@bus.subscribe(group="triage", retry=RetryPolicy(attempts=2, backoff=5, delayed=True))
async def triage(event: TicketOpened) -> None: ...


@bus.subscribe("apidoc-cli-tickets", "ticket.#", group="archive")
def archive(envelope: Envelope) -> None: ...
