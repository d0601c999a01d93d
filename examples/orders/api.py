"""The HTTP APIs of the order system: two FastAPI apps, served by uvicorn.

- `command_app`: POST /orders, POST /orders/{id}/pay|ship|deliver. Runs the command on
  the Order aggregate and saves its events and their outbox rows in one transaction (the
  relay publishes them). Answers 201/200 with the order's status and version, or
  `{"error": code, "message": ...}`: 404 `not_found`, 409 `invalid_transition` or
  `concurrency_conflict`, 422 `invalid_command` or the broken rule (`wrong_amount`),
  400 `bad_json`.
- `query_app`: GET /customers, /customers/{id}, /orders/{id}, /notifications[/{order id}]
  from the read models.

Both are factories that read their settings from the environment (`OrdersSettings`), so
uvicorn serves them as they are, in as many worker processes as you like::

    uvicorn --factory examples.orders.api:command_app --port 8080 --workers 4

(`python -m examples.orders command --workers 4` does the same). Each request gets a
correlation id (its `X-Correlation-ID`, or a new one, echoed in the response): the events
a command stores carry it, through the outbox and the bus, to every handler's
`ctx.envelope.correlation_id`. Each app documents itself at `/docs` (OpenAPI:
`/openapi.json`) and answers `/healthz` and `/readyz` (the store is reachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from uvicorn.supervisors import Multiprocess

from eventbus.cqrs import CommandBus, DomainError, NotFound, QueryBus
from eventbus.errors import ConcurrencyError, ConfigurationError
from eventbus.fastapi import CorrelationIdMiddleware
from eventbus.sourcing import Database, EventStore, open_store

from .commands import (
    CreateOrder,
    DeliverOrder,
    Delivery,
    OrderResult,
    Payment,
    PayOrder,
    Shipment,
    ShipOrder,
    build_commands,
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
from .settings import OrdersSettings, load_orders_settings, open_database

# --- what the APIs answer ---------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str
    message: str


class OrderView(BaseModel):
    order_id: str
    customer_id: str
    status: str
    total_cents: int
    paid_cents: int
    carrier: str | None
    tracking_number: str | None
    placed_at: str


class CustomerRow(BaseModel):
    customer_id: str
    total_orders: int
    total_spent_cents: int


class CustomerSummary(CustomerRow):
    recent_orders: list[OrderView]


class Mail(BaseModel):
    event_id: str
    order_id: str
    recipient: str
    subject: str
    body: str


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _answer_errors(app: FastAPI, invalid: str) -> None:
    """Every error as `{"error": code, "message": ...}`: domain errors by their code, a
    body or parameter that does not validate as `invalid`, unknown routes too."""

    @app.exception_handler(DomainError)
    async def domain(request: Request, exc: DomainError) -> JSONResponse:
        if isinstance(exc, NotFound):
            return _error(404, exc.code, str(exc))
        return _error(409 if exc.code == "invalid_transition" else 422, exc.code, str(exc))

    @app.exception_handler(ConcurrencyError)
    async def conflict(request: Request, exc: ConcurrencyError) -> JSONResponse:
        return _error(409, "concurrency_conflict", str(exc))

    @app.exception_handler(ValidationError)
    async def invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        return _error(422, invalid, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "bad_json", "the body is not valid JSON")
        message = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in errors
        )
        return _error(422, invalid, message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "no_route", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


def _probes(app: FastAPI, check: Callable[[Request], Awaitable[object]]) -> None:
    """/healthz (the process answers) and /readyz (`check` passes: the store answers)."""

    @app.get("/healthz", tags=["health"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"], summary="Readiness: the store answers")
    async def readyz(request: Request) -> JSONResponse:
        try:
            await check(request)
        except Exception as exc:
            return JSONResponse({"ok": False, "reasons": [repr(exc)]}, status_code=503)
        return JSONResponse({"ok": True, "reasons": []})


@contextlib.asynccontextmanager
async def _opened(settings: OrdersSettings, store: EventStore | None) -> AsyncIterator[EventStore]:
    """`store` if the caller owns one, else a store of our own for the app's lifetime."""
    if store is not None:
        yield store
        return
    own = open_store(settings.store_url)
    await own.open()
    try:
        yield own
    finally:
        await own.close()


# --- the command service ------------------------------------------------------------------


def _commands(request: Request) -> CommandBus:
    commands: CommandBus = request.state.commands
    return commands


Commands = Annotated[CommandBus, Depends(_commands)]
#: an order or customer id in a path
Ident = Annotated[str, Path(pattern=r"^[\w-]+$", max_length=100)]


