"""The services of the order system. Each runs alone (`python -m examples.orders <name>`)
or together in one process (`System`); only configuration differs:

- `EVENTBUS_URL`: the bus (`memory://` only works with every service in one process);
- `EVENTBUS_STORE_URL`: the event store, which also holds the read models, inboxes and
  checkpoints (`sqlite:///path/orders.db` or `postgresql://user:pw@host/db[?schema=x]`);
- `ORDERS_HOST`, `ORDERS_COMMAND_PORT`, `ORDERS_QUERY_PORT`: where the HTTP APIs listen
  (FastAPI apps on uvicorn, see `api`); `ORDERS_WORKERS`: uvicorn worker processes of the
  command or query service run alone (`--workers N` says the same);
- `ORDERS_STREAM`: the bus stream of the order events (default `orders`);
- `ORDERS_PROJECTION_SOURCE`: `bus` (subscribe, dedupe with the inbox) or `store`
  (catch up from the event store with a checkpoint).

The notification service shows exactly-once effects (`notifications`): on the bus, each
order event's e-mail row and its `NotificationQueued` event commit in one transaction with
the inbox entry, and the relay service publishes the event to the mailer. From the store
(no bus) it writes the same rows as a projection and queues nothing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from eventbus.bus import EventBus
from eventbus.errors import ConfigurationError
from eventbus.log import get_logger
from eventbus.sourcing import Database, EventStore, OutboxRelay, open_store

if TYPE_CHECKING:
    from .api import HttpServer

from .commands import order_codec
from .events import use_stream
from .notifications import subscribe_notifications
from .read_model import PROJECTIONS, notifications, order_views
from .settings import OrdersSettings, load_orders_settings, open_database

__all__ = [
    "SERVICES",
    "CommandService",
    "NotificationService",
    "OrdersSettings",
    "ProjectionService",
    "QueryService",
    "RelayService",
    "System",
    "load_orders_settings",
    "open_database",
]

_log = get_logger()


class CommandService:
    """The command API (`api.command_app`) on uvicorn in this process, on `store`."""

    def __init__(self, store: EventStore, settings: OrdersSettings) -> None:
        from .api import HttpServer, command_app  # the web stack only where it serves

        self.settings = settings
        self.app = command_app(settings, store=store)
        self.server: HttpServer = HttpServer(self.app, settings.host, settings.command_port)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, port: int | None = None) -> None:
        if port is not None:
            self.server.port = port
        await self.server.start()
        _log.info("orders.command_service.started", port=self.port)

    async def stop(self) -> None:
        await self.server.stop()


class QueryService:
    """The query API (`api.query_app`) on uvicorn in this process, on `db`."""

    def __init__(self, db: Database, settings: OrdersSettings) -> None:
        from .api import HttpServer, query_app

        self.settings = settings
        self.app = query_app(settings, db=db)
        self.server: HttpServer = HttpServer(self.app, settings.host, settings.query_port)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, port: int | None = None) -> None:
        if port is not None:
            self.server.port = port
        await self.server.start()
        _log.info("orders.query_service.started", port=self.port)

    async def stop(self) -> None:
        await self.server.stop()


class RelayService:
    """Publishes the outbox to the bus: the order events and the notifications queued."""

    def __init__(self, store: EventStore, bus: EventBus) -> None:
        self.bus = bus
        self.relay = OutboxRelay(store, bus, order_codec())
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.start()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.relay.run(self._stop), name="outbox-relay")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.bus.stop()


class ProjectionService:
    """Builds read models: from the bus (inbox dedupe) or from the store (checkpoint).
    `names` picks the projections (the notification service is the `notifications` one)."""

    def __init__(
        self,
        store: EventStore,
        db: Database,
        bus: EventBus | None,
        names: tuple[str, ...],
    ) -> None:
        self.store = store
        self.db = db
        self.bus = bus
        self.projections = [p for p in PROJECTIONS if p.name in names]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for projection in self.projections:
            await projection.setup(self.db)
        if self.bus is not None:
            for projection in self.projections:
                projection.bind(self.bus, self.db)
            await self.bus.start()
            return
        codec = order_codec()
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(p.run(self.store, self.db, codec, stop=self._stop))
            for p in self.projections
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            await task
        self._tasks = []
        if self.bus is not None:
            await self.bus.stop()


class NotificationService(ProjectionService):
    """The e-mails of the order events (the `notifications` read model). From the bus: a
    transactional handler writes each e-mail and queues a `NotificationQueued` event in one
    transaction, and the mailer sends what was queued (`notifications`). From the store:
    the `notifications` projection, following the store; nothing is queued."""

    def __init__(self, store: EventStore, db: Database, bus: EventBus | None) -> None:
        super().__init__(store, db, bus, (notifications.name,))

    async def start(self) -> None:
        if self.bus is None:
            await super().start()
            return
        await notifications.setup(self.db)
        subscribe_notifications(self.bus, self.store)
        await self.bus.start()


SERVICES = ("command", "relay", "projection", "notification", "query")


class System:
    """Some or all services in this process, each on its own store connection and bus."""

    def __init__(
        self,
        settings: OrdersSettings,
        *,
        bus_url: str | None = None,
        services: tuple[str, ...] = SERVICES,
        ephemeral_ports: bool = False,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ConfigurationError(f"unknown service(s) {sorted(unknown)}; use {SERVICES}")
        self.settings = settings
        self.bus_url = bus_url
        self.services = services
        self.ephemeral_ports = ephemeral_ports
        self.stores: list[EventStore] = []
        self.running: list[Any] = []
        self.command: CommandService | None = None
        self.query: QueryService | None = None
        self.relay: RelayService | None = None

    async def _store(self) -> EventStore:
        store = open_store(self.settings.store_url)
        await store.open()
        self.stores.append(store)
        return store

    def _bus(self) -> EventBus:
        return EventBus(self.bus_url)  # None: EVENTBUS_URL

    async def start(self) -> None:
        port = 0 if self.ephemeral_ports else None
        use_stream(self.settings.stream)
        try:
            if "command" in self.services:
                self.command = CommandService(await self._store(), self.settings)
                await self.command.start(port)
                self.running.append(self.command)
            for name in ("projection", "notification"):
                if name in self.services:
                    store = await self._store()
                    db = await open_database(store)
                    bus = self._bus() if self.settings.projection_source == "bus" else None
                    service = (
                        ProjectionService(store, db, bus, (order_views.name,))
                        if name == "projection"
                        else NotificationService(store, db, bus)
                    )
                    await service.start()
                    self.running.append(service)
            if "relay" in self.services:
                self.relay = RelayService(await self._store(), self._bus())
                await self.relay.start()
                self.running.append(self.relay)
            if "query" in self.services:
                store = await self._store()
                self.query = QueryService(await open_database(store), self.settings)
                await self.query.start(port)
                self.running.append(self.query)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for service in reversed(self.running):
            try:
                await service.stop()
            except Exception as exc:
                _log.warning(
                    "orders.service_stop_failed", service=type(service).__name__, error=repr(exc)
                )
        self.running = []
        for store in self.stores:
            await store.close()
        self.stores = []

    async def __aenter__(self) -> System:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
