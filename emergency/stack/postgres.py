"""A private PostgreSQL cluster under the data directory, run as an unprivileged account when we are root."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncpg

from emergency.stack._process import (
    StackError,
    account,
    check_traversable,
    run_checked,
    start_service,
    stop_service,
)

log = logging.getLogger(__name__)

SUPERUSER = "emergency"
DATABASE = "emergency"


def pg_bindir() -> Path:
    """The PostgreSQL server binaries: EMERGENCY_PG_BINDIR, else pg_config's, else Debian's PostgreSQL 15."""
    override = os.environ.get("EMERGENCY_PG_BINDIR")
    if override:
        return Path(override)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), reverse=True)
    if candidates:
        return candidates[0].parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        return Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    raise StackError("no PostgreSQL server binaries found; set EMERGENCY_PG_BINDIR")


def timescaledb_available(bindir: Path) -> bool:
    """Whether the timescaledb extension is installed for this server (its control file is in the sharedir)."""
    version = bindir.parent.name  # /usr/lib/postgresql/15/bin → 15
    shared = [Path(f"/usr/share/postgresql/{version}/extension"), bindir.parent / "share" / "extension"]
    return any((d / "timescaledb.control").exists() for d in shared)


def wal_compression(bindir: Path) -> str:
    """lz4 when this server was built with it (Debian's is), else pglz ("on"): lz4 compresses the WAL's full-page
    images for less CPU."""
    try:
        configure = subprocess.run(
            [str(bindir / "pg_config"), "--configure"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "on"
    return "lz4" if "--with-lz4" in configure else "on"


def private_dsn(root: Path, port: int) -> str:
    """The DSN of the private cluster under `root` (for processes that join a running stack)."""
    password = (root / "secrets" / "postgres-password").read_text().strip()
    return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{DATABASE}"


class PostgresCluster:
    """`async with PostgresCluster(root, port) as pg:` — initdb on first use, start, create the database, stop."""

    def __init__(self, root: Path, port: int, os_user: str = "nobody", timescaledb: bool | None = None) -> None:
        self.root = root.resolve()
        self.port = port
        self.datadir = self.root / "postgres"
        self.sockdir = self.root / "postgres.run"
        self._bindir = pg_bindir()
        self._timescaledb = timescaledb_available(self._bindir) if timescaledb is None else timescaledb
        self._user = account(os_user) if os.geteuid() == 0 else None
        self._password_file = self.root / "secrets" / "postgres-password"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def dsn(self) -> str:
        return private_dsn(self.root, self.port)

    @property
    def timescaledb(self) -> bool:
        return self._timescaledb

    def _password(self) -> str:
        return self._password_file.read_text().strip()

    async def __aenter__(self) -> Self:
        await self._init()
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop("fast")

    async def _init(self) -> None:
        secrets_dir = self._password_file.parent
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self._password_file.exists():
            self._password_file.touch(mode=0o600)
            self._password_file.write_text(secrets.token_urlsafe(24))
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if self._user:
            check_traversable(self.root, *self._user)
            os.chown(self.sockdir, *self._user)
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._user:
            os.chown(self.datadir, *self._user)
        # initdb reads the password from a file only the cluster's account can read, removed right after.
        pwfile = self.sockdir / ".initdb-pw"
        pwfile.write_text(self._password())
        pwfile.chmod(0o600)
        if self._user:
            os.chown(pwfile, *self._user)
        try:
            log.info("initialising PostgreSQL cluster in %s", self.datadir)
            await run_checked(
                str(self._bindir / "initdb"),
                "-D", str(self.datadir),
                "-U", SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E", "UTF8",
                "--locale=C.UTF-8",
                user=self._user,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)

    def _server_options(self) -> list[str]:
        options = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.sockdir),
            "shared_buffers": "256MB",
            "max_connections": "100",
            "wal_compression": wal_compression(self._bindir),
            # Ingest writes ~7 MB of WAL a second at 500 units: with the default 1 GB a checkpoint was requested
            # every ~90 s, each followed by a burst of full-page images. Bounded instead by time; crash recovery
            # replays at most this much.
            "max_wal_size": "4GB",
            "checkpoint_timeout": "15min",
            "log_min_messages": "warning",
            # Durability is the point: fsync and synchronous_commit stay on (the defaults).
        }
        if self._timescaledb:
            options["shared_preload_libraries"] = "timescaledb"
            options["timescaledb.telemetry_level"] = "off"
        return [arg for key, value in options.items() for arg in ("-c", f"{key}={value}")]

    async def start(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        stale_pid = self.datadir / "postmaster.pid"
        if stale_pid.exists():
            # A cluster killed without cleanup leaves its pid file; postgres checks whether that pid is alive.
            log.info("found %s from an earlier run", stale_pid)
        self._proc = await start_service(
            str(self._bindir / "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            *self._server_options(),
            log_path=self.root / "logs" / "postgres.log",
            user=self._user,
            # Orphaned, it shuts down fast: committed work is already durable.
            parent_death_signal=signal.SIGINT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(60):
                await self._wait_ready()
        except TimeoutError:
            await self.stop("immediate")
            raise StackError(f"PostgreSQL did not start; see {self.root / 'logs' / 'postgres.log'}") from None
        log.info("PostgreSQL ready on 127.0.0.1:%d%s", self.port, " with TimescaleDB" if self._timescaledb else "")

    async def _wait_ready(self) -> None:
        while True:
            if self._proc is not None and self._proc.returncode is not None:
                raise StackError(
                    f"PostgreSQL exited with {self._proc.returncode}; see {self.root / 'logs' / 'postgres.log'}"
                )
            try:
                conn = await asyncpg.connect(
                    user=SUPERUSER, password=self._password(), host="127.0.0.1", port=self.port, database="postgres"
                )
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresError):
                await asyncio.sleep(0.2)
                continue
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
                    await conn.execute(f"CREATE DATABASE {DATABASE}")
            finally:
                await conn.close()
            return

    async def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (SIGINT, clean) or "immediate" (SIGQUIT, crash-like, recovers at next start)."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        await stop_service(self._proc, sig, grace_s=60)
        self._proc = None
