"""The store: asyncpg, versioned migrations, TimescaleDB hypertables or native partitions (callers can't tell)."""

from emergency.store._store import (
    CommitResult,
    DeclaredLoss,
    IngestBatch,
    LinkEvent,
    Received,
    Rejection,
    Settled,
    SettledRecord,
    Store,
    StoreError,
    Watermark,
    from_us,
    to_us,
)

__all__ = [
    "CommitResult",
    "DeclaredLoss",
    "IngestBatch",
    "LinkEvent",
    "Received",
    "Rejection",
    "Settled",
    "SettledRecord",
    "Store",
    "StoreError",
    "Watermark",
    "from_us",
    "to_us",
]
