"""Where an asyncio process's event loop is held: put this directory first on PYTHONPATH of any run, e.g.

    PYTHONPATH=bench/loopprobe EMERGENCY_LOOPPROBE_DIR=/tmp/probe .venv/bin/python bench/alert_latency.py

and every Python process started under it (the stack's gateway and console, the benchmark itself) writes
`slow.<pid>.log` there: each event-loop step longer than EMERGENCY_LOOPPROBE_MS (default 15) with its wall and CPU
time, the garbage collection inside it, and for a task the await it resumed from and the one it stopped at; each
collection over 5 ms; at exit, collections per generation. With EMERGENCY_LOOPPROBE_BIG=1, a collection over 40 ms
also says what it walked: its objects by type and its largest containers (length, a short repr). A young collection's
time is its objects and their lengths, so a slow one shows what piles up between collections. A diagnostic: it slows
what it measures a little and is never loaded by the project itself (docs/benchmarks.md, "Nearer the target").
"""

from __future__ import annotations

import asyncio
import asyncio.events
import atexit
import collections
import gc
import os
import reprlib
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
_BIG = os.environ.get("EMERGENCY_LOOPPROBE_BIG") == "1"
_walked: list[str] = []  # what the running collection walks (_largest)


def _largest(generation: int) -> list[str]:
    """What a collection of `generation` is about to walk: its object count by type, and its largest containers."""
    walked = [obj for g in range(generation + 1) for obj in gc.get_objects(generation=g)]
    kinds = collections.Counter(type(obj).__qualname__ for obj in walked)
    sized = []
    for obj in walked:
        try:
            n = len(obj)
        except Exception:  # no length, or a type whose __len__ fails (half-built objects)
            continue
        if n >= 1000:
            sized.append((n, obj))
    sized.sort(key=lambda pair: pair[0], reverse=True)
    return [
        f"{len(walked)} objects: " + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common(6)),
        *(f"{n} {type(obj).__module__}.{type(obj).__qualname__} {reprlib.repr(obj)[:120]}" for n, obj in sized[:5]),
    ]


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
        if _BIG:
            _walked[:] = _largest(info["generation"]) if info["generation"] < 2 else []
        _gc_started = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started
    _gc_in_step[0] += took
    _gc_in_step[1] += 1
    _collections[info["generation"]] += 1
    if took > 0.005:
        _log.write(f"{time.time():.3f} GC gen{info['generation']} {took * 1e3:.1f}ms collected={info['collected']}\n")
        if took > 0.040:
            for line in _walked:
                _log.write(f"    {line}\n")


asyncio.events.Handle._run = _timed_step  # type: ignore[method-assign,assignment]
gc.callbacks.append(_on_gc)
atexit.register(lambda: _log.write(f"collections per generation {dict(_collections)}\n"))
