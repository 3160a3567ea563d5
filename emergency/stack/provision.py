"""Broker accounts: devices (username = unit id) and the center's internal accounts.

Passwords never appear on a command line (where `ps` would show them): plaintext lines go to a private temporary
file that `mosquitto_passwd -U` hashes in place, and only hashed lines are merged into the password file.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from emergency.protocol import UNIT_PATTERN
from emergency.settings import MqttEndpoint
from emergency.stack._process import StackError

GATEWAY_ACCOUNT = "center.gateway"
CONSOLE_ACCOUNT = "center.console"
INTERNAL_ACCOUNTS = (GATEWAY_ACCOUNT, CONSOLE_ACCOUNT)


def _secrets_dir(root: Path) -> Path:
    path = root / "secrets"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _passwd_file(root: Path) -> Path:
    return root / "mosquitto" / "passwd"


def _hash_lines(credentials: dict[str, str]) -> dict[str, str]:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        raise StackError("mosquitto_passwd is not installed (Debian package mosquitto)")
    fd, name = tempfile.mkstemp(prefix="passwd-", dir=None)
    try:
        with os.fdopen(fd, "w") as plain:
            plain.writelines(f"{user}:{password}\n" for user, password in credentials.items())
        subprocess.run([tool, "-U", name], check=True, capture_output=True)
        hashed = Path(name).read_text().splitlines()
    finally:
        os.unlink(name)
    return {line.split(":", 1)[0]: line for line in hashed if ":" in line}


def _write_accounts(root: Path, credentials: dict[str, str]) -> None:
    passwd = _passwd_file(root)
    passwd.parent.mkdir(parents=True, exist_ok=True)
    lines: dict[str, str] = {}
    if passwd.exists():
        lines = {line.split(":", 1)[0]: line for line in passwd.read_text().splitlines() if ":" in line}
    lines.update(_hash_lines(credentials))
    tmp = passwd.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text("".join(f"{line}\n" for line in lines.values()))
    tmp.replace(passwd)


def _signal_broker(root: Path) -> None:
    """Make a running broker re-read its password file and ACL."""
    pid_file = root / "mosquitto" / "mosquitto.pid"
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        pass  # not running: it reads the file when it starts


def ensure_internal_accounts(root: Path) -> None:
    """Create the gateway's and console's broker accounts on first use; keep their passwords thereafter."""
    missing: dict[str, str] = {}
    for account in INTERNAL_ACCOUNTS:
        path = _secrets_dir(root) / f"{account}.password"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(24))
            missing[account] = path.read_text()
    passwd = _passwd_file(root)
    known = passwd.read_text() if passwd.exists() else ""
    for account in INTERNAL_ACCOUNTS:
        if f"{account}:" not in known and account not in missing:
            missing[account] = (_secrets_dir(root) / f"{account}.password").read_text()
    if missing:
        _write_accounts(root, missing)


def internal_endpoint(root: Path, account: str, port: int, host: str = "127.0.0.1") -> MqttEndpoint:
    password = (_secrets_dir(root) / f"{account}.password").read_text().strip()
    return MqttEndpoint(host=host, port=port, username=account, password=password)  # type: ignore[arg-type]


def provision_unit(root: Path, unit: str, password: str | None = None) -> str:
    """Create or replace the broker account of `unit`; returns its password (generated when none is given)."""
    if not UNIT_PATTERN.fullmatch(unit):
        raise StackError(f"unit id {unit!r} must match [A-Za-z0-9_-]{{1,32}}")
    password = password or secrets.token_urlsafe(18)
    if ":" in password or "\n" in password:
        raise StackError("a password may not contain ':' or a line break")
    _write_accounts(root, {unit: password})
    _signal_broker(root)
    return password


def provision_units(root: Path, units: dict[str, str]) -> None:
    """Create or replace many unit accounts at once (one hashing run, one broker reload)."""
    for unit in units:
        if not UNIT_PATTERN.fullmatch(unit):
            raise StackError(f"unit id {unit!r} must match [A-Za-z0-9_-]{{1,32}}")
    _write_accounts(root, units)
    _signal_broker(root)


def provisioned_units(root: Path) -> set[str]:
    """Every unit that may connect: broker accounts (internal accounts excluded) and units with a certificate."""
    units: set[str] = set()
    passwd = _passwd_file(root)
    if passwd.exists():
        for line in passwd.read_text().splitlines():
            name = line.split(":", 1)[0]
            if UNIT_PATTERN.fullmatch(name):
                units.add(name)
    tls = root / "tls"
    if tls.is_dir():
        for cert in tls.glob("device-*.crt"):
            name = cert.name.removeprefix("device-").removesuffix(".crt")
            if UNIT_PATTERN.fullmatch(name):
                units.add(name)
    return units