def command_app(
    settings: OrdersSettings | None = None, *, store: EventStore | None = None
) -> FastAPI:
    """The command API. Without `store` it opens one from `EVENTBUS_STORE_URL` for its
    lifetime (what each uvicorn worker process does)."""
    settings = settings or load_orders_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        use_stream(settings.stream)
        async with _opened(settings, store) as opened:
            repository = order_repository(opened, snapshot_every=settings.snapshot_every)
            yield {"commands": build_commands(repository), "store": opened}

    app = FastAPI(
        title="Orders: commands",
        summary="Place orders and move them along: created, paid, shipped, delivered.",
        lifespan=lifespan,
    )
    app.add_middleware(CorrelationIdMiddleware)
    _answer_errors(app, "invalid_command")

    async def store_answers(request: Request) -> None:
        await request.state.store.last_position()

    _probes(app, store_answers)

    @app.post("/orders", status_code=201, responses=_errors(400, 409, 422), tags=["orders"])
    async def create(command: CreateOrder, commands: Commands) -> OrderResult:
        """Place an order (`order_id` is made up unless given)."""
        result: OrderResult = await commands.dispatch(command)
        return result

    @app.post("/orders/{order_id}/pay", responses=_errors(404, 409, 422), tags=["orders"])
    async def pay(order_id: Ident, payment: Payment, commands: Commands) -> OrderResult:
        """Pay an order: the amount must be its total."""
        command = PayOrder.model_validate({**payment.model_dump(), "order_id": order_id})
        result: OrderResult = await commands.dispatch(command)
        return result

    @app.post("/orders/{order_id}/ship", responses=_errors(404, 409, 422), tags=["orders"])
    async def ship(
        order_id: Ident, commands: Commands, shipment: Shipment | None = None
    ) -> OrderResult:
        """Ship a paid order."""
        body = (shipment or Shipment()).model_dump()
        result: OrderResult = await commands.dispatch(
            ShipOrder.model_validate({**body, "order_id": order_id})
        )
        return result

    @app.post("/orders/{order_id}/deliver", responses=_errors(404, 409, 422), tags=["orders"])
    async def deliver(
        order_id: Ident, commands: Commands, delivery: Delivery | None = None
    ) -> OrderResult:
        """Record that a shipped order arrived."""
        body = (delivery or Delivery()).model_dump()
        result: OrderResult = await commands.dispatch(
            DeliverOrder.model_validate({**body, "order_id": order_id})
        )
        return result

    return app


# --- the query service --------------------------------------------------------------------


def _queries(request: Request) -> QueryBus:
    queries: QueryBus = request.state.queries
    return queries


Queries = Annotated[QueryBus, Depends(_queries)]


def query_app(settings: OrdersSettings | None = None, *, db: Database | None = None) -> FastAPI:
    """The query API over the read models. Without `db` it opens the store of
    `EVENTBUS_STORE_URL` (which holds the read models) for its lifetime."""
    settings = settings or load_orders_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            database = db
            if database is None:
                database = await open_database(
                    await stack.enter_async_context(_opened(settings, None))
                )
            for projection in PROJECTIONS:
                await projection.setup(database)
            yield {"queries": build_queries(database), "db": database}

    app = FastAPI(
        title="Orders: queries",
        summary="The read models: customers, orders and the e-mails sent.",
        lifespan=lifespan,
    )
    app.add_middleware(CorrelationIdMiddleware)
    _answer_errors(app, "invalid_query")

    async def db_answers(request: Request) -> None:
        async with request.state.db.transaction() as tx:
            await tx.fetchone("SELECT 1")

    _probes(app, db_answers)

    @app.get("/customers", tags=["customers"])
    async def customers(queries: Queries) -> list[CustomerRow]:
        """The customers who spent most, first."""
        rows: list[CustomerRow] = await queries.ask(ListCustomers(limit=1000))
        return rows

    @app.get("/customers/{customer_id}", responses=_errors(404), tags=["customers"])
    async def customer(customer_id: Ident, queries: Queries) -> CustomerSummary:
        """A customer's totals and latest orders."""
        summary: CustomerSummary = await queries.ask(GetCustomerSummary(customer_id=customer_id))
        return summary

    @app.get("/orders/{order_id}", responses=_errors(404), tags=["orders"])
    async def order(order_id: Ident, queries: Queries) -> OrderView:
        """An order as the read model has it."""
        view: OrderView = await queries.ask(GetOrder(order_id=order_id))
        return view

    @app.get("/notifications", tags=["notifications"])
    async def mails(queries: Queries) -> list[Mail]:
        """Every e-mail the notification service sent."""
        sent: list[Mail] = await queries.ask(ListNotifications(limit=100_000))
        return sent

    @app.get("/notifications/{order_id}", tags=["notifications"])
    async def order_mails(order_id: Ident, queries: Queries) -> list[Mail]:
        """The e-mails about one order."""
        sent: list[Mail] = await queries.ask(ListNotifications(order_id=order_id, limit=100_000))
        return sent

    return app


# --- serving --------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (0: a free port) for uvicorn to serve on.

    Made with `IPPROTO_TCP`: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    connections accepted from such a socket, and uvicorn's own `bind_socket` makes one
    with protocol 0, which costs keep-alive clients a delayed ACK (~40 ms) per request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn in a loop it shares: no signal handlers of its own (the process's stop the
    services), and `up` is set once start-up finished, well or not."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.up.set()


class HttpServer:
    """An app on a uvicorn server in this event loop, lifespan on; port 0: a free port."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="on", log_level="warning", access_log=False)
        server = self._server = _Server(config)
        task = self._task = asyncio.create_task(server.serve(sockets=[sock]))
        up = asyncio.create_task(server.up.wait())
        await asyncio.wait({task, up}, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if not server.started:
            await self.stop()
            raise RuntimeError(f"{self.app.title} did not start on port {self.port} (see the log)")

    async def stop(self) -> None:
        """Stop accepting, finish the requests in progress, run the app's shutdown."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None


def serve_workers(factory: str, host: str, port: int, workers: int, *, announce: str) -> None:
    """Serve the app that `factory` ("module:function") makes in `workers` uvicorn worker
    processes sharing one socket (what `uvicorn --factory ... --workers N` does); prints
    `announce` once the socket listens. Returns after SIGTERM/SIGINT stopped them."""
    config = uvicorn.Config(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    sock = listen(host, port)
    print(announce, flush=True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
