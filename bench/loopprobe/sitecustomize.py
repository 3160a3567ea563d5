"""Where an asyncio process's event loop is held: put this directory first on PYTHONPATH of any run, e.g.

    PYTHONPATH=bench/loopprobe EMERGENCY_LOOPPROBE_DIR=/tmp/probe .venv/bin/python bench/alert_latency.py

and every Python process started under it (the stack's gateway and console, the benchmark itself) writes
`slow.<pid>.log` there: each event-loop step longer than EMERGENCY_LOOPPROBE_MS (default 15) with its wall and CPU
time, the garbage collection inside it, and for a task the await it resumed from and the one it stopped at; each
collection over 5 ms; at exit, collections per generation. A diagnostic: it slows what it measures a little and is
never loaded by the project itself (docs/benchmarks.md, "Nearer the target").
"""

from __future__ import annotations

import asyncio
import asyncio.events
import atexit
import collections
import gc
import os
import sys
import time
from typing import Any

_DIR = os.environ.get("EMERGENCY_LOOPPROBE_DIR", "/tmp/loopprobe")
_SLOW_S = float(os.environ.get("EMERGENCY_LOOPPROBE_MS", "15")) / 1000
os.makedirs(_DIR, exist_ok=True)
_log = open(os.path.join(_DIR, f"slow.{os.getpid()}.log"), "a", buffering=1)  # open as long as the process
_log.write(f"argv {sys.argv}\n")

_run_step = asyncio.events.Handle._run
_collections: collections.Counter[int] = collections.Counter()
_gc_started = 0.0
_gc_in_step = [0.0, 0]  # seconds, collections


def _await_point(task: asyncio.Task[Any]) -> str | None:
    """The innermost function:line the task is suspended at."""
    coro: Any = task.get_coro()
    where = None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where = f"{frame.f_code.co_name}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return where


def _timed_step(handle: asyncio.events.Handle) -> None:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    resumed = _await_point(task) if isinstance(task, asyncio.Task) else None
    _gc_in_step[:] = [0.0, 0]
    wall, cpu = time.perf_counter(), time.thread_time()
    _run_step(handle)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    if wall > _SLOW_S:
        what = repr(callback)[:160]
        if isinstance(task, asyncio.Task):
            what = f"{task.get_name()} from {resumed} to {_await_point(task)}"
        _log.write(
            f"{time.time():.3f} {wall * 1e3:.1f}ms cpu={cpu * 1e3:.1f} "
            f"gc={_gc_in_step[0] * 1e3:.1f}/{_gc_in_step[1]} {what}\n"
        )


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started
    _gc_in_step[0] += took
    _gc_in_step[1] += 1
    _collections[info["generation"]] += 1
    if took > 0.005:
        _log.write(f"{time.time():.3f} GC gen{info['generation']} {took * 1e3:.1f}ms collected={info['collected']}\n")


asyncio.events.Handle._run = _timed_step  # type: ignore[method-assign,assignment]
gc.callbacks.append(_on_gc)
atexit.register(lambda: _log.write(f"collections per generation {dict(_collections)}\n"))
