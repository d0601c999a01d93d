"""`open_store(url)`: an event store chosen by URL, the one place that knows the backends
(the abstraction in `store.py` imports none of them)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError
from ..settings import redact_url
from .store import EventStore


def open_store(url: str) -> EventStore:
    """An unopened store for `url`: `memory://`, `sqlite:///path/to/file.db`
    (`sqlite://` alone = a private in-memory database), `postgresql://user:pw@host/db`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        from .memory import MemoryEventStore

        return MemoryEventStore()
    if scheme == "sqlite":
        from .sqlite import SqliteEventStore

        return SqliteEventStore(sqlite_path(url))
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresEventStore

        dsn, schema = postgres_schema(url)
        return PostgresEventStore(dsn, schema=schema)
    raise ConfigurationError(
        f"EVENTBUS_STORE_URL {redact_url(url)!r}: unknown scheme {scheme!r}; use memory://, "
        "sqlite:///path or postgresql://user:password@host/database"
    )


def postgres_schema(url: str) -> tuple[str, str | None]:
    """Split the `schema=` query parameter (ours, not libpq's) off a PostgreSQL URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def sqlite_path(url: str) -> str:
    """`sqlite:///tmp/x.db` -> `/tmp/x.db`; `sqlite:///./x.db` -> `./x.db`;
    `sqlite://` -> a private in-memory database."""
    rest = url.split("://", 1)[1]
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    path = rest[1:] if rest.startswith("/") and rest[1:2] in (".",) else rest
    return path
