"""Pure rules for sessions and login lockout: no I/O, times in µs since the epoch."""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class SessionEnd(enum.StrEnum):
    """Why a session no longer lets its holder in."""

    REVOKED = "revoked"  # logout, an administrator, or the account disabled
    IDLE = "idle"  # nothing done for longer than the idle timeout
    EXPIRED = "expired"  # older than the absolute timeout, however active
    DISABLED = "disabled"  # the account was disabled (its sessions are also revoked)


@dataclass(frozen=True, slots=True)
class SessionTimes:
    created_at: int
    last_seen_at: int
    revoked_at: int | None


def session_end(times: SessionTimes, now: int, *, idle_us: int, absolute_us: int) -> SessionEnd | None:
    """None while the session is good; otherwise why it ended. Revocation wins, then the absolute limit."""
    if times.revoked_at is not None and times.revoked_at <= now:
        return SessionEnd.REVOKED
    if now - times.created_at >= absolute_us:
        return SessionEnd.EXPIRED
    if now - times.last_seen_at >= idle_us:
        return SessionEnd.IDLE
    return None


def locked_until(failures: Sequence[int], *, threshold: int, window_us: int, lockout_us: int) -> int | None:
    """When `threshold` failures (times ascending) fall within one window, the lock lasts `lockout_us` from the
    last of them; returns the latest such end, or None when no run of failures is dense enough."""
    until: int | None = None
    for first, last in zip(failures, failures[threshold - 1 :], strict=False):
        if last - first <= window_us:
            until = max(until or 0, last + lockout_us)
    return until


def normalize_username(username: str) -> str:
    return username.strip().lower()


def valid_username(username: str) -> bool:
    return USERNAME_PATTERN.fullmatch(username) is not None


def new_session_token() -> str:
    """256 random bits, URL-safe: the cookie value. Only its digest is stored."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """SHA-256 of the token: the token is random, so a fast hash suffices and a database leak yields no cookie."""
    return hashlib.sha256(token.encode()).digest()
