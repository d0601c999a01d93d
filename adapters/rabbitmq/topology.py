"""Names and declarations of everything a stream and a group need on the broker.

    stream                     durable topic exchange `<stream>`
    group                      durable queue `<stream>.<group>` bound with the group's
                               patterns, single active consumer by default
    group, partitions=N        N queues `<stream>.<group>.<i>` (single active consumer each)
                               fed by: headers exchange `<stream>.<group>.route` bound to
                               the stream with the patterns; events with a key (header
                               `ce-partitionkey`) go on to the consistent-hash exchange
                               `<stream>.<group>.hash` hashing that header (same key, same
                               queue); events without one reach its alternate exchange
                               `<stream>.<group>.spread`, a consistent-hash exchange on
                               `message_id` (the event id), so they spread over all queues
    members of a partitioned   fanout exchange `<stream>.<group>.members` (membership)
    group
    dead letters               queue `<stream>.<group>.dlq`
    delayed retry, tier n      wait queue `<stream>.<group>.retry.<n>` with `x-message-ttl`
                               = the tier's delay, dead-lettering back into the group
                               (declared by the first retry that needs it)
    a delay off the tiers      wait queue `<stream>.<group>.delay.<ms>ms` (`Retry(after=)`)

Quorum queues expire messages only at their head, so a wait queue holds one delay only.
Quorum wait queues dead-letter `at-least-once` (RabbitMQ >= 3.10), so a retry is never
lost between the wait queue and the group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel

from eventbus.toolkit import ConfigurationError, dead_letter_name, retry_name

#: header the consistent-hash exchange of a partitioned group hashes on
HASH_HEADER = "ce-partitionkey"
#: message property keyless events of a partitioned group are spread by
SPREAD_PROPERTY = "message_id"


@dataclass(frozen=True, slots=True)
class GroupTopology:
    stream: str
    group: str
    patterns: tuple[str, ...]
    queue_type: str
    single_active_consumer: bool
    partitions: int | None
    tiers: tuple[float, ...]

    @property
    def base(self) -> str:
        return f"{self.stream}.{self.group}"

    @property
    def queues(self) -> list[str]:
        """The queues members consume."""
        if self.partitions is None:
            return [self.base]
        return [f"{self.base}.{i}" for i in range(self.partitions)]

    @property
    def dlq(self) -> str:
        return dead_letter_queue(self.stream, self.group)

    @property
    def route_exchange(self) -> str:
        return route_exchange(self.stream, self.group)

    @property
    def hash_exchange(self) -> str:
        return f"{self.base}.hash"

    @property
    def spread_exchange(self) -> str:
        return f"{self.base}.spread"

    @property
    def members_exchange(self) -> str:
        return f"{self.base}.members"

    @property
    def entry(self) -> tuple[str, str]:
        """(exchange, routing key) that puts a message into this group only."""
        if self.partitions is None:
            return "", self.base
        return self.route_exchange, ""

    def wait_queue(self, attempt: int, delay: float) -> tuple[str, bool]:
        """-> (wait queue for a retry that will be try number `attempt` after `delay`
        seconds, whether it is one of the declared tiers)."""
        index = attempt - 2
        if 0 <= index < len(self.tiers) and _ms(self.tiers[index]) == _ms(delay):
            return retry_name(self.stream, self.group, index + 1), True
        return f"{self.base}.delay.{_ms(delay)}ms", False

    def tier_queues(self) -> list[tuple[str, float]]:
        return [(retry_name(self.stream, self.group, n + 1), d) for n, d in enumerate(self.tiers)]

    def all_queues(self) -> list[str]:
        """Every queue this topology declares up front (for tools and clean-up)."""
        return [*self.queues, self.dlq, *(name for name, _ in self.tier_queues())]

    # --- declaring -----------------------------------------------------------------------

    def group_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self.queue_type}
        if self.single_active_consumer:
            args["x-single-active-consumer"] = True
        return args

    def wait_arguments(self, delay: float) -> dict[str, Any]:
        exchange, routing_key = self.entry
        args: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-message-ttl": _ms(delay),
            "x-dead-letter-exchange": exchange,
        }
        if routing_key:
            args["x-dead-letter-routing-key"] = routing_key
        if self.queue_type == "quorum":
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    async def declare(self, channel: AbstractChannel) -> None:
        """Declare the stream exchange, the group's queues and bindings and its
        dead-letter queue. Idempotent; a queue that exists with other arguments raises
        ConfigurationError naming it. A wait queue is declared when the first retry needs
        it (`declare_wait_queue`): a group that never retries holds two queues."""
        await declare_stream(channel, self.stream)
        await _queue(channel, self.dlq, {"x-queue-type": self.queue_type})
        if self.partitions is None:
            await _queue(channel, self.base, self.group_arguments())
            for pattern in self.patterns:
                await channel.queue_bind(self.base, self.stream, routing_key=pattern)
        else:
            await self._declare_partitions(channel)

    async def _declare_partitions(self, channel: AbstractChannel) -> None:
        hashed, spread = self.hash_exchange, self.spread_exchange
        await _exchange(channel, hashed, "x-consistent-hash", {"hash-header": HASH_HEADER})
        await _exchange(channel, spread, "x-consistent-hash", {"hash-property": SPREAD_PROPERTY})
        for queue in self.queues:
            await _queue(channel, queue, self.group_arguments())
            await channel.queue_bind(queue, hashed, routing_key="1")
            await channel.queue_bind(queue, spread, routing_key="1")
        route = self.route_exchange
        await _exchange(channel, route, "headers", {"alternate-exchange": spread})
        # a binding argument of type void matches on the header's presence alone
        await channel.exchange_bind(
            destination=hashed, source=route, arguments={"x-match": "any", HASH_HEADER: None}
        )
        for pattern in self.patterns:
            await channel.exchange_bind(destination=route, source=self.stream, routing_key=pattern)

    async def declare_wait_queue(self, channel: AbstractChannel, name: str, delay: float) -> None:
        await _queue(channel, name, self.wait_arguments(delay))


#: the dead-letter queue of a group, named as on every broker
dead_letter_queue = dead_letter_name


def route_exchange(stream: str, group: str) -> str:
    """The entry of a partitioned group (see the module docstring)."""
    return f"{stream}.{group}.route"


async def declare_stream(channel: AbstractChannel, stream: str) -> None:
    await _exchange(channel, stream, "topic", None)


async def declare_members(channel: AbstractChannel, exchange: str) -> None:
    """The fanout exchange a partitioned group's members talk through (`membership`)."""
    await _exchange(channel, exchange, "fanout", None)


