"""Password hashing: argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile: 64 MiB, t=3, p=4).

Hashing is deliberately slow and memory-hungry; callers on an event loop run it in a thread and bound how many run
at once (console/_auth.py)."""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher(type=Type.ID)
# Verified against when the username is unknown, so that a wrong username costs as long as a wrong password.
DUMMY_HASH = _HASHER.hash("not a password: unknown users are checked against this")
MIN_PASSWORD_LENGTH = 10


class WeakPassword(ValueError):
    pass


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string, `$argon2id$v=19$m=...`) of a password of at least 10 characters."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether `password` matches; False for a malformed hash too (never raises on bad input)."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's; rehash it at the next login."""
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True
