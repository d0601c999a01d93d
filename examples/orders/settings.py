"""The order system's settings (environment variables; see `services`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from eventbus.errors import ConfigurationError
from eventbus.settings import format_validation_error
from eventbus.sourcing import Database, EventStore


class OrdersSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERS_", extra="ignore", populate_by_name=True)

    store_url: str = Field(
        default="sqlite:///./orders.db",
        validation_alias=AliasChoices("EVENTBUS_STORE_URL", "ORDERS_STORE_URL"),
    )
    host: str = "127.0.0.1"
    command_port: int = 8080
    query_port: int = 8081
    #: uvicorn worker processes of the command or query service run alone
    workers: int = Field(default=1, ge=1)
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
