"""Soak: a simulated fleet streams for a long time while faults are injected on a schedule; then the ledger check.

    .venv/bin/python bench/soak.py --units 20 --minutes 30 --fault-every 60
    .venv/bin/python bench/soak.py --units 50 --minutes 30 --faults broker_kill,postgres_immediate,device_outage
        # memory: no gateway restart, so the gateway process's RSS over the whole run is comparable
    .venv/bin/python bench/soak.py --units 10 --minutes 12 --fault-every 60 --faults device_outage --outage-minutes 10
        # ten-minute outages of one device after another

Runs its own PostgreSQL and broker under a temporary directory, the gateway with its clinical loop in this process,
and `--units` simulated devices playing the demo's mix of clinical scenarios. Every `--fault-every` seconds it
injects the next fault of the cycle: broker killed, broker stopped gracefully, gateway restarted, PostgreSQL stopped
in immediate mode, a device's network cut for 60 s (and, every fifth round, for 10 minutes when the soak is long
enough). At the end every device stops generating, drains its outbox, and each device's ledger is compared with the
store: nothing lost, nothing doubled. The gateway with its clinical loop runs as its own process (`emergency
gateway`); its RSS is sampled every 10 s so growth shows (a restart starts it afresh: compare within a run of
restarts). Exit status 1 when the ledger check finds anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import psutil

from emergency.protocol import DEVICE_STREAMS
from emergency.stack import Broker, PostgresCluster, provision_units
from emergency.stack.component import ComponentProcess
from emergency.store import Store
from firmware_sim import DeviceConfig, Fleet, ledger_problems
from firmware_sim._scenario import demo_mix

log = logging.getLogger("soak")
FAULTS = ("broker_kill", "broker_graceful", "gateway_restart", "postgres_immediate", "device_outage")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def soak(
    units: int, minutes: float, fault_every_s: float, faults: tuple[str, ...] = FAULTS, outage_s: float | None = None
) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="emergency-soak-"))
    root.chmod(0o755)
    rss: list[tuple[float, float]] = []
    injected: list[tuple[float, str]] = []
    started = time.monotonic()
    try:
        async with (
            PostgresCluster(root / "pg", free_port()) as pg,
            Broker(root / "broker", free_port()) as broker,
            Store.open(pg.dsn) as store,
        ):
            credentials = {f"SOAK{i:03d}": secrets.token_urlsafe(12) for i in range(units)}
            provision_units(broker.root, credentials)
            configs = [
                DeviceConfig(u, p, backoff_cap_s=5.0, scenarios=demo_mix(i))
                for i, (u, p) in enumerate(credentials.items())
            ]
            # The gateway and its clinical loop run as `emergency gateway`, a process of their own, so that its memory
            # is measured apart from the simulated devices (whose ledgers grow with every message, by design).
            http_port = free_port()
            env = {"EMERGENCY_DATA_DIR": str(broker.root), "EMERGENCY_MQTT_PORT": str(broker.port),
                   "EMERGENCY_STORE__DSN": pg.dsn, "EMERGENCY_GATEWAY__HTTP_PORT": str(http_port),
                   "EMERGENCY_GATEWAY__CLIENT_ID": "soak-gateway", "EMERGENCY_LOG_LEVEL": "WARNING"}  # fmt: skip

            def center() -> ComponentProcess:
                return ComponentProcess("gateway", broker.root, f"http://127.0.0.1:{http_port}/healthz", env=env)

            stack = contextlib.AsyncExitStack()
            gateway = await stack.enter_async_context(center())
            async with Fleet(configs, broker.host, broker.port, root / "sim") as fleet:
                deadline = started + minutes * 60
                next_fault = time.monotonic() + fault_every_s
                round_no = 0
                outages: list[asyncio.Task[None]] = []
                while time.monotonic() < deadline:
                    await asyncio.sleep(10)
                    with contextlib.suppress(psutil.Error, TypeError):
                        rss.append(
                            (round(time.monotonic() - started), psutil.Process(gateway.pid).memory_info().rss / 2**20)
                        )
                    if time.monotonic() < next_fault:
                        continue
                    fault = faults[round_no % len(faults)]
                    round_no += 1
                    next_fault = time.monotonic() + fault_every_s
                    injected.append((round(time.monotonic() - started), fault))
                    log.warning("injecting %s", fault)
                    if fault == "broker_kill":
                        await broker.stop(graceful=False)
                        await asyncio.sleep(3)
                        await broker.start()
                    elif fault == "broker_graceful":
                        await broker.stop(graceful=True)
                        await asyncio.sleep(3)
                        await broker.start()
                    elif fault == "gateway_restart":
                        await stack.aclose()
                        stack = contextlib.AsyncExitStack()
                        gateway = await stack.enter_async_context(center())
                    elif fault == "postgres_immediate":
                        await pg.stop("immediate")
                        await asyncio.sleep(5)
                        await pg.start()
                    else:
                        device = fleet.devices[round_no % len(fleet.devices)]
                        long = round_no % 25 == 0 and deadline - time.monotonic() > 900
                        seconds = outage_s or (600 if long else 60)
                        outages.append(asyncio.create_task(_outage(device, seconds)))
                await asyncio.gather(*outages)
                for device in fleet.devices:
                    await device.stop_generating()
                for device in fleet.devices:
                    await device.drained(within_s=600)
                problems = [p for device in fleet.devices for p in await ledger_problems(store, device)]
                generated = sum(device.next_seq(stream) for device in fleet.devices for stream in DEVICE_STREAMS)
            await stack.aclose()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "units": units,
        "minutes": minutes,
        "faults": injected,
        "messages_generated": generated,
        "problems": problems,
        "rss_mib": {"first": round(rss[0][1], 1) if rss else None, "last": round(rss[-1][1], 1) if rss else None,
                    "max": round(max(r for _, r in rss), 1) if rss else None, "samples": rss},
    }  # fmt: skip


async def _outage(device, seconds: float) -> None:  # type: ignore[no-untyped-def]
    async with device.offline():
        await asyncio.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--fault-every", type=float, default=60)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {', '.join(FAULTS)}")
    parser.add_argument("--outage-minutes", type=float, help="every device outage lasts this long")
    args = parser.parse_args()
    faults = tuple(args.faults.split(","))
    if not faults or set(faults) - set(FAULTS):
        parser.error(f"--faults takes names from {', '.join(FAULTS)}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    outage_s = args.outage_minutes * 60 if args.outage_minutes else None
    result = asyncio.run(soak(args.units, args.minutes, args.fault_every, faults, outage_s))
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["problems"] else 0)


if __name__ == "__main__":
    main()
