"""Garbage-collector settings for a latency-bound daemon.

CPython frees almost everything by reference counting; its cyclic garbage
collector exists for the rest, and it stops the whole process while it runs.
A full (generation 2) collection visits every container object in the heap:
with 100,000 users and their registrations loaded that is millions of
objects, 60 ms to 1.3 s of stopped event loop, and with the default
thresholds (700, 10, 10) it came every 0.3-7 s under REGISTER load.  Those
pauses, not CPU, capped softswitch-control at 500 REGISTERs/s and 100
calls/s and made its set-up delay p99 358 ms (bench/results/control.json).

The standard cure for such servers (Instagram's, documented with
``gc.freeze`` since Python 3.7):

* ``gc.freeze()`` once the users and registrations are loaded: everything
  alive then moves to the "permanent generation", which collections never
  visit.  Frozen objects are still freed by reference counting as usual;
  only a frozen *cycle* that becomes garbage is never reclaimed, hence the
  collection just before every freeze, and why freezing waits for a quiet
  state (after the load) rather than happening at random.
* Higher thresholds: a young collection every 50,000 net allocations instead
  of 700 (each one visits only the young objects, well under a millisecond),
  and the older generations proportionally rarer.
* Re-freezing now and then: bindings and users created at run time (REGISTER
  traffic, the database sync) are long-lived too, and would make full
  collections long again.  Every REFREEZE_INTERVAL seconds, when enough
  objects have survived into the old generation since the last freeze, they
  are collected (a full collection, but over the unfrozen objects only) and
  frozen.  The SIP transactions that linger for 32 s keep no parsed messages
  (softswitch/sip/transaction.py, ``_linger``) and none of the transient
  state forms reference cycles, so what gets frozen while alive is freed by
  reference counting when it dies: memory stays bounded.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: gen0: net allocations between young collections; gen1, gen2: young
#: (resp. middle) collections between collections of the next generation.
THRESHOLDS = (50_000, 20, 100)

#: Seconds between checks of the old generation's growth.
REFREEZE_INTERVAL = 30.0

#: Objects in the unfrozen old generation above which a check re-freezes.
REFREEZE_MIN_OBJECTS = 50_000


def configure() -> None:
    """Raise the thresholds (cheap; call early, before a big load)."""
    gc.set_threshold(*THRESHOLDS)


def freeze() -> float:
    """Collect what is garbage now, then freeze every surviving object;
    returns how long it took (seconds)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    took = time.perf_counter() - started
    log.debug("gc: %d objects frozen in %.1f ms", gc.get_freeze_count(), took * 1000)
    return took


def refreeze_if_grown(min_objects: int = REFREEZE_MIN_OBJECTS) -> bool:
    """Freeze again when the old generation holds ``min_objects`` or more
    unfrozen objects (the survivors since the last freeze)."""
    if len(gc.get_objects(generation=2)) < min_objects:
        return False
    freeze()
    return True


def start(loop: Any, interval: float = REFREEZE_INTERVAL) -> None:
    """For a daemon whose start-up load is done: set the thresholds, freeze
    what is loaded, and check every ``interval`` seconds on ``loop`` (an
    asyncio loop) whether to freeze again."""
    configure()
    took = freeze()
    log.info("gc: %d objects frozen after the load (%.0f ms)", gc.get_freeze_count(), took * 1000)

    def tick() -> None:
        if not loop.is_closed():
            refreeze_if_grown()
            loop.call_later(interval, tick)

    loop.call_later(interval, tick)
