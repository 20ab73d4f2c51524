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
frozen *cycle* that later becomes garbage is never reclaimed.  Such cycles
do exist: every parsed SDP body is one (MediaDescription.session points back
at its SessionDescription), and a call alive at a re-freeze carries several,
so 200 calls/s leaked about 0.5 MB/s.  Hence the thaw every THAW_INTERVAL
(60 s): unfreeze, one full collection, freeze again.  It costs one pause of
the whole heap's size a minute (about 350 ms with 100,000 users and
bindings, which SIP retransmission timers absorb) and bounds what frozen
cycles can hold to a minute's worth.  Removing the cycles at their source
(a weak back-reference in sdp.py) would make the thaw unnecessary, but
code relies on ``parse(body).media[0].direction`` reading through a
temporary description (tests/unit/sip/test_sdp.py::test_is_hold).
The SIP transactions that linger for 32 s keep no parsed messages
(softswitch/sip/transaction.py, ``_linger``), so they add no cycles and
little for collections to visit.

Measured (bench/results/control.json, 100,000 users): before, 500
REGISTERs/s, 100 calls/s, set-up delay p99 358 ms, full collections up to
1.3 s every 0.3-7 s; with this module and the transaction change, 2,000/s,
300 calls/s, p99 6.1 ms (SIPp) / 3.9 ms (daemon), collections under 20 ms
but for the thaw (without the thaw: 2,500/s, 400 calls/s, p99 5.0 ms).
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

#: Seconds between thaws: everything unfrozen and collected once, so that
#: frozen cycles that died since (see the module docstring) are reclaimed.
THAW_INTERVAL = 60.0


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


def thaw() -> float:
    """Unfreeze everything, collect it all and freeze the survivors again
    (the one full collection of the whole heap); returns how long it took."""
    gc.unfreeze()
    return freeze()


def start(
    loop: Any, interval: float = REFREEZE_INTERVAL, thaw_interval: float = THAW_INTERVAL
) -> None:
    """For a daemon whose start-up load is done: set the thresholds, freeze
    what is loaded, re-freeze every ``interval`` seconds and thaw every
    ``thaw_interval`` seconds on ``loop`` (an asyncio loop)."""
    configure()
    took = freeze()
    log.info("gc: %d objects frozen after the load (%.0f ms)", gc.get_freeze_count(), took * 1000)
    every = max(1, round(thaw_interval / interval))
    ticks = [0]

    def tick() -> None:
        if loop.is_closed():
            return
        ticks[0] += 1
        if ticks[0] % every == 0:
            took = thaw()
            log.debug("gc: thawed, collected and refrozen in %.0f ms", took * 1000)
        else:
            refreeze()
        loop.call_later(interval, tick)

    loop.call_later(interval, tick)
