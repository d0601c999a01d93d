"""The services of the order system. Each runs alone (`python -m examples.orders <name>`)
or together in one process (`System`); only configuration differs:

- `EVENTBUS_URL`: the bus (`memory://` only works with every service in one process);
- `EVENTBUS_STORE_URL`: the event store, which also holds the read models, inboxes and
  checkpoints (`sqlite:///path/orders.db` or `postgresql://user:pw@host/db[?schema=x]`);
- `ORDERS_HOST`, `ORDERS_COMMAND_PORT`, `ORDERS_QUERY_PORT`: where the HTTP APIs listen;
- `ORDERS_STREAM`: the bus stream of the order events (default `orders`);
- `ORDERS_PROJECTION_SOURCE`: `bus` (subscribe, dedupe with the inbox) or `store`
  (catch up from the event store with a checkpoint).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventbus.bus import EventBus
from eventbus.cqrs import DomainError, NotFound
from eventbus.errors import ConcurrencyError, ConfigurationError
from eventbus.log import get_logger
from eventbus.settings import format_validation_error
from eventbus.sourcing import Database, EventStore, OutboxRelay, open_store

from .commands import (
    CreateOrder,
    DeliverOrder,
    PayOrder,
    ShipOrder,
    build_commands,
    order_codec,
    order_repository,
)
from .events import use_stream
from .read_model import (
    PROJECTIONS,
    GetCustomerSummary,
    GetOrder,
    ListCustomers,
    ListNotifications,
    build_queries,
)
from .web import HttpError, JsonServer

_log = get_logger()


class OrdersSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", populate_by_name=True)

    store_url: str = Field(
        default="sqlite:///./orders.db",
        validation_alias=AliasChoices("EVENTBUS_STORE_URL", "ORDERS_STORE_URL"),
    )
    host: str = "127.0.0.1"
    command_port: int = 8080
    query_port: int = 8081
    projection_source: Literal["bus", "store"] = "bus"
    snapshot_every: int = 0
    #: the bus stream of the order events
    stream: str = "orders"


def load_orders_settings(**overrides: Any) -> OrdersSettings:
    try:
        return OrdersSettings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(format_validation_error(exc, "ORDERS_")) from None


async def open_database(store: EventStore) -> Database:
    db = store.database
    if db is None:
        raise ConfigurationError(
            "EVENTBUS_STORE_URL: the order system keeps its read models next to the events; "
            "use sqlite:///path or postgresql://..."
        )
    return db


def _error(exc: Exception) -> HttpError:
    if isinstance(exc, NotFound):
        return HttpError(404, exc.code, str(exc))
    if isinstance(exc, ConcurrencyError):
        return HttpError(409, "concurrency_conflict", str(exc))
    if isinstance(exc, DomainError):
        return HttpError(409 if exc.code == "invalid_transition" else 422, exc.code, str(exc))
    if isinstance(exc, ValidationError):
        return HttpError(422, "invalid_command", str(exc))
    raise exc


@dataclass
class CommandService:
    """HTTP: POST /orders, POST /orders/{id}/pay|ship|deliver. Writes the store + outbox."""

    store: EventStore
    settings: OrdersSettings
    server: JsonServer = field(default_factory=JsonServer)

    async def start(self, port: int | None = None) -> None:
        commands = build_commands(
            order_repository(self.store, snapshot_every=self.settings.snapshot_every)
        )
        route = self.server.route
        kinds: dict[str, type[PayOrder | ShipOrder | DeliverOrder]] = {
            "pay": PayOrder, "ship": ShipOrder, "deliver": DeliverOrder,
        }  # fmt: skip

        @route("POST", "/orders")
        async def create(params: dict[str, str], body: Any) -> tuple[int, Any]:
            try:
                result = await commands.dispatch(CreateOrder.model_validate(body or {}))
            except Exception as exc:
                raise _error(exc) from exc
            return 201, result.model_dump()

        @route("POST", r"/orders/(?P<order_id>[\w-]+)/(?P<action>pay|ship|deliver)")
        async def act(params: dict[str, str], body: Any) -> tuple[int, Any]:
            try:
                command = kinds[params["action"]].model_validate(
                    {**(body or {}), "order_id": params["order_id"]}
                )
                result = await commands.dispatch(command)
            except Exception as exc:
                raise _error(exc) from exc
            return 200, result.model_dump()

        await self.server.start(
            self.settings.host, self.settings.command_port if port is None else port
        )
        _log.info("orders.command_service.started", port=self.server.port)

    async def stop(self) -> None:
        await self.server.stop()


@dataclass
class QueryService:
    """HTTP: GET /customers, /customers/{id}, /orders/{id}, /notifications[/{order id}]."""

    db: Database
    settings: OrdersSettings
    server: JsonServer = field(default_factory=JsonServer)

    async def start(self, port: int | None = None) -> None:
        queries = build_queries(self.db)
        route = self.server.route

        async def ask(query: Any) -> tuple[int, Any]:
            try:
                return 200, await queries.ask(query)
            except Exception as exc:
                raise _error(exc) from exc

        @route("GET", "/customers")
        async def customers(params: dict[str, str], body: Any) -> tuple[int, Any]:
            return await ask(ListCustomers(limit=1000))

        @route("GET", r"/customers/(?P<customer_id>[\w-]+)")
        async def customer(params: dict[str, str], body: Any) -> tuple[int, Any]:
            return await ask(GetCustomerSummary(customer_id=params["customer_id"]))

        @route("GET", r"/orders/(?P<order_id>[\w-]+)")
        async def order(params: dict[str, str], body: Any) -> tuple[int, Any]:
            return await ask(GetOrder(order_id=params["order_id"]))

        @route("GET", r"/notifications(/(?P<order_id>[\w-]+))?")
        async def mails(params: dict[str, str], body: Any) -> tuple[int, Any]:
            return await ask(ListNotifications(order_id=params.get("order_id"), limit=100_000))

        for projection in PROJECTIONS:
            await projection.setup(self.db)
        await self.server.start(
            self.settings.host, self.settings.query_port if port is None else port
        )
        _log.info("orders.query_service.started", port=self.server.port)

    async def stop(self) -> None:
        await self.server.stop()


class RelayService:
    """Publishes the outbox to the bus."""

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
            for name, projection_names in (
                ("projection", ("order-views",)), ("notification", ("notifications",)),
            ):  # fmt: skip
                if name in self.services:
                    store = await self._store()
                    bus = self._bus() if self.settings.projection_source == "bus" else None
                    service = ProjectionService(
                        store, await open_database(store), bus, projection_names
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
