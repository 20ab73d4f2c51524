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
  visit (a full collection just before it frees what is garbage already).
* Re-freezing every second: what survives a second (bindings from REGISTER
  traffic, users from the database sync, calls in progress, lingering
  transactions) is checked once by a collection of the young and middle
  generations (a second's worth of survivors: a few ms under full load)
  and frozen, so it is never visited again.  The old generation's unfrozen
  part stays near empty: full collections are as short as young ones.
* Young collections every 5,000 net allocations (at most a millisecond or
  so each).  Larger thresholds were measured worse: pauses grow with them
  (50,000: 11-100 ms), and survivors are frozen by the re-freeze anyway.

Frozen objects are still freed by reference counting as usual; only a
frozen *cycle* that later becomes garbage is never reclaimed.  So the
request and call paths make no reference cycles: parsed SDP used to be one
(each media section pointed back at its description, about 2.5 KB per call
leaked at 200 calls/s) until sdp/media.py gave the two a shared ``SessionLevel``
instead, and tests/unit/control/test_no_cycles.py runs whole calls with the
collector off and fails on any cyclic garbage.  The benchmark counts what
the daemon's collections find under load (bench/gctrace): cycles made and
dropped within a second are still collected there, so a path that starts
making them shows up as a number, before it shows up as a leak.  The SIP
transactions that linger for 32 s keep no parsed messages
(softswitch/sip/transaction/machine.py, ``_linger``), so they add little for
collections to visit.

An earlier version unfroze and collected the whole heap once a minute to
reclaim such cycles: one pause of about 350 ms with 100,000 users loaded,
which was the set-up delay's p99 (6.1 ms by SIPp, over the 5 ms budget).

Measured (bench/results/control.json, 100,000 users): before this module,
500 REGISTERs/s, 100 calls/s, set-up delay p99 358 ms, full collections up
to 1.3 s every 0.3-7 s; the figures with it are in that file.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

#: gen0: net allocations between young collections (each one visits at most
#: this many objects: about a millisecond); gen1: young collections between
#: middle ones; gen2: middle collections between full ones (of the unfrozen
#: objects only, and rarely needed: see tick()).
THRESHOLDS = (5_000, 10, 100)

#: Seconds between re-freezes.
REFREEZE_INTERVAL = 1.0


def configure() -> None:
    """Raise the thresholds (cheap; call early, before a big load)."""
    gc.set_threshold(*THRESHOLDS)


def freeze() -> float:
    """Collect what is garbage now (a full collection of the unfrozen
    objects), then freeze every survivor; returns how long it took (s)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


def refreeze() -> None:
    """The young and middle generations are checked for garbage (a
    collection of generation 1: what survived since the last re-freeze, a
    second's worth), then everything alive is frozen, so that no collection
    ever visits it again and full collections stay as short as young ones."""
    gc.collect(1)
    gc.freeze()


def start(loop: Any, interval: float = REFREEZE_INTERVAL) -> None:
    """For a daemon whose start-up load is done: set the thresholds, freeze
    what is loaded and re-freeze every ``interval`` seconds on ``loop`` (an
    asyncio loop)."""
    configure()
    took = freeze()
    log.info("gc: %d objects frozen after the load (%.0f ms)", gc.get_freeze_count(), took * 1000)

    def tick() -> None:
        if loop.is_closed():
            return
        refreeze()
        loop.call_later(interval, tick)

    loop.call_later(interval, tick)
