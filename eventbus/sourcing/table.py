"""The SQL tables of an event store, shared by the SQLite and PostgreSQL backends."""

from __future__ import annotations

from .database import Row
from .records import StoredEvent
from .store import decode_headers


def event_store_schema(integer: str, blob: str) -> tuple[str, ...]:
    """CREATE statements; `integer`/`blob`: the backend's position and bytes types."""
    return (
        f"""CREATE TABLE IF NOT EXISTS events (
        position {integer} PRIMARY KEY,
        stream_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        data {blob} NOT NULL,
        stream TEXT NOT NULL,
        key TEXT,
        time TEXT NOT NULL,
        correlation_id TEXT,
        causation_id TEXT,
        headers TEXT NOT NULL,
        UNIQUE (stream_id, version)
    )""",
        f"""CREATE TABLE IF NOT EXISTS snapshots (
        stream_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        state {blob} NOT NULL,
        schema_version INTEGER NOT NULL,
        time TEXT NOT NULL
    )""",
        f"CREATE TABLE IF NOT EXISTS outbox (position {integer} PRIMARY KEY)",
        # outbox events the relay parked as unpublishable (eventbus.sourcing.outbox); a
        # table of its own, so stores created before it only gain a table
        f"""CREATE TABLE IF NOT EXISTS outbox_failed (
        position {integer} PRIMARY KEY,
        reason TEXT NOT NULL,
        failed_at TEXT NOT NULL
    )""",
    )


COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, data, stream, key, "
    "time, correlation_id, causation_id, headers"
)
#: the same columns, qualified for a join on `events e`
E_COLUMNS = ", ".join("e." + c.strip() for c in COLUMNS.split(","))


def rows_to_events(rows: list[Row]) -> list[StoredEvent]:
    """Rows of `COLUMNS` -> events (a replay runs through here: kept to one comprehension)."""
    return [
        StoredEvent(
            p, s, v, i, t, sv, d if type(d) is bytes else bytes(d), st, k, tm, c, ca,
            {} if h == "{}" else decode_headers(h),
        )
        for (p, s, v, i, t, sv, d, st, k, tm, c, ca, h) in rows
    ]  # fmt: skip
