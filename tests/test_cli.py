"""`emergency up` and `emergency unit add` as an operator runs them: one command up, provisioned devices, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import psutil
import pytest_asyncio
from conftest import free_port

from emergency.codec import decode_acks, encode_device_message
from emergency.protocol import Stream, Vitals, device_topic


async def _wait_for(path: Path, proc: asyncio.subprocess.Process, within_s: float = 90) -> None:
    deadline = time.monotonic() + within_s
    while not path.exists():
        assert proc.returncode is None, "emergency up exited early"
        assert time.monotonic() < deadline, f"{path} did not appear"
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(loop_scope="session")
async def stack() -> AsyncIterator[tuple[asyncio.subprocess.Process, Path, dict[str, str]]]:
    root = Path(tempfile.mkdtemp(prefix="emergency-cli-"))
    root.chmod(0o755)
    env = {
        **os.environ,
        "EMERGENCY_DATA_DIR": str(root / "data"),
        "EMERGENCY_MQTT_PORT": str(free_port()),
        "EMERGENCY_HTTP_PORT": str(free_port()),
        "EMERGENCY_PG_PORT": str(free_port()),
        "EMERGENCY_MQTT_TLS_PORT": str(free_port()),
        "EMERGENCY_GATEWAY__HTTP_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emergency.cli", "up", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield proc, root / "data", env
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(root, ignore_errors=True)


async def test_up_serves_provisions_and_stops_cleanly(stack) -> None:  # type: ignore[no-untyped-def]
    """`emergency up` writes stack.json when ready, `unit add` provisions a device whose data is stored and acked,
    and SIGTERM stops everything with exit code 0 and no process left behind."""
    proc, data, env = stack
    await _wait_for(data / "stack.json", proc)
    info = json.loads((data / "stack.json").read_text())
    assert (data / "stack.json").stat().st_mode & 0o077 == 0  # it holds the database password

    add = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emergency.cli", "unit", "add", "CLI-1", "--cert", env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await add.communicate(b"s3cret-device-pw\n")
    assert add.returncode == 0 and b"CLI-1" in out and b"s3cret" not in out
    assert (data / "tls" / "device-CLI-1.crt").exists() and info["mqtt_tls"]["port"]

    async with aiomqtt.Client(
        info["mqtt"]["host"], info["mqtt"]["port"], username="CLI-1", password="s3cret-device-pw",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as device:  # fmt: skip
        await device.subscribe(device_topic("CLI-1", Stream.ACK), qos=1)
        vitals = Vitals("CLI-1", 0, 0, time.time_ns() // 1000, hr=101.0, spo2=93.0)
        await device.publish(device_topic("CLI-1", Stream.VITALS), encode_device_message(vitals), qos=1)
        async with asyncio.timeout(30):
            async for message in device.messages:
                assert isinstance(message.payload, bytes)
                acks = decode_acks(message.payload)
                break
    assert [(ack.stream, ack.upto, ack.rejected) for ack in acks] == [(Stream.VITALS, 0, ())]

    async with aiohttp.ClientSession() as http:
        async with http.get(info["console_url"]) as response:
            assert response.status == 200
        async with http.get(info["gateway_health_url"]) as response:
            assert (await response.json())["status"] == "ok"

    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("postgres" in c.name() for c in children) and any("mosquitto" in c.name() for c in children)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(90):
        assert await proc.wait() == 0
    # Helpers that end when their parent does (multiprocessing's resource tracker) get a few seconds to see it.
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not (data / "stack.json").exists()
