"""What one message costs the gateway: its CPU time, or its instructions (valgrind), per message of the standard mix.

    .venv/bin/python bench/gateway_cost.py --messages 100000             # CPU seconds (noisy: the machine drifts)
    .venv/bin/python bench/gateway_cost.py --messages 9000 --callgrind   # instructions (repeatable; ~2 minutes)

A private PostgreSQL and mosquitto, and one `emergency gateway` process (its clinical loop included) as in the stack.
Once the gateway is subscribed, one publisher (bench/_loadgen.py `flood --warmup W --count N`) sends a first turn of
every unit, unmeasured, then the N messages (4 ECG : 1 vitals : 1 GPS, over `--units` units) as fast as the broker
takes them; the gateway is measured from then until the database holds every message. It works through a backlog,
its batches full: the regime in which its cost per message sets the fleet a machine can carry (bench/scale.py
measures the rest, with latencies). PostgreSQL's and mosquitto's CPU per message are reported beside it.

With --callgrind the gateway runs under `valgrind --tool=callgrind`, about 50 times slower, and the figure is the
instructions it executed in the window (counters zeroed at its start with `callgrind_control`), divided by the
messages. Its timers' work over the window (~20 s at valgrind's pace, ~10 % of the total) is included. Instructions
do not depend on what else the machine is doing: runs of one build agreed within 0.3 %, where CPU seconds need
alternating runs taken close together (docs/benchmarks.md, "Ten minutes, and the machine's drift"). They do not
count memory traffic or the kernel's work, so a saving in instructions is larger than the same saving in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from scale import LOADGEN, TIME_SERIES, allow_shared_account, free_port, grant_shared_account, log, private_root  # noqa: E402

from emergency.stack import Broker, PostgresCluster  # noqa: E402
from emergency.stack.component import ComponentProcess  # noqa: E402

IDLE_S = 5.0  # under callgrind: how long the gateway's idle rate is measured before the window (reported only)


async def stored(dsn: str, count: int, stall_s: float) -> None:
    """Wait until `count` messages are stored, then for the gateway's last acks (every 0.5 s). Counted in the
    database: a scrape of the gateway's /metrics would cost the gateway as much as dozens of messages."""
    query = "SELECT " + " + ".join(f"(SELECT count(*) FROM {table})" for table in TIME_SERIES)
    conn = await asyncpg.connect(dsn)
    try:
        last, since = -1, time.monotonic()
        while True:  # polled: the count is in another process
            now = await conn.fetchval(query)
            if now >= count:
                break
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > stall_s:
                # mosquitto holds at most max_queued_messages for a session and drops the rest, acknowledged
                raise RuntimeError(f"{count - now} messages never stored; fewer --messages keep the broker's queue")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    await asyncio.sleep(1.0)


class Callgrind:
    """The instruction counters of a process run under `valgrind --tool=callgrind --callgrind-out-file=OUT`."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out

    def zero(self) -> None:
        subprocess.run(["callgrind_control", "--zero", str(self.pid)], capture_output=True, check=True)

    def dump(self) -> int:
        """Instructions since the last zero or dump."""
        for old in self.out.parent.glob(self.out.name + ".*"):
            old.unlink()
        subprocess.run(["callgrind_control", "--dump", str(self.pid)], capture_output=True, check=True)
        (dump,) = self.out.parent.glob(self.out.name + ".*")
        summary = re.search(r"^summary: (\d+)", dump.read_text(), re.MULTILINE)
        assert summary is not None, f"no summary in {dump}"
        return int(summary.group(1))


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system, and system alone) so far of each named process and every process under it."""
    out = {}
    for name, pid in roots.items():
        total = system = 0.0
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
                    system += times.system
        out[name], out[name + " (system)"] = total, system
    return out


async def measure(args: argparse.Namespace) -> dict[str, object]:
    root = private_root()
    try:
        async with (
            PostgresCluster(root, free_port(), timescaledb=False if args.no_timescaledb else None) as pg,
            Broker(root / "data", free_port()) as broker,
        ):
            password_file = grant_shared_account(root / "data")
            allow_shared_account(root / "data")
            http_port = free_port()
            env = {
                "EMERGENCY_DATA_DIR": str(root / "data"),
                "EMERGENCY_MQTT_PORT": str(broker.port),
                "EMERGENCY_STORE__DSN": pg.dsn,
                "EMERGENCY_GATEWAY__HTTP_PORT": str(http_port),
                "EMERGENCY_LOG_LEVEL": "WARNING",
            }
            out, stall_s = root / "callgrind.out", 60.0 if args.callgrind else 10.0
            async with ComponentProcess(
                "gateway", root / "data", f"http://127.0.0.1:{http_port}/healthz", env,
                launcher=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}") if args.callgrind else (),
                start_timeout_s=900 if args.callgrind else 120,
            ) as gateway:  # fmt: skip
                assert gateway.pid is not None
                log(f"gateway ready (pid {gateway.pid}); {args.warmup} messages first, then {args.messages} measured")
                flood = await asyncio.create_subprocess_exec(
                    sys.executable, str(LOADGEN), "flood", "--port", str(broker.port),
                    "--password-file", str(password_file), "--units", str(args.units), "--connections", "4",
                    "--warmup", str(args.warmup), "--count", str(args.messages),
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                assert flood.stdout is not None
                while (await flood.stdout.readline()).strip() != b"warmed":
                    pass
                await stored(pg.dsn, args.warmup, stall_s)
                counters = Callgrind(gateway.pid, out)
                roots = {
                    "gateway": gateway.pid,
                    "postgres": int((pg.datadir / "postmaster.pid").read_text().split()[0]),
                    "mosquitto": int((root / "data" / "mosquitto" / "mosquitto.pid").read_text().strip()),
                }
                idle_per_s = 0.0
                if args.callgrind:
                    counters.zero()
                    await asyncio.sleep(IDLE_S)
                    idle_per_s = counters.dump() / IDLE_S
                cpu0, t0 = cpu_seconds(roots), time.monotonic()
                flood.send_signal(signal.SIGUSR1)
                await stored(pg.dsn, args.warmup + args.messages, stall_s)
                elapsed, cpu1 = time.monotonic() - t0, cpu_seconds(roots)
                cpu = {name: round((cpu1[name] - cpu0[name]) / args.messages * 1e6, 1) for name in cpu1}
                await flood.wait()
                result: dict[str, object] = {
                    "messages": args.messages,
                    "units": args.units,
                    "timescaledb": pg.timescaledb,
                    "seconds": round(elapsed, 2),
                }
                if args.callgrind:
                    # Everything the gateway executed in the window, its timers' work included. Subtracting the idle
                    # rate was tried: the rate measured over a few seconds varies by ±40 % between runs, and the
                    # difference moved the result by ±4 %, while the totals of one build agreed within 0.3 %.
                    result |= {
                        "instructions_per_msg": round(counters.dump() / args.messages),
                        "idle_instructions_per_s": round(idle_per_s),
                    }
                else:
                    result |= {"msgs_per_s": round(args.messages / elapsed), "cpu_us_per_msg": cpu}
                return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=60_000, help="at most ~150 000 (the broker's session queue)")
    parser.add_argument("--units", type=int, default=900)
    parser.add_argument("--warmup", type=int, default=0, help="messages before the window (default: 3 per unit)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--no-timescaledb", action="store_true")
    args = parser.parse_args()
    args.warmup = args.warmup or 3 * args.units  # the first turn: every unit's three streams
    if args.callgrind and not shutil.which("callgrind_control"):
        parser.error("--callgrind needs valgrind (Debian package valgrind)")
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
