"""Garbage-collector pauses of a benchmarked daemon, logged from inside it.

bench/control.py puts this directory first on the PYTHONPATH of the
softswitch-control it starts, with SOFTSWITCH_BENCH_GC_LOG naming a file:
Python imports ``sitecustomize`` at start-up, so every collection the daemon
runs is timed (``gc.callbacks``: a clock read at start and at stop, about a
microsecond) and each one longer than 1 ms, or that found cyclic garbage,
is appended to the file as ``<epoch seconds> <generation> <milliseconds>
<objects collected>``.  The benchmark reads the file per step: long
collections stop the daemon's event loop, which is where its latency tail
comes from; and cyclic garbage under load means some path makes reference
cycles, which leak once softswitch/daemonkit/gctune.py has frozen them.

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
    # SOFTSWITCH_BENCH_GC_TYPES=1: what the cyclic garbage is, by type, in
    # <log>.types (gc.DEBUG_SAVEALL: a diagnosis run, not a measurement).
    types: dict[str, int] | None = None
    if os.environ.get("SOFTSWITCH_BENCH_GC_TYPES"):
        types = {}
        gc.set_debug(gc.DEBUG_SAVEALL)

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - started[0]) * 1000
        if ms > 1.0 or info["collected"]:
            out.write(f"{time.time():.4f} {info['generation']} {ms:.2f} {info['collected']}\n")
        if types is not None and gc.garbage:
            for obj in gc.garbage:
                name = type(obj).__qualname__
                types[name] = types.get(name, 0) + 1
                if name in ("frame", "function", "cell"):
                    where = getattr(obj, "f_code", None) or getattr(obj, "__code__", None)
                    if where is not None:
                        key = f"  {name} {where.co_filename}:{where.co_name}"
                        types[key] = types.get(key, 0) + 1
            gc.garbage.clear()
            with open(path + ".types", "w") as f:
                for name, n in sorted(types.items(), key=lambda kv: -kv[1]):
                    f.write(f"{n} {name}\n")

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
