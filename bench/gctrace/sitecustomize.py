"""Garbage-collector pauses of a benchmarked daemon, logged from inside it.

bench/control.py puts this directory first on the PYTHONPATH of the
softswitch-control it starts, with SOFTSWITCH_BENCH_GC_LOG naming a file:
Python imports ``sitecustomize`` at start-up, so every collection the daemon
runs is timed (``gc.callbacks``: a clock read at start and at stop, about a
microsecond) and each one longer than 1 ms is appended to the file as
``<epoch seconds> <generation> <milliseconds>``.  The benchmark reads the
file per step: long collections stop the daemon's event loop, which is
where its latency tail comes from.

Without the variable this does nothing.  Either way the sitecustomize that
this one shadows (Debian's, say) is run afterwards.
"""

from __future__ import annotations

import gc
import importlib.machinery
import importlib.util
import os
import sys
import time


def _install(path: str) -> None:
    out = open(path, "a", buffering=1)  # noqa: SIM115 - for the life of the process
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms > 1.0:
            out.write(f"{time.time():.4f} {info['generation']} {ms:.2f}\n")

    gc.callbacks.append(callback)


def _chain() -> None:
    """Run the next sitecustomize on sys.path, the one this module hides."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get("SOFTSWITCH_BENCH_GC_LOG"):
    _install(os.environ["SOFTSWITCH_BENCH_GC_LOG"])
_chain()
