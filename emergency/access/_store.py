"""Users, sessions, login failures and the audit log on the store's pool (schema: migration 3, `_migrations.py`).

Every method raises `StoreError` (never asyncpg's errors). Times are µs since the epoch, as everywhere else."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from emergency.access._policy import SessionTimes
from emergency.access._roles import Role
from emergency.store import Store, StoreError, from_us, to_us
from emergency.store._store import DB_ERRORS

_TRANSIENT = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    OSError,
)
AUDIT_RESULTS = ("allowed", "denied", "failed")


class UserExists(StoreError):
    def __init__(self, username: str) -> None:
        super().__init__(f"user {username} already exists", retryable=False)


class UnknownUser(StoreError):
    def __init__(self, username: str) -> None:
        super().__init__(f"no user {username}", retryable=False)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: Role
    password_hash: str
    disabled: bool
    created_at: int

    def as_json(self) -> dict[str, Any]:
        """What an administrator sees: never the hash."""
        return {"username": self.username, "role": self.role.value, "disabled": self.disabled,
                "created_at": self.created_at}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session and the user holding it, as found by its token digest."""

    id: int
    user: User
    times: SessionTimes


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit log: who (and in which role) did what to which encounter or unit, when, with what
    result, from where."""

    action: str
    result: str = "allowed"
    username: str | None = None
    role: str | None = None
    encounter_id: int | None = None
    unit: str | None = None
    address: str | None = None
    detail: Any = None


@contextlib.asynccontextmanager
async def _errors(what: str) -> AsyncIterator[None]:
    try:
        yield
    except StoreError:
        raise
    except _TRANSIENT as exc:
        raise StoreError(f"{what}: {exc}", retryable=True) from exc
    except DB_ERRORS as exc:
        raise StoreError(f"{what}: {exc}", retryable=False) from exc


def _user(row: asyncpg.Record, prefix: str = "") -> User:
    return User(
        id=row[prefix + "id"],
        username=row["username"],
        role=Role(row["role"]),
        password_hash=row["password_hash"],
        disabled=row["disabled"],
        created_at=to_us(row[prefix + "created_at"]),
    )


class AccessStore:
    """Accounts, sessions and the audit log. Shares the telemetry store's pool."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def _pool(self) -> asyncpg.Pool:
        return self._store.pool

    # -- users -------------------------------------------------------------------------------------------------

    async def add_user(self, username: str, role: Role, password_hash: str) -> User:
        async with _errors("users"):
            try:
                row = await self._pool.fetchrow(
                    "INSERT INTO users (username, role, password_hash) VALUES ($1, $2, $3) RETURNING *",
                    username, role.value, password_hash,
                )  # fmt: skip
            except asyncpg.UniqueViolationError as exc:
                raise UserExists(username) from exc
        assert row is not None
        return _user(row)

    async def put_user(self, username: str, role: Role, password_hash: str) -> User:
        """Create the user, or give an existing one this role and password and enable it (the demo's logins)."""
        async with _errors("users"):
            row = await self._pool.fetchrow(
                """
                INSERT INTO users (username, role, password_hash) VALUES ($1, $2, $3)
                ON CONFLICT (username) DO UPDATE
                SET role = excluded.role, password_hash = excluded.password_hash, disabled = false, updated_at = now()
                RETURNING *
                """,
                username, role.value, password_hash,
            )  # fmt: skip
        assert row is not None
        return _user(row)

    async def user(self, username: str) -> User | None:
        async with _errors("users"):
            row = await self._pool.fetchrow("SELECT * FROM users WHERE username = $1", username)
        return None if row is None else _user(row)

    async def users(self) -> list[User]:
        async with _errors("users"):
            rows = await self._pool.fetch("SELECT * FROM users ORDER BY username")
        return [_user(r) for r in rows]

    async def update_user(
        self,
        username: str,
        *,
        role: Role | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        """Change what is given; a new role, password or disabling also revokes the user's sessions (atomically)."""
        async with _errors("users"), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                UPDATE users SET role = coalesce($2, role), password_hash = coalesce($3, password_hash),
                                 disabled = coalesce($4, disabled), updated_at = now()
                WHERE username = $1 RETURNING *
                """,
                username, role.value if role else None, password_hash, disabled,
            )  # fmt: skip
            if row is None:
                raise UnknownUser(username)
            if role is not None or password_hash is not None or disabled:
                await conn.execute(
                    "UPDATE sessions SET revoked_at = now(), revoked_reason = 'account changed'"
                    " WHERE user_id = $1 AND revoked_at IS NULL",
                    row["id"],
                )
        return _user(row)

    async def rehash(self, user_id: int, password_hash: str) -> None:
        async with _errors("users"):
            await self._pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash)

    # -- sessions ----------------------------------------------------------------------------------------------

    async def open_session(self, user_id: int, digest: bytes, now: int, address: str | None) -> int:
        async with _errors("sessions"):
            session_id: int = await self._pool.fetchval(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, address)"
                " VALUES ($1, $2, $3, $3, $4) RETURNING id",
                digest, user_id, from_us(now), address,
            )  # fmt: skip
        return session_id

    async def session(self, digest: bytes) -> SessionRecord | None:
        async with _errors("sessions"):
            row = await self._pool.fetchrow(
                """
                SELECT s.id AS session_id, s.created_at AS session_created_at, s.last_seen_at, s.revoked_at,
                       u.id, u.username, u.role, u.password_hash, u.disabled, u.created_at
                FROM sessions s JOIN users u ON u.id = s.user_id
                WHERE s.token_hash = $1
                """,
                digest,
            )
        if row is None:
            return None
        times = SessionTimes(
            created_at=to_us(row["session_created_at"]),
            last_seen_at=to_us(row["last_seen_at"]),
            revoked_at=None if row["revoked_at"] is None else to_us(row["revoked_at"]),
        )
        return SessionRecord(row["session_id"], _user(row), times)

    async def live_sessions(self, session_ids: Sequence[int]) -> dict[int, SessionTimes]:
        """The given sessions that are not revoked and whose user is enabled, with their times."""
        async with _errors("sessions"):
            rows = await self._pool.fetch(
                """
                SELECT s.id, s.created_at, s.last_seen_at FROM sessions s JOIN users u ON u.id = s.user_id
                WHERE s.id = ANY($1::bigint[]) AND s.revoked_at IS NULL AND NOT u.disabled
                """,
                list(session_ids),
            )
        return {r["id"]: SessionTimes(to_us(r["created_at"]), to_us(r["last_seen_at"]), None) for r in rows}

    async def touch_session(self, session_id: int, now: int) -> None:
        async with _errors("sessions"):
            await self._pool.execute(
                "UPDATE sessions SET last_seen_at = greatest(last_seen_at, $2) WHERE id = $1", session_id, from_us(now)
            )

    async def revoke_session(self, session_id: int, reason: str) -> None:
        async with _errors("sessions"):
            await self._pool.execute(
                "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
                session_id, reason,
            )  # fmt: skip

    async def revoke_user_sessions(self, username: str, reason: str) -> list[int]:
        """Revoke every open session of the user; returns their ids (to close their websockets)."""
        async with _errors("sessions"):
            rows = await self._pool.fetch(
                """
                UPDATE sessions s SET revoked_at = now(), revoked_reason = $2 FROM users u
                WHERE u.id = s.user_id AND u.username = $1 AND s.revoked_at IS NULL RETURNING s.id
                """,
                username, reason,
            )  # fmt: skip
        return [r["id"] for r in rows]

    # -- login failures ----------------------------------------------------------------------------------------

    async def login_failures(self, username: str, address: str, since: int) -> tuple[list[int], list[int]]:
        """Failure times (ascending) since `since` for the username and for the client address."""
        async with _errors("login failures"):
            rows = await self._pool.fetch(
                "SELECT at, username = $1 AS same_user, address = $2 AS same_address FROM login_failures"
                " WHERE at >= $3 AND (username = $1 OR address = $2) ORDER BY at",
                username, address, from_us(since),
            )  # fmt: skip
        return [to_us(r["at"]) for r in rows if r["same_user"]], [to_us(r["at"]) for r in rows if r["same_address"]]

    async def record_login_failure(self, username: str, address: str, now: int, *, forget_before: int) -> None:
        async with _errors("login failures"), self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM login_failures WHERE at < $1", from_us(forget_before))
            await conn.execute(
                "INSERT INTO login_failures (at, username, address) VALUES ($1, $2, $3)",
                from_us(now),
                username,
                address,
            )

    async def clear_login_failures(self, username: str) -> None:
        """After a successful login the username's count starts afresh (the address's does not)."""
        async with _errors("login failures"):
            await self._pool.execute("DELETE FROM login_failures WHERE username = $1", username)

    # -- audit -------------------------------------------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> None:
        async with _errors("audit log"):
            await self._pool.execute(
                "INSERT INTO audit_log (username, role, action, encounter_id, unit, result, address, detail)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
                entry.username, entry.role, entry.action, entry.encounter_id, entry.unit, entry.result,
                entry.address, json.dumps(entry.detail if entry.detail is not None else {}, default=str),
            )  # fmt: skip

    async def query_audit(
        self,
        *,
        username: str | None = None,
        encounter_id: int | None = None,
        action: str | None = None,
        result: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit lines matching every given filter, newest first."""
        async with _errors("audit log"):
            rows = await self._pool.fetch(
                """
                SELECT id, at, username, role, action, encounter_id, unit, result, address, detail FROM audit_log
                WHERE ($1::text IS NULL OR username = $1) AND ($2::bigint IS NULL OR encounter_id = $2)
                  AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR result = $4)
                  AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::timestamptz IS NULL OR at < $6)
                ORDER BY at DESC, id DESC LIMIT $7
                """,
                username, encounter_id, action, result,
                None if since is None else from_us(since), None if until is None else from_us(until), limit,
            )  # fmt: skip
        return [{**dict(r), "at": to_us(r["at"]), "detail": json.loads(r["detail"])} for r in rows]
