"""Versioned schema migrations, applied in order at start-up under an advisory lock.

The time-series tables (ecg_frames, vitals, gps_fixes) are TimescaleDB hypertables with compression and retention
policies when the extension is available, and natively range-partitioned tables (daily partitions plus a default
partition) otherwise. Which flavour a database has is decided once, when it is first migrated, and recorded in
`store_meta`; nothing outside this package knows which.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from emergency.settings import StoreSettings

log = logging.getLogger(__name__)

# Arbitrary but fixed: the advisory lock that serialises migrations between processes sharing one database.
_MIGRATION_LOCK = 0x454D_5247


@dataclass(frozen=True, slots=True)
class TimeSeriesTable:
    name: str
    columns: str  # the table's own columns; the common key columns are prepended
    chunk_interval: str  # TimescaleDB chunk size; native partitions are daily whatever this says
    storage: str = ""  # storage parameters of every chunk or partition (`WITH (...)`), set by migrations 4 and 5


# A 12-lead frame of 250 ms is a ~3.1 KB row. Past PostgreSQL's default toast_tuple_target (~2 KB) every row was
# run through pglz (raw int16 samples do not compress) and then moved out of line as two TOAST rows with their
# index entries: about three times the database CPU per frame (decision 29). Rows up to a heap page stay inline.
INLINE_ROWS = "toast_tuple_target = 8160"
# The 12-lead table only ever grows, ~25 GB an hour at 560 units. Autovacuum's insert-triggered runs (PostgreSQL 13+)
# read the newest part of the open chunk again and dirty every page of it to set the visibility map: in a ten-minute
# run a quarter of the time, the stack falling seconds behind (decision 32). Nothing needs them here: no query
# reads these rows index-only, compression or retention rewrites or drops each chunk, and the anti-wraparound vacuum
# (which freezes) still runs when it is due.
NO_INSERT_VACUUM = "autovacuum_vacuum_insert_threshold = -1"

TIME_SERIES_TABLES: tuple[TimeSeriesTable, ...] = (
    TimeSeriesTable(
        "ecg_frames",
        "fs real NOT NULL, leads text[] NOT NULL, lsb_uv real NOT NULL, n integer NOT NULL, data bytea NOT NULL",
        "1 hour",
        storage=f"{INLINE_ROWS}, {NO_INSERT_VACUUM}",
    ),
    TimeSeriesTable(
        "vitals",
        "hr real, sbp real, dbp real, map real, spo2 real, rr real, temp real, etco2 real, nibp_ts timestamptz",
        "1 day",
    ),
    TimeSeriesTable(
        "gps_fixes",
        "lat double precision NOT NULL, lon double precision NOT NULL, speed real, heading real, acc real",
        "1 day",
    ),
)

# Every time-series row starts with these: the message's identity, device time, center receive time.
KEY_COLUMNS = (
    "unit text NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL, rx_ts timestamptz NOT NULL"
)


@dataclass(frozen=True, slots=True)
class MigrationContext:
    timescaledb: bool
    settings: StoreSettings


Migration = Callable[[asyncpg.Connection, MigrationContext], Awaitable[None]]


async def _v1_telemetry(conn: asyncpg.Connection, ctx: MigrationContext) -> None:
    await conn.execute(
        """
        CREATE TABLE units (
            unit text PRIMARY KEY,
            label text,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE device_events (
            unit text NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL,
            ts timestamptz NOT NULL, rx_ts timestamptz NOT NULL,
            kind text NOT NULL, detail jsonb NOT NULL,
            PRIMARY KEY (unit, boot, seq)
        );
        CREATE INDEX device_events_unit_ts ON device_events (unit, ts DESC);
        -- Every rejected message, once per (unit, stream, boot, seq) when those could be read; always when not.
        CREATE TABLE rejected_messages (
            id bigserial PRIMARY KEY,
            rx_ts timestamptz NOT NULL,
            topic text NOT NULL,
            unit text, stream text, boot bigint, seq bigint,
            reason text NOT NULL,
            raw bytea NOT NULL,
            raw_len integer NOT NULL
        );
        CREATE UNIQUE INDEX rejected_messages_key ON rejected_messages (unit, stream, boot, seq)
            WHERE unit IS NOT NULL AND stream IS NOT NULL AND boot IS NOT NULL AND seq IS NOT NULL;
        CREATE INDEX rejected_messages_rx ON rejected_messages (rx_ts);
        -- The end-to-end acknowledgement state: every seq <= upto of (unit, boot, stream) is settled.
        CREATE TABLE ack_watermarks (
            unit text NOT NULL, boot bigint NOT NULL, stream text NOT NULL,
            upto bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (unit, boot, stream)
        );
        -- What the link monitor noticed: silence, resumption, seq gaps that stay open, device-declared losses.
        CREATE TABLE link_events (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL,
            unit text NOT NULL,
            kind text NOT NULL,
            stream text, boot bigint, first_seq bigint, last_seq bigint,
            detail jsonb NOT NULL DEFAULT '{}'
        );
        CREATE INDEX link_events_unit_at ON link_events (unit, at DESC);
        """
    )
    for table in TIME_SERIES_TABLES:
        await _create_time_series(conn, table, ctx)


async def _create_time_series(conn: asyncpg.Connection, table: TimeSeriesTable, ctx: MigrationContext) -> None:
    # The unique key must contain the partitioning column (both for TimescaleDB and for native partitions).
    # A retransmission is byte-identical (protocol v1), so (unit, boot, seq, ts) identifies a message.
    columns = f"{KEY_COLUMNS}, {table.columns}"
    if ctx.timescaledb:
        await conn.execute(f"CREATE TABLE {table.name} ({columns})")
        await conn.execute(
            "SELECT create_hypertable($1::regclass, 'ts', chunk_time_interval => $2::text::interval)",
            table.name,
            table.chunk_interval,
        )
        await conn.execute(f"CREATE UNIQUE INDEX {table.name}_key ON {table.name} (unit, boot, seq, ts)")
        await conn.execute(f"CREATE INDEX {table.name}_unit_ts ON {table.name} (unit, ts DESC)")
        await conn.execute(
            f"ALTER TABLE {table.name} SET (timescaledb.compress, timescaledb.compress_segmentby = 'unit', "
            "timescaledb.compress_orderby = 'ts DESC, boot, seq')"
        )
        await conn.execute(
            "SELECT add_compression_policy($1::regclass, $2::text::interval)",
            table.name,
            f"{ctx.settings.compress_after_days} days",
        )
        await conn.execute(
            "SELECT add_retention_policy($1::regclass, $2::text::interval)",
            table.name,
            f"{ctx.settings.retention_days} days",
        )
    else:
        await conn.execute(f"CREATE TABLE {table.name} ({columns}) PARTITION BY RANGE (ts)")
        await conn.execute(f"CREATE UNIQUE INDEX {table.name}_key ON {table.name} (unit, boot, seq, ts)")
        await conn.execute(f"CREATE INDEX {table.name}_unit_ts ON {table.name} (unit, ts DESC)")
        # Rows whose device time falls outside every daily partition (a skewed clock) land here, never lost.
        await conn.execute(f"CREATE TABLE {table.name}_default PARTITION OF {table.name} DEFAULT")


async def _v2_care(conn: asyncpg.Connection, ctx: MigrationContext) -> None:
    """The clinical loop's records (emergency/care/_model.py). Times are timestamptz; `source` says whose clock."""
    await conn.execute(
        """
        CREATE TABLE incidents (
            id bigserial PRIMARY KEY,
            call_received_at timestamptz NOT NULL,
            priority smallint NOT NULL CHECK (priority BETWEEN 1 AND 4),
            complaint text NOT NULL,
            lat double precision, lon double precision, address text,
            unit text,
            created_by text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            closed_at timestamptz
        );
        -- At most one open incident per unit: patient contact attaches to it.
        CREATE UNIQUE INDEX incidents_open_unit ON incidents (unit) WHERE unit IS NOT NULL AND closed_at IS NULL;
        CREATE TABLE incident_times (
            incident_id bigint NOT NULL REFERENCES incidents,
            name text NOT NULL, at timestamptz NOT NULL, source text NOT NULL, actor text,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (incident_id, name)
        );
        CREATE TABLE encounters (
            id bigserial PRIMARY KEY,
            alias text NOT NULL UNIQUE,
            incident_id bigint NOT NULL REFERENCES incidents,
            unit text NOT NULL,
            status text NOT NULL,
            contact_at timestamptz NOT NULL,
            destination text,
            age smallint, sex text, chief_complaint text,
            acuity text NOT NULL DEFAULT 'low',
            eta_at timestamptz, door_at timestamptz,
            patient_id text, patient_name text,
            last_known_well_at timestamptz, symptom_onset_at timestamptz,
            disposition text, diagnosis text,
            handoff_notes jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        -- One active encounter per unit, and one per incident: a replayed patient_contact never duplicates it.
        CREATE UNIQUE INDEX encounters_active_unit ON encounters (unit) WHERE status IN ('pre_registered', 'arrived');
        CREATE UNIQUE INDEX encounters_incident ON encounters (incident_id);
        CREATE INDEX encounters_patient ON encounters (patient_id) WHERE patient_id IS NOT NULL;
        CREATE TABLE encounter_times (
            encounter_id bigint NOT NULL REFERENCES encounters,
            name text NOT NULL, at timestamptz NOT NULL, source text NOT NULL, actor text,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (encounter_id, name)
        );
        -- Crew findings and treatments, keyed by the device message that carried them (replays are no-ops).
        CREATE TABLE encounter_notes (
            unit text NOT NULL, boot bigint NOT NULL, seq bigint NOT NULL,
            encounter_id bigint NOT NULL REFERENCES encounters,
            at timestamptz NOT NULL,
            kind text NOT NULL,
            text text NOT NULL, code text, value double precision, dose double precision, dose_unit text,
            PRIMARY KEY (unit, boot, seq)
        );
        CREATE INDEX encounter_notes_encounter ON encounter_notes (encounter_id, at);
        CREATE TABLE alerts (
            id bigserial PRIMARY KEY,
            unit text NOT NULL,
            encounter_id bigint REFERENCES encounters,
            kind text NOT NULL, severity text NOT NULL, state text NOT NULL,
            summary text NOT NULL, detail jsonb NOT NULL DEFAULT '{}',
            raised_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,
            delivered_at timestamptz,
            acknowledged_at timestamptz, acknowledged_by text, acknowledged_role text,
            resolved_at timestamptz,
            repeats integer NOT NULL DEFAULT 0,
            escalation integer NOT NULL DEFAULT 0,
            backlog boolean NOT NULL DEFAULT false
        );
        -- No storms: while a condition persists there is exactly one open alert for it.
        CREATE UNIQUE INDEX alerts_open ON alerts (unit, kind) WHERE state <> 'resolved';
        CREATE INDEX alerts_encounter ON alerts (encounter_id);
        CREATE TABLE alert_events (
            id bigserial PRIMARY KEY,
            alert_id bigint NOT NULL REFERENCES alerts,
            at timestamptz NOT NULL,
            event text NOT NULL,
            actor text,
            detail jsonb NOT NULL DEFAULT '{}'
        );
        CREATE INDEX alert_events_alert ON alert_events (alert_id, at);
        CREATE TABLE activations (
            id bigserial PRIMARY KEY,
            encounter_id bigint NOT NULL REFERENCES encounters,
            team text NOT NULL, state text NOT NULL, reason text NOT NULL,
            requested_at timestamptz NOT NULL, requested_by text NOT NULL,
            acknowledged_at timestamptz, acknowledged_by text,
            cancelled_at timestamptz
        );
        CREATE UNIQUE INDEX activations_open ON activations (encounter_id, team) WHERE state <> 'cancelled';
        CREATE TABLE follow_ups (
            id bigserial PRIMARY KEY,
            encounter_id bigint NOT NULL REFERENCES encounters,
            label text NOT NULL,
            due_at timestamptz NOT NULL,
            state text NOT NULL DEFAULT 'due',
            alive boolean, readmitted boolean, mace boolean, notes text,
            recorded_at timestamptz, recorded_by text,
            UNIQUE (encounter_id, label)
        );
        CREATE INDEX follow_ups_due ON follow_ups (due_at) WHERE state = 'due';
        """
    )


async def _v3_access(conn: asyncpg.Connection, ctx: MigrationContext) -> None:
    """Console accounts, their sessions (only a digest of each token), login failures, and the audit log.

    The audit log is append-only in the database itself: a trigger refuses UPDATE, DELETE and TRUNCATE."""
    await conn.execute(
        """
        CREATE TABLE users (
            id bigserial PRIMARY KEY,
            username text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
            role text NOT NULL,
            password_hash text NOT NULL,
            disabled boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE sessions (
            id bigserial PRIMARY KEY,
            token_hash bytea NOT NULL UNIQUE,
            user_id bigint NOT NULL REFERENCES users,
            created_at timestamptz NOT NULL,
            last_seen_at timestamptz NOT NULL,
            revoked_at timestamptz,
            revoked_reason text,
            address text
        );
        CREATE INDEX sessions_open_user ON sessions (user_id) WHERE revoked_at IS NULL;
        CREATE TABLE login_failures (at timestamptz NOT NULL, username text NOT NULL, address text NOT NULL);
        CREATE INDEX login_failures_username ON login_failures (username, at);
        CREATE INDEX login_failures_address ON login_failures (address, at);
        CREATE TABLE audit_log (
            id bigserial PRIMARY KEY,
            at timestamptz NOT NULL DEFAULT clock_timestamp(),
            username text,
            role text,
            action text NOT NULL,
            encounter_id bigint,
            unit text,
            result text NOT NULL CHECK (result IN ('allowed', 'denied', 'failed')),
            address text,
            detail jsonb NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_log_at ON audit_log (at);
        CREATE INDEX audit_log_user ON audit_log (username, at);
        CREATE INDEX audit_log_encounter ON audit_log (encounter_id, at) WHERE encounter_id IS NOT NULL;
        CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
            FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();
        """
    )


async def _set_storage(conn: asyncpg.Connection, ctx: MigrationContext) -> None:
    """The storage parameters of `TIME_SERIES_TABLES`: on the hypertable (TimescaleDB passes them to its chunks,
    present and future) or on each native partition (`Store` creates later ones with them)."""
    for table in TIME_SERIES_TABLES:
        if not table.storage:
            continue
        if ctx.timescaledb:
            await conn.execute(f"ALTER TABLE {table.name} SET ({table.storage})")
            continue
        for partition in await partitions_of(conn, table.name):
            await conn.execute(f"ALTER TABLE {partition} SET ({table.storage})")


async def partitions_of(conn: asyncpg.Connection, table: str) -> list[str]:
    """The names of `table`'s partitions (native partitioning) or chunks (TimescaleDB: schema-qualified)."""
    rows = await conn.fetch(
        "SELECT c.oid::regclass::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    return [row["name"] for row in rows]


MIGRATIONS: tuple[tuple[int, str, Migration], ...] = (
    (1, "telemetry", _v1_telemetry),
    (2, "care", _v2_care),
    (3, "access", _v3_access),
    (4, "inline 12-lead frames", _set_storage),
    # The same storage parameters again, now with NO_INSERT_VACUUM, for databases migrated to 4 before it.
    (5, "12-lead frames not vacuumed for inserts", _set_storage),
)


async def migrate(conn: asyncpg.Connection, settings: StoreSettings) -> bool:
    """Bring the schema up to date; returns whether the database uses TimescaleDB."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS store_meta (key text PRIMARY KEY, value text NOT NULL);
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now()
            );
            """
        )
        flavour = await conn.fetchval("SELECT value FROM store_meta WHERE key = 'flavour'")
        if flavour is None:
            flavour = "timescaledb" if await _enable_timescaledb(conn) else "postgresql"
            await conn.execute("INSERT INTO store_meta VALUES ('flavour', $1)", flavour)
            log.info("new store: time series on %s", flavour)
        ctx = MigrationContext(timescaledb=flavour == "timescaledb", settings=settings)
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, migration in MIGRATIONS:
            if version in applied:
                continue
            log.info("applying migration %d (%s)", version, name)
            await migration(conn, ctx)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
    return ctx.timescaledb


async def _enable_timescaledb(conn: asyncpg.Connection) -> bool:
    available = await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
    if not available:
        return False
    preloaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    if "timescaledb" not in preloaded:
        # Creating the extension without the preload makes the server drop the connection, so ask first.
        log.info("timescaledb is installed but not preloaded by this server; using native partitions")
        return False
    try:
        async with conn.transaction():  # a savepoint: a failed CREATE EXTENSION must not abort the migration
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        # Typically: installed but not in shared_preload_libraries. Plain PostgreSQL still serves.
        log.warning("timescaledb is installed but cannot be enabled (%s); using native partitions", exc)
        return False
    return True
