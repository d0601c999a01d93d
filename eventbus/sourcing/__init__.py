"""Event sourcing: aggregates, event stores (memory, SQLite, PostgreSQL), snapshots,
upcasting, the transactional outbox and its relay, the inbox, projections, and
transactional handlers (inbox, writes and outbox in one transaction).

The PostgreSQL backend is imported on demand (`open_store("postgresql://...")` or
`eventbus.sourcing.postgres`), so psycopg is only needed when it is used.
"""

from .aggregate import Aggregate, applies
from .codec import EventCodec, schema_version
from .database import Database, Transaction, create_schema, dump_tables
from .factory import open_store
from .inbox import Inbox
from .memory import MemoryEventStore
from .outbox import OutboxRelay, ParkedEvent, is_permanent
from .projection import EventMeta, FailedEvent, Projection, ProjectionConflict
from .records import NewEvent, Snapshot, StoredEvent
from .repository import Repository
from .sqlite import SqliteDatabase, SqliteEventStore
from .store import ANY_VERSION, NO_STREAM, EventStore
from .transactional import transactional
from .upcasting import Upcasters

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "Aggregate",
    "Database",
    "EventCodec",
    "EventMeta",
    "EventStore",
    "FailedEvent",
    "Inbox",
    "MemoryEventStore",
    "NewEvent",
    "OutboxRelay",
    "ParkedEvent",
    "Projection",
    "ProjectionConflict",
    "Repository",
    "Snapshot",
    "SqliteDatabase",
    "SqliteEventStore",
    "StoredEvent",
    "Transaction",
    "Upcasters",
    "applies",
    "create_schema",
    "dump_tables",
    "is_permanent",
    "open_store",
    "schema_version",
    "transactional",
]