async def _exchange(
    channel: AbstractChannel, name: str, kind: str, arguments: dict[str, Any] | None
) -> None:
    try:
        await channel.exchange_declare(
            exchange=name, exchange_type=kind, durable=True, arguments=arguments
        )
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"exchange {name!r} exists with another type or arguments ({_reason(exc)}); "
            f"it must be a durable {kind} exchange: delete it or rename the stream"
        ) from None
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise ConfigurationError(
            f"cannot declare exchange {name!r} of type {kind!r} ({_reason(exc)}); "
            "for partitions=N the broker needs the rabbitmq_consistent_hash_exchange plugin"
        ) from None
    except aiormq.exceptions.ConnectionCommandInvalid as exc:
        raise ConfigurationError(
            f"cannot declare exchange {name!r} of type {kind!r} ({_reason(exc)}); "
            "for partitions=N the broker needs the rabbitmq_consistent_hash_exchange plugin"
        ) from None


async def _queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> None:
    try:
        await channel.queue_declare(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"queue {name!r} exists with other arguments ({_reason(exc)}); it was declared "
            f"with another queue_type, single_active_consumer or retry delay: delete it "
            f"or use the options it was created with (wanted {arguments})"
        ) from None


def _reason(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    return str(args[0]) if args else type(exc).__name__


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
