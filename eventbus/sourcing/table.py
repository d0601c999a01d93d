"""The SQL of an event store, written once for the SQLite and PostgreSQL backends: the
tables, the statements (with `?` placeholders; PostgreSQL converts them with
`postgres.to_pyformat`) and the decoding of rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .database import Row
from .inbox import SCHEMA as INBOX_SCHEMA
from .records import NewEvent, Snapshot, StoredEvent
from .store import check_version, decode_headers, encode_headers


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
        # the inbox of idempotent consumers (eventbus.sourcing.inbox): transactional
        # handlers record the events they handled here, in their transaction
        *INBOX_SCHEMA,
    )


COLUMNS = (
    "position, stream_id, version, event_id, type, schema_version, data, stream, key, "
    "time, correlation_id, causation_id, headers"
)
#: the same columns, qualified for a join on `events e`
E_COLUMNS = ", ".join("e." + c.strip() for c in COLUMNS.split(","))


#: the statements both backends run (`?` placeholders)
INSERT_EVENT = f"INSERT INTO events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_OUTBOX = "INSERT INTO outbox (position) VALUES (?)"
STREAM_VERSION = "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = ?"
#: what an append numbers its events after: (the stream's version, the last position)
APPEND_HEAD = (
    "SELECT coalesce(max(version), 0), (SELECT coalesce(max(position), 0) FROM events) "
    "FROM events WHERE stream_id = ?"
)
LAST_POSITION = "SELECT coalesce(max(position), 0) FROM events"
READ_STREAM = (
    f"SELECT {COLUMNS} FROM events WHERE stream_id = ? AND version >= ? AND version <= ? "
    "ORDER BY version"
)
READ_ALL = f"SELECT {COLUMNS} FROM events WHERE position >= ? ORDER BY position LIMIT ?"
SAVE_SNAPSHOT = (
    "INSERT INTO snapshots (stream_id, version, state, schema_version, time) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
    "version = excluded.version, state = excluded.state, "
    "schema_version = excluded.schema_version, time = excluded.time "
    "WHERE excluded.version >= snapshots.version"
)
LOAD_SNAPSHOT = "SELECT version, state, schema_version, time FROM snapshots WHERE stream_id = ?"
OUTBOX_PENDING = (
    f"SELECT {E_COLUMNS} FROM outbox o JOIN events e ON e.position = o.position "
    "ORDER BY o.position LIMIT ?"
)
OUTBOX_SENT = "DELETE FROM outbox WHERE position = ?"
#: the highest version a stream can reach (PostgreSQL INTEGER), for open-ended reads
MAX_VERSION = 2**31 - 1


def event_row(e: StoredEvent) -> tuple[object, ...]:
    """One event as the parameters of `INSERT_EVENT`."""
    return (
        e.position, e.stream_id, e.version, e.id, e.type, e.schema_version, e.data, e.stream,
        e.key, e.time, e.correlation_id, e.causation_id, encode_headers(e.headers),
    )  # fmt: skip


def numbered(
    stream_id: str,
    events: Sequence[NewEvent],
    expected_version: int | None,
    current: int,
    last: int,
) -> list[StoredEvent]:
    """`events` as stored after version `current` of the stream and global position
    `last`; `ConcurrencyError` unless the stream is at `expected_version` (None: any)."""
    check_version(stream_id, current, expected_version)
    return [
        StoredEvent.of(new, stream_id, current + i, last + i)
        for i, new in enumerate(events, start=1)
    ]


def snapshot_row(snapshot: Snapshot) -> tuple[object, ...]:
    """A snapshot as the parameters of `SAVE_SNAPSHOT`."""
    return (
        snapshot.stream_id, snapshot.version, snapshot.state, snapshot.schema_version,
        snapshot.time,
    )  # fmt: skip


def row_to_snapshot(stream_id: str, row: Row | None) -> Snapshot | None:
    """A `LOAD_SNAPSHOT` row -> the snapshot (None: there is none)."""
    if row is None:
        return None
    return Snapshot(stream_id, row[0], bytes(row[1]), row[2], row[3])


def rows_to_events(rows: Iterable[Row]) -> list[StoredEvent]:
    """Rows of `COLUMNS` -> events (a replay runs through here: kept to one comprehension).
    `rows` may be a cursor: each row is then freed as soon as its event is made."""
    return [
        StoredEvent(
            p, s, v, i, t, sv, d if type(d) is bytes else bytes(d), st, k, tm, c, ca,
            {} if h == "{}" else decode_headers(h),
        )
        for (p, s, v, i, t, sv, d, st, k, tm, c, ca, h) in rows
    ]  # fmt: skip
