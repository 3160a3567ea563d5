"""Child processes the stack owns: started in the foreground of our process group, stopped and always reaped."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class StackError(Exception):
    """A stack service could not be set up or started; the message says what to do about it."""


def account(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StackError(f"system account {name!r} does not exist") from None
    return entry.pw_uid, entry.pw_gid


def check_traversable(path: Path, uid: int, gid: int) -> None:
    """Fail clearly when `uid` cannot reach `path` (e.g. a data directory under /root or a 0700 temp dir)."""
    for parent in [*reversed(path.resolve().parents)]:
        st = parent.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise StackError(
                f"{parent} is not traversable by uid {uid}, which must reach {path}; "
                "choose an EMERGENCY_DATA_DIR outside private directories or make the parents world-executable"
            )


async def run_checked(*argv: str, user: tuple[int, int] | None = None, stdin: bytes | None = None) -> str:
    """Run a short command to completion; raise StackError with its output on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        user=user[0] if user else None,
        group=user[1] if user else None,
        extra_groups=[] if user else None,
    )
    out, _ = await proc.communicate(stdin)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise StackError(f"{Path(argv[0]).name} failed ({proc.returncode}): {text.strip()[-2000:]}")
    return text


_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec hook asking Linux to send `sig` to the service when we die, even by SIGKILL.

    The services run in their own session, so a killed test run or CLI would otherwise leave them behind with
    nobody to stop them. The hook runs in the child after the switch to the service account (a change of
    credentials clears the setting, so it must come after); it only calls into libc, resolved here beforehand.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl
            os.kill(os.getpid(), sig)

    return hook


async def start_service(
    *argv: str,
    log_path: Path,
    user: tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
    parent_death_signal: signal.Signals = signal.SIGTERM,
) -> asyncio.subprocess.Process:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        if user:
            os.chown(log_path, *user)
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=[] if user else None,
            env=env,
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent(parent_death_signal),
        )


async def stop_service(
    proc: asyncio.subprocess.Process | None, sig: signal.Signals = signal.SIGTERM, grace_s: float = 30
) -> None:
    """Signal, wait, and SIGKILL on timeout: a stopped service never outlives us."""
    if proc is None or proc.returncode is not None:
        return
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        return
    try:
        async with asyncio.timeout(grace_s):
            await proc.wait()
    except TimeoutError:
        log.warning("pid %d did not stop within %.0f s; killing it", proc.pid, grace_s)
        proc.kill()
        await proc.wait()
