"""PostgreSQL alone at a fixed rate, over time: what one interval's commits cost it, and what changed meanwhile.

    .venv/bin/python bench/store_rate.py --rate 12000 --seconds 150            # 2 000 units' worth, two lanes
    .venv/bin/python bench/store_rate.py --rate 12000 --seconds 150 --no-watermarks
    .venv/bin/python bench/store_rate.py --rate 12000 --seconds 150 --hold-memory 18   # memory in use, as on a server

bench/scale.py's "PostgreSQL alone" commits as fast as it can for a few seconds; a stack runs for hours. This
commits the gateway's batches (`Store.commit`, the standard mix, `--writers` concurrent writers like the gateway's
commit lanes, and the ack watermarks saved every few seconds beside them, decision 40) at a steady `--rate` messages
a second into a private PostgreSQL (TimescaleDB when installed), and every `--every` seconds prints PostgreSQL's CPU
(its backends and background processes), the mean and worst commit time, the WAL written (records, full-page images,
MB), buffers written by backends, checkpoints, and the ack watermark table (updates, how many were HOT, dead rows,
pages of the table and its index, autovacuums). A rise in CPU per message at a constant rate shows what the stack's
latency depends on over a long run, beside the machine's own drift (docs/benchmarks.md, "PostgreSQL over time").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from scale import (  # noqa: E402
    Sampler,
    WatermarkSaver,
    add_hold_memory_option,
    free_port,
    held_memory,
    private_root,
    standard_batches,
)

from emergency.settings import StoreSettings  # noqa: E402
from emergency.stack import PostgresCluster  # noqa: E402
from emergency.store import IngestBatch, Store  # noqa: E402

UNITS_PER_WRITER = 1000
WAL = (
    "SELECT w.wal_records, w.wal_fpi, w.wal_bytes, b.buffers_backend, b.checkpoints_timed + b.checkpoints_req "
    "FROM pg_stat_wal w, pg_stat_bgwriter b"
)
WATERMARKS = (
    "SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup, autovacuum_count, "
    "pg_relation_size('ack_watermarks') / 8192, pg_relation_size('ack_watermarks_pkey') / 8192 "
    "FROM pg_stat_user_tables WHERE relname = 'ack_watermarks'"
)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = private_root()
    try:
        async with (
            PostgresCluster(root, free_port(), timescaledb=not args.no_timescaledb) as pg,
            Store.open(pg.dsn, StoreSettings()) as store,
        ):
            per_writer_s = args.rate / args.writers / args.batch  # batches a second per writer
            count = int(args.seconds * per_writer_s) + 1
            print(f"preparing {count * args.writers} batches of {args.batch} ...", file=sys.stderr, flush=True)
            prepared = [standard_batches(w, UNITS_PER_WRITER, args.batch, count) for w in range(args.writers)]
            sampler = Sampler()
            sampler.discover(None, {os.getpid(): "writer"})
            commits: list[tuple[float, float]] = []  # (seconds since start, commit ms)
            saver = WatermarkSaver(store)
            started = time.monotonic()

            async def writer(w: int) -> None:
                for k, items in enumerate(prepared[w]):
                    delay = started + k / per_writer_s - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    t = time.monotonic()
                    await store.commit(IngestBatch(received=items))
                    commits.append((t - started, (time.monotonic() - t) * 1000))
                    saver.committed(items)

            rows: list[dict[str, Any]] = []
            conn = await asyncpg.connect(pg.dsn)
            saving = None if args.no_watermarks else asyncio.create_task(saver.save_forever())
            try:
                writers = asyncio.gather(*(writer(w) for w in range(args.writers)))
                wal, marks = await conn.fetchrow(WAL), await conn.fetchrow(WATERMARKS)
                sampler.reset_cpu()
                last = time.monotonic()
                while not writers.done():
                    await asyncio.wait([writers], timeout=args.every)
                    now = time.monotonic()
                    at, seconds, last = now - started, now - last, now  # the last row may be shorter
                    sampler.sample()
                    cores, system = sampler.cpu_cores(seconds), sampler.system_cores(seconds)
                    sampler.reset_cpu()
                    wal_now, marks_now = await conn.fetchrow(WAL), await conn.fetchrow(WATERMARKS)
                    d = [int(a) - int(b) for a, b in zip(wal_now, wal, strict=True)]
                    upd, hot = int(marks_now[0]) - int(marks[0]), int(marks_now[1]) - int(marks[1])
                    wal, marks = wal_now, marks_now
                    recent = [ms for t, ms in commits if at - seconds <= t < at]
                    rows.append(
                        {
                            "t_s": round(at),
                            "postgres_cores": cores.get("postgres", 0.0),
                            "postgres_system_cores": system.get("postgres", 0.0),
                            "writer_cores": cores.get("writer", 0.0),
                            "commits": len(recent),
                            "commit_ms_mean": round(sum(recent) / len(recent), 1) if recent else None,
                            "commit_ms_max": round(max(recent)) if recent else None,
                            "wal_records": d[0],
                            "wal_fpi": d[1],
                            "wal_mb": round(d[2] / 1e6),
                            "buffers_written_by_backends": d[3],
                            "checkpoints": d[4],
                            "watermark_updates": upd,
                            "watermark_hot_share": round(hot / upd, 3) if upd else None,
                            "watermark_dead_rows": int(marks_now[2]),
                            "watermark_autovacuums": int(marks_now[3]),
                            "watermark_pages": int(marks_now[4]),
                            "watermark_index_pages": int(marks_now[5]),
                        }
                    )
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                await writers
            finally:
                if saving is not None:
                    saving.cancel()
                await conn.close()
            return {
                "rate": args.rate,
                "writers": args.writers,
                "batch": args.batch,
                "watermarks": not args.no_watermarks,
                "hold_memory_gib": args.hold_memory,
                "timescaledb": pg.timescaledb,
                "rows": rows,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| s | postgres cores (system) | µs per message | commit ms mean / max | WAL MB (full-page images) "
        "| backend buffer writes | checkpoints | watermark updates (HOT) | watermark table / index pages |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        per_message = r["postgres_cores"] * 1e6 / result["rate"]
        hot = f"{r['watermark_hot_share']:.0%}" if r["watermark_hot_share"] is not None else "–"
        lines.append(
            f"| {r['t_s']} | {r['postgres_cores']} ({r.get('postgres_system_cores', '–')}) | {per_message:.0f} "
            f"| {r['commit_ms_mean']} / {r['commit_ms_max']} "
            f"| {r['wal_mb']} ({r['wal_fpi']}) | {r['buffers_written_by_backends']} | {r['checkpoints']} "
            f"| {r['watermark_updates']} ({hot}) | {r['watermark_pages']} / {r['watermark_index_pages']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=12_000, help="messages a second, over all writers")
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--every", type=float, default=10, help="seconds per row")
    parser.add_argument("--writers", type=int, default=2, help="concurrent writers (the gateway's commit lanes)")
    parser.add_argument("--batch", type=int, default=300, help="messages per commit")
    parser.add_argument("--no-watermarks", action="store_true", help="save no ack watermarks")
    parser.add_argument("--no-timescaledb", action="store_true")
    add_hold_memory_option(parser)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()
    with held_memory(args.hold_memory):
        result = asyncio.run(run(args))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
