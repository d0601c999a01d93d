"""The live members of a partitioned group, learnt through the broker itself.

Each member owns an exclusive, auto-delete queue bound to the group's fanout exchange
`<stream>.<group>.members` and publishes a heartbeat there every `member_heartbeat`
seconds: `{"member": <id>, "op": "alive"}`. A member is live while it was heard from
within `member_timeout` seconds; a graceful leave says `"op": "leave"` and is dropped at
once. A member answers a member it has not heard of before right away, so a newcomer
learns the group in one round trip instead of one heartbeat period.

Liveness is judged on the local monotonic clock (when a heartbeat arrived), so members
need no synchronised clocks. The view can lag or differ between members for a moment;
`assignment` plus single-active-consumer queues make that harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from eventbus.toolkit import (
    get_logger,
)

from .link import LOST, Link
from .topology import declare_members

TRANSIENT = 1


def new_member_id() -> str:
    """host.pid.random: unique, and says where a member runs (shown in consumer tags)."""
    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


class Membership:
    def __init__(
        self,
        link: Link,
        exchange: str,
        member_id: str,
        *,
        heartbeat: float,
        timeout: float,
        on_change: Callable[[], None],
    ) -> None:
        self.member_id = member_id
        self._link = link
        self._exchange = exchange
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._on_change = on_change
        #: other live members -> monotonic time they were last heard from
        self._heard: dict[str, float] = {}
        self._aio_channel: Any = None
        self._channel: AbstractChannel | None = None
        self._beating: asyncio.Task[None] | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._left = False
        self._log = get_logger(exchange=exchange, member=member_id)

    @property
    def joined(self) -> bool:
        """Its channel (heartbeats out, the others' in) is open."""
        channel = self._channel
        return channel is not None and not channel.is_closed

    @property
    def members(self) -> frozenset[str]:
        """Every live member, this one included."""
        return frozenset((self.member_id, *self._heard))

    async def start(self) -> None:
        """Join (raising what joining raises), then keep beating."""
        await self._join()
        self._beating = asyncio.create_task(self._beat(), name=f"members:{self._exchange}")

    async def leave(self) -> None:
        """Say goodbye (best effort) and stop listening. Idempotent."""
        if self._left:
            return
        self._left = True
        tasks = [t for t in (self._beating, *self._replies) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*LOST):
            await self._say("leave")
        aio_channel, self._aio_channel, self._channel = self._aio_channel, None, None
        if aio_channel is not None:
            with contextlib.suppress(*LOST):
                await aio_channel.close()

    # --- internals ---------------------------------------------------------------------

    async def _join(self) -> None:
        connection = await self._link.connection()
        aio_channel: Any = await connection.channel(publisher_confirms=False)
        channel: AbstractChannel = await aio_channel.get_underlay_channel()
        try:
            await declare_members(channel, self._exchange)
            ok = await channel.queue_declare("", exclusive=True, auto_delete=True)
            inbox = str(ok.queue)
            await channel.queue_bind(inbox, self._exchange, routing_key="")
            await channel.basic_consume(inbox, self._on_message, no_ack=True)
        except BaseException:
            if not channel.is_closed:
                with contextlib.suppress(*LOST):
                    await aio_channel.close()
            raise
        self._aio_channel, self._channel = aio_channel, channel
        await self._say("alive")

    async def _beat(self) -> None:
        pause = self._heartbeat
        while True:
            await asyncio.sleep(pause)
            pause = self._heartbeat
            try:
                channel = self._channel
                if channel is None or channel.is_closed:
                    await self._link.wait_up()
                    await self._join()
                    self._log.info("members.rejoined")
                else:
                    await self._say("alive")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.warning("members.heartbeat_failed", error=repr(exc))
                pause = min(self._heartbeat, 0.2)
            self._expire()

    async def _say(self, op: str) -> None:
        channel = self._channel
        if channel is None or channel.is_closed:
            return
        body = json.dumps({"member": self.member_id, "op": op}).encode()
        await channel.basic_publish(
            body,
            exchange=self._exchange,
            routing_key="",
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=TRANSIENT,
                expiration=str(max(1, round(self._timeout * 1000))),
            ),
        )

    async def _on_message(self, message: DeliveredMessage) -> None:
        try:
            said = json.loads(message.body)
            member, op = str(said["member"]), str(said["op"])
        except (ValueError, KeyError, TypeError):
            self._log.warning("members.bad_heartbeat", body=message.body[:200])
            return
        if member == self.member_id:
            return
        if op == "leave":
            if self._heard.pop(member, None) is not None:
                self._log.info("members.left", other=member)
                self._on_change()
            return
        known = member in self._heard
        self._heard[member] = time.monotonic()
        if not known:
            self._log.info("members.joined", other=member)
            self._on_change()
            reply = asyncio.create_task(self._reply())
            self._replies.add(reply)
            reply.add_done_callback(self._replies.discard)

    async def _reply(self) -> None:
        with contextlib.suppress(*LOST):
            await self._say("alive")

    def _expire(self) -> None:
        oldest = time.monotonic() - self._timeout
        gone = [member for member, heard in self._heard.items() if heard < oldest]
        for member in gone:
            del self._heard[member]
            self._log.warning("members.timed_out", other=member, timeout=self._timeout)
        if gone:
            self._on_change()
