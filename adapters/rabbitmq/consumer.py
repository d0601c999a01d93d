"""One subscription's consumer: the group's queue(s), each on a channel of its own
(`Attachment`), feeding the kernel one delivery at a time, re-attached whenever a channel
or the connection is lost.

Order: aiormq runs the consume callbacks in arrival order; they only append to one
in-process queue that a single task drains, awaiting `deliver(d)` for each.

Partitioned groups (`partitions=N`): the members find each other (`membership`) and
each consumes only the partition queues `assignment` gives it, so the group scales out
to N members. When the assignment moves a partition away, the member releases it
gracefully (`Attachment.release`: in-flight deliveries settle, then the channel closes
and the broker hands the queue, with everything not yet handled, to the next consumer);
the new owner has registered on it by then or registers right after. Single active
consumer on every partition queue is the safety net: members whose views briefly differ
never consume one queue at the same time.

Recovery: when a channel dies, the broker takes back every unacknowledged message and
will deliver it again; deliveries still queued here from the dead channel are dropped.
A handler may therefore run twice for one event after a connection loss: at-least-once,
never lost.

Id-less messages (no `ce-id` header, no `message_id`: a plain client's JSON) get one id
before any handler sees it, and keep it on every redelivery, retry and restart: the
consumer publishes a copy stamped with a new `message_id` into the group's own entry
(the group queue, or a partitioned group's route exchange), confirmed, and only then acks
the original; handlers only ever see the stamped copy. Two id-less messages get two ids.
Caveats: the copy queues up behind what the group queue holds already, so an id-less
message loses its place in its key's order; and should the connection drop between the
confirm of the copy and the ack of the original, the original is stamped again when it
comes back (the event then exists under two ids: at-least-once, like any redelivery).

Copies (dead letters, delayed retries, id stamps) go to the group's own queues. One whose
queue was deleted under the running consumer is returned by the broker (mandatory): the
group's topology is declared again and the copy sent once more (`store_copy`).

Health (`state`, `backlog`): the consumer is attached when the link is connected, no
recovery is under way, and every queue it should consume has an open channel of the
current connection with its basic.consume registered (a partitioned group: the queues the
assignment gives this member, and its membership channel open). `backlog` reads the ready
messages of every queue the group consumes (not its wait and dead-letter queues) by a
passive declare on a short-lived channel, bounded by `BACKLOG_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from eventbus.toolkit import (
    ATTEMPT_HEADER,
    ConsumerState,
    Deliver,
    Delivery,
    PublishError,
    SubscriptionSpec,
    UnroutableError,
    finish_task,
    get_logger,
    new_id,
    supervise,
)

from .assignment import assign
from .attachment import Attachment
from .delivery import RabbitMQDelivery
from .link import _describe
from .membership import Membership, new_member_id
from .properties import BOOKKEEPING, ROUTING_KEY_HEADER, copy_of
from .topology import GroupTopology

if TYPE_CHECKING:
    from .broker import RabbitMQBroker

#: seconds `backlog()` may take (a channel, one passive declare per queue) before it
#: gives up and returns None
BACKLOG_TIMEOUT = 5.0
#: how long `close` lets a backlog count in flight finish before it cancels it
COUNT_GRACE = 1.0


class GroupConsumer:
    """The `Consumer` of one subscription."""

    def __init__(
        self,
        broker: RabbitMQBroker,
        spec: SubscriptionSpec,
        topology: GroupTopology,
        deliver: Deliver,
        prefetch: int,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.topology = topology
        self.member_id = new_member_id()
        self._deliver = deliver
        self._prefetch = prefetch
        #: (attachment, message) from the broker; (None, delivery) a delivery handed back
        #: by an id stamp that failed; _WAKE
        self._inbox: asyncio.Queue[tuple[Attachment | None, Any]] = asyncio.Queue()
        self._attachments: dict[str, Attachment] = {}
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._membership: Membership | None = None
        if topology.partitions is not None:
            settings = broker.settings
            self._membership = Membership(
                broker.link,
                topology.members_exchange,
                self.member_id,
                heartbeat=settings.member_heartbeat,
                timeout=settings.member_timeout,
                on_change=self._wake_up,
            )
        self._paused = False
        self._closing = False
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        #: wait queues this consumer declared (the first retry that needs one does)
        self._wait_queues: set[str] = set()
        #: exchanges a message comes back through from the group's own channels (wait
        #: queues, replays, id stamps): the attempt count is trusted only on those
        self.trusted_exchanges = frozenset(
            {"", topology.route_exchange} if topology.partitions is not None else {""}
        )
        self._stamping: set[asyncio.Task[None]] = set()
        #: the queues the last `_reconcile` wanted (what `state` checks, without hashing)
        self._wanted: list[str] = []
        #: what the re-attacher is doing while it recovers (None: not recovering)
        self._recovery: str | None = None
        #: why the last `backlog()` failed (logged once per new reason)
        self._backlog_problem: str | None = None
        #: `backlog()` passive declares still running (one given up on closes its channel)
        self._counting: set[asyncio.Task[dict[str, int]]] = set()
        self._log = get_logger(stream=topology.stream, group=topology.group, member=self.member_id)

    @property
    def returns_on_close(self) -> bool:
        """Stopping on single-active-consumer queues: unsettled deliveries stay with this
        consumer until its channels close (see `RabbitMQDelivery.nack`)."""
        return self._paused and self.topology.single_active_consumer

    def wanted(self) -> list[str]:
        """The queues this member should consume now."""
        if self._membership is None or self.topology.partitions is None:
            return self.topology.queues
        owned = assign(self._membership.members, self.topology.partitions)
        mine = owned.get(self.member_id, frozenset())
        return [q for i, q in enumerate(self.topology.queues) if i in mine]

    def active_queues(self) -> list[str]:
        """The queues this member has a live consumer on (active or standing by)."""
        return sorted(q for q, a in self._attachments.items() if a.is_live and not a.releasing)

    # --- health ------------------------------------------------------------------------

    def state(self) -> ConsumerState:
        """Attached or not, now, and why not (no I/O; see the module docstring). A consumer
        standing by on a single-active-consumer queue counts as attached."""
        if self._paused:
            return ConsumerState(False, "closed" if self._closing else "stopping")
        runner, keeper = self._runner, self._keeper
        if runner is None or keeper is None:
            return ConsumerState(False, "starting")
        if runner.done() or keeper.done():
            return ConsumerState(False, "the consumer's tasks ended")
        link = self.broker.link
        if not link.is_connected:
            return ConsumerState(False, "connection lost, reconnecting")
        if self._recovery is not None:
            return ConsumerState(False, self._recovery)
        membership = self._membership
        if membership is not None and not membership.joined:
            return ConsumerState(False, "rejoining the group's members")
        generation = link.generation
        for queue in self._wanted:
            attachment = self._attachments.get(queue)
            if attachment is None or attachment.releasing:
                return ConsumerState(False, f"attaching {queue}")
            if not attachment.is_live:
                return ConsumerState(
                    False, f"channel closed: {attachment.closed_reason()} (queue {queue})"
                )
            if attachment.generation != generation:
                return ConsumerState(False, f"the channel of {queue} is of a lost connection")
            if not attachment.consuming:
                return ConsumerState(
                    False, f"the broker cancelled the consumer of {queue} (queue deleted?)"
                )
        return ConsumerState(True, self._attached_note())

    def _attached_note(self) -> str:
        partitions = self.topology.partitions
        if partitions is None or self._membership is None:
            return ""
        if not self._wanted:
            members = len(self._membership.members)
            return f"no partitions assigned ({members} members, {partitions} partitions)"
        owned = sorted(int(q.rsplit(".", 1)[1]) for q in self._wanted)  # `<base>.<i>`
        listed = ", ".join(map(str, owned[:16])) + (", ..." if len(owned) > 16 else "")
        return f"partitions {listed} ({len(owned)} of {partitions})"

    async def backlog(self) -> dict[str, int] | None:
        """Ready messages per queue the group consumes (every partition queue of a
        partitioned group; the wait and dead-letter queues are not backlog). None when it
        cannot tell now: the link is down, a queue is missing, or the broker did not answer
        within `BACKLOG_TIMEOUT`. Never raises (but a cancellation), never waits longer."""
        if self._closing or not self.broker.link.is_connected:
            return None
        counting = asyncio.create_task(self._ready_counts(), name="rabbitmq-backlog")
        self._counting.add(counting)
        counting.add_done_callback(self._counting.discard)
        # a cancelled caller (the bus stopping) leaves the count running: `close` lets it
        # finish. Cancelled while its channel opens, aiormq would close the channel with
        # a warning on stderr, past structlog, on every start and stop of a bus.
        done, _ = await asyncio.wait([counting], timeout=BACKLOG_TIMEOUT)
        if not done:
            # given up on: it closes its channel in the background (`close` waits for it)
            counting.cancel()
            problem = f"no answer within {BACKLOG_TIMEOUT:g}s"
        elif counting.cancelled():
            problem = "cancelled"
        elif (exc := counting.exception()) is not None:
            problem = _describe(exc)
        else:
            self._backlog_problem = None
            return counting.result()
        if problem != self._backlog_problem:
            self._log.warning("rabbitmq.backlog_unknown", error=problem)
            self._backlog_problem = problem
        return None

    async def _ready_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        async with self.broker.declare_channel() as channel:
            for queue in self.topology.queues:
                ok = await channel.queue_declare(queue, passive=True)
                counts[queue] = int(ok.message_count or 0)
        return counts

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and attach (raising what the first attach raises), then keep
        attached and balanced."""
        if self._membership is not None:
            await self._membership.start()
        await self._reconcile()
        base = self.topology.base
        self._runner = asyncio.create_task(self._run(), name=f"rabbitmq:{base}")
        self._keeper = asyncio.create_task(self._keep_attached(), name=f"rabbitmq-keeper:{base}")
        ending = self._is_ending
        supervise(self._runner, self.spec, f"the RabbitMQ consumer of {base}", ending)
        supervise(self._keeper, self.spec, f"the RabbitMQ re-attacher of {base}", ending)

    def _is_ending(self) -> bool:
        return self._paused

    async def pause(self) -> None:
        """Stop passing deliveries on and leave the group. On single-active-consumer
        queues the broker consumers stay registered (and active) until `close` closes
        their channels, which hands each queue over in order; competing consumers are
        cancelled at once."""
        self._paused = True
        await self._stop_keeper()
        if self._membership is not None:
            await self._membership.leave()
        if not self.topology.single_active_consumer:
            for attachment in list(self._attachments.values()):
                await attachment.cancel()
        self._inbox.put_nowait(_WAKE)  # unblock the runner so it sees `_paused`

    async def close(self) -> None:
        self._paused = True
        self._closing = True
        runner = self._runner
        if runner is not None and not runner.done():
            self._inbox.put_nowait(_WAKE)
        await finish_task(runner)
        await self._stop_keeper()
        if self._membership is not None:
            await self._membership.leave()
        if self._counting:  # a backlog count in flight: a channel opened and closed
            await asyncio.wait(self._counting, timeout=COUNT_GRACE)
        releasing: list[asyncio.Future[Any]] = [
            *self._releasing.values(),
            *self._stamping,
            *self._counting,
        ]
        for task in releasing:
            task.cancel()
        await asyncio.gather(*releasing, return_exceptions=True)
        attachments = list(self._attachments.values())
        self._attachments.clear()
        for attachment in attachments:
            await attachment.close()

    async def _stop_keeper(self) -> None:
        keeper = self._keeper
        if keeper is not None and keeper is not asyncio.current_task():
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    # --- attaching and balancing -------------------------------------------------------

    def _wake_up(self) -> None:
        self._wake.set()

    async def _reconcile(self) -> None:
        """One pass: forget dead attachments, release queues no longer wanted, attach
        wanted ones (a queue still being released is attached again once it is)."""
        wanted = self.wanted()
        self._wanted = wanted
        for queue, attachment in list(self._attachments.items()):
            if not attachment.is_live:
                del self._attachments[queue]
            elif queue not in wanted and queue not in self._releasing:
                self._releasing[queue] = asyncio.create_task(
                    self._release(attachment), name=f"rabbitmq-release:{queue}"
                )
        for queue in wanted:
            if queue in self._attachments or queue in self._releasing:
                continue
            tag = f"{self.member_id}/{queue}" if self._membership is not None else None
            attachment = await Attachment.open(
                self.broker.link, queue, self._prefetch, tag, self._on_message
            )
            self._attachments[queue] = attachment
            attachment.on_closed(self._wake_up)
            if self._membership is not None:
                self._log.info("rabbitmq.partition_attached", queue=queue)

    async def _release(self, attachment: Attachment) -> None:
        queue = attachment.queue
        try:
            await attachment.release()
            self._log.info("rabbitmq.partition_released", queue=queue)
        finally:
            if self._attachments.get(queue) is attachment:
                del self._attachments[queue]
            self._releasing.pop(queue, None)
            self._wake_up()

    async def _keep_attached(self) -> None:
        pause = 0.1
        while not self._paused:
            await self._wake.wait()
            self._wake.clear()
            if self._paused:
                return
            lost = {q: a for q, a in self._attachments.items() if not a.is_live}
            if lost:
                self._log.warning("rabbitmq.consumer_detached", queues=list(lost))
            link = self.broker.link
            try:
                if lost or not link.is_up:
                    cause = self._cause(list(lost.values()))
                    self._recovery = f"{cause}; waiting for the connection"
                    await link.wait_up()
                    self._recovery = f"{cause}; declaring the group's queues again"
                    async with self.broker.declare_channel() as admin:
                        await self.topology.declare(admin)
                    self._recovery = f"{cause}; consuming again"
                await self._reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._recovery = f"re-attaching failed ({_describe(exc)}), retrying in {pause:g}s"
                self._log.warning("rabbitmq.reattach_failed", error=repr(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.broker.settings.max_reconnect_backoff)
                self._wake.set()
                continue
            self._recovery = None
            if pause > 0.1 or lost:
                self._log.info("rabbitmq.consumer_reattached", queues=self.active_queues())
            pause = 0.1

    def _cause(self, lost: list[Attachment]) -> str:
        """Why the consumer is re-attaching, for `state`."""
        link = self.broker.link
        if not lost or not link.is_up or any(a.generation != link.generation for a in lost):
            return "connection lost"
        return f"channel closed: {lost[0].closed_reason()}"

    # --- delivering --------------------------------------------------------------------

    def _on_message(self, attachment: Attachment, message: DeliveredMessage) -> None:
        self._inbox.put_nowait((attachment, message))

    async def _run(self) -> None:
        inbox = self._inbox
        deliver = self._deliver
        while True:
            attachment, message = await inbox.get()
            if attachment is None and message is not None:  # a ready delivery
                if self._paused:
                    await message.nack()
                else:
                    await deliver(message)
                continue
            if self._paused:
                if self._closing:
                    return
                continue  # left unacked: the channel close at `close` returns it
            if attachment is None or attachment.releasing or message.channel.is_closed:
                continue  # the broker gets it back when that channel closes
            try:
                d = RabbitMQDelivery(self, attachment, message)
            except Exception as exc:  # bad input never stops the consumer
                d = RabbitMQDelivery.undecodable(self, attachment, message, exc)
            if not d.attributes.get("id") and d.defect is None:
                self._stamp(d)
                continue
            await deliver(d)

    # --- id-less messages --------------------------------------------------------------

    def _stamp(self, d: RabbitMQDelivery) -> None:
        task = asyncio.create_task(self._stamped(d), name=f"rabbitmq-stamp:{self.topology.base}")
        self._stamping.add(task)
        task.add_done_callback(self._stamping.discard)

    async def _stamped(self, d: RabbitMQDelivery) -> None:
        """Publish a copy of an id-less message with an id of its own into the group's
        entry, then ack the original (see the module docstring)."""
        event_id = new_id()
        headers: dict[str, Any] = {
            k: v
            for k, v in d.headers.items()
            if k.lower() not in BOOKKEEPING and k.lower() != "ce-id"
        }
        if d.attempt > 1:  # trusted already (it came through the group's own channels)
            headers[ATTEMPT_HEADER] = d.attempt
        if d.routing_key is not None:
            headers[ROUTING_KEY_HEADER] = d.routing_key
        properties = copy_of(d.message_properties, headers, None)
        properties.message_id = event_id
        exchange, routing_key = self.topology.entry
        try:
            stored = await self._while_open(
                d, self.broker.publisher.send(exchange, routing_key, d.body, properties)
            )
        except Exception as exc:
            # not a lost connection (the channel would have closed first): the copy cannot
            # be stored (too large with the id, the entry gone, ...); the kernel
            # dead-letters the message, with the reason
            self._log.warning("rabbitmq.id_stamp_failed", error=repr(exc)[:300])
            d.defect = (
                "the message has no id, and its copy with one could not be stored: "
                f"{type(exc).__name__}: {exc}"
            )[:1000]
            self._inbox.put_nowait((None, d))
            return
        if stored:
            self._log.debug("rabbitmq.id_stamped", event_id=event_id)
            await d.ack()
        else:
            d.dropped_copy("id stamp")

    # --- copies into the group's own queues ----------------------------------------------

    async def store_copy(
        self,
        d: RabbitMQDelivery,
        queue: str,
        properties: spec.Basic.Properties,
        what: str,
        *,
        delay: float | None = None,
    ) -> bool:
        """Publish a copy of `d` into one of the group's queues, confirmed. -> False if the
        delivery's channel closed first (the broker redelivers the original, so no copy
        is needed; the delivery is settled as dropped). A queue found missing (deleted
        under the running consumer) is declared again, with the group's topology, and
        the copy sent once more; raises PublishError if it still cannot be stored."""
        publisher = self.broker.publisher
        try:
            stored = await self._while_open(d, publisher.send("", queue, d.body, properties))
        except UnroutableError:
            self._log.warning(
                "rabbitmq.queue_missing",
                queue=queue,
                what=what,
                action="declaring the group's queues again",
            )
            await self._redeclare(queue, delay)
            try:
                stored = await self._while_open(d, publisher.send("", queue, d.body, properties))
            except UnroutableError:
                raise PublishError(
                    f"the {what} of event {properties.message_id} was returned by queue "
                    f"{queue!r} even after the queue was declared again: is something "
                    "deleting it?"
                ) from None
        if not stored:
            d.dropped_copy(what)
        return stored

    async def _while_open(self, d: RabbitMQDelivery, publish: Awaitable[None]) -> bool:
        """Run `publish` unless or until the delivery's channel closes. -> whether it ran
        to completion (its error is raised)."""
        channel = d.message_channel
        if channel.is_closed:
            if asyncio.iscoroutine(publish):
                publish.close()
            return False
        task = asyncio.ensure_future(publish)
        closing = channel.closing  # an observer of its own: cancelled after use
        try:
            await asyncio.wait([task, closing], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            closing.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    async def _redeclare(self, queue: str, delay: float | None) -> None:
        async with self.broker.declare_channel() as admin:
            await self.topology.declare(admin)
            if delay is not None:
                await self.topology.declare_wait_queue(admin, queue, delay)

    # --- helpers for deliveries --------------------------------------------------------

    async def wait_queue(self, attempt: int, delay: float) -> str:
        name, _tier = self.topology.wait_queue(attempt, delay)
        if name not in self._wait_queues:
            async with self.broker.declare_channel() as admin:
                await self.topology.declare_wait_queue(admin, name, delay)
            self._wait_queues.add(name)
        return name

    def dropped(self, what: str, delivery: Delivery) -> None:
        self._log.info(
            "rabbitmq.settle_dropped",
            what=what,
            event_id=delivery.attributes.get("id"),
            reason="channel closed; the broker redelivers the message",
        )


#: wakes the runner (never delivered)
_WAKE: Any = (None, None)
