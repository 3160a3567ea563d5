"""Who may use the console: roles and permissions, argon2id passwords, sessions, lockout, and the audit log."""

from emergency.access._passwords import (
    DUMMY_HASH,
    MIN_PASSWORD_LENGTH,
    WeakPassword,
    hash_password,
    needs_rehash,
    verify_password,
)
from emergency.access._policy import (
    SessionEnd,
    SessionTimes,
    locked_until,
    new_session_token,
    normalize_username,
    session_end,
    token_digest,
    valid_username,
)
from emergency.access._roles import ROLE_PERMISSIONS, Permission, Role, permissions_of
from emergency.access._store import (
    AUDIT_RESULTS,
    AccessStore,
    AuditEntry,
    SessionRecord,
    UnknownUser,
    User,
    UserExists,
)

__all__ = [
    "AUDIT_RESULTS",
    "DUMMY_HASH",
    "MIN_PASSWORD_LENGTH",
    "ROLE_PERMISSIONS",
    "AccessStore",
    "AuditEntry",
    "Permission",
    "Role",
    "SessionEnd",
    "SessionRecord",
    "SessionTimes",
    "UnknownUser",
    "User",
    "UserExists",
    "WeakPassword",
    "hash_password",
    "locked_until",
    "needs_rehash",
    "new_session_token",
    "normalize_username",
    "permissions_of",
    "session_end",
    "token_digest",
    "valid_username",
    "verify_password",
]
