"""`open_store(url)`: an event store chosen by URL, the one place that knows the backends
(the abstraction in `store.py` imports none of them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError
from ..settings import redact_url
from .store import EventStore


def open_store(url: str) -> EventStore:
    """An unopened store for `url`: `memory://`, `sqlite:///path/to/file.db`
    (`sqlite://` alone = a private in-memory database), `postgresql://user:pw@host/db`
    (options: `postgres_options`)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from .memory import MemoryEventStore

        return MemoryEventStore()
    if scheme == "sqlite":
        from .sqlite import SqliteEventStore

        return SqliteEventStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresEventStore

        dsn, options = postgres_options(url)
        return PostgresEventStore(dsn, **options)
    raise ConfigurationError(
        f"EVENTBUS_STORE_URL {redact_url(url)!r}: unknown scheme {scheme!r}; use memory://, "
        "sqlite:///path or postgresql://user:password@host/database"
    )


#: the query parameters of a PostgreSQL store URL that are ours, not libpq's, and their types
POSTGRES_OPTIONS: dict[str, type[int] | type[float]] = {
    "pool_size": int,
    "pool_min_size": int,
    "pool_timeout": float,
}


def postgres_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split the query parameters that configure the store (ours, not libpq's) off a
    PostgreSQL URL: `schema=` (the store's PostgreSQL schema), `pool_size=` (most
    connections open at once, default 4), `pool_min_size=` (kept open while idle,
    default 1), `pool_timeout=` (seconds to wait for a free connection, default 30).
    Returns the URL for libpq and the keyword arguments of `PostgresEventStore`."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, Any] = {}
    rest: list[tuple[str, str]] = []
    for key, value in query:
        if key == "schema":
            options["schema"] = value
        elif key in POSTGRES_OPTIONS:
            try:
                options[key] = POSTGRES_OPTIONS[key](value)
            except ValueError:
                raise ConfigurationError(
                    f"EVENTBUS_STORE_URL {redact_url(url)!r}: {key}={value!r} is not a "
                    f"{POSTGRES_OPTIONS[key].__name__}"
                ) from None
        else:
            rest.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), options


def sqlite_path(url: str) -> str:
    """`sqlite:///tmp/x.db` -> `/tmp/x.db`; `sqlite:///./x.db` -> `./x.db`;
    `sqlite://` -> a private in-memory database."""
    rest = url.split("://", 1)[1]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    path = rest[1:] if rest.startswith("/") and rest[1:2] in (".",) else rest
    return path
