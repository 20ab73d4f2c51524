"""How the DB thread keeps its journal: what it appends, when it compacts,
clears, switches off and on again, and the replay of what a crash left.

Theory of operation
-------------------
Every write the thread takes off its queue is journaled first (one write(2)
per wake-up, softswitch/db/spool.py) and the journal is emptied whenever
nothing is pending, so a crash of the daemon loses nothing that was handed
over: the next DB thread replays what it finds in `spool_dir` into the
database before it loads (CDRs carry a ``uid`` so that one committed just
before the crash is not written twice). A journal that grew during an outage
(re-REGISTERs keep appending while memory coalesces them) is rewritten from
what is pending once it holds more than `COMPACT_MIN` records and twice what
is pending. A journal that cannot be written is logged, counted (`errors`)
and switched off until it can be again, tried every `SPOOL_RETRY` seconds;
writes go on.

`Spool` is the file; this is the policy the thread applies to it, apart from
the thread so that the thread's loop reads as load, take, write, poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from softswitch.db.spool import Record, Spool
from softswitch.db.spool import read as read_journal
from softswitch.db.writer import PendingWrites

log = logging.getLogger("softswitch.db")

#: A journal with more records than this and twice what is pending is compacted.
COMPACT_MIN = 10_000
#: Seconds between attempts to switch a failed journal back on.
SPOOL_RETRY = 30.0


class Journal:
    """The DB thread's write-ahead journal in `directory`, and its state."""

    def __init__(
        self, directory: str | Path, pending: PendingWrites, on_off: Callable[[], None]
    ) -> None:
        """``pending``: what a compaction writes; ``on_off``: called when the
        journal has just been switched off (the thread reports its status)."""
        self.spool = Spool(directory)
        self._pending = pending
        self._on_off = on_off
        self._leftovers: list[Path] = []
        #: Times the journal could not be written.
        self.errors = 0
        self._retry = 0.0
        self._logged = False

    def open(self) -> None:
        """Find what an earlier run left (replayed by `replay`)."""
        self._leftovers = self.spool.leftovers()
        if not self.spool.active:
            self._failed()

    def close(self) -> None:
        self.spool.close()

    def append(self, records: list[Record]) -> None:
        """Journal what was just taken, before any of it can be committed."""
        spool = self.spool
        if spool.active:
            ok = spool.append(records)
            if ok and spool.records > max(COMPACT_MIN, 2 * len(self._pending)):
                ok = spool.restart(self._pending.snapshot())
        elif time.monotonic() >= self._retry:
            ok = spool.restart(self._pending.snapshot())  # everything pending, these included
            if ok:
                log.warning("journal %s written again", spool.directory)
                self._logged = False
        else:
            return
        if not ok:
            self._failed()

    def committed(self) -> None:
        """Nothing is pending: the journal holds nothing the database lacks."""
        spool = self.spool
        if spool.active:
            if spool.clear():
                return
        elif time.monotonic() < self._retry or spool.restart([]):
            if spool.active:
                log.warning("journal %s written again", spool.directory)
                self._logged = False
            return
        self._failed()

    def _failed(self) -> None:
        self.errors += 1
        self._retry = time.monotonic() + SPOOL_RETRY
        if not self._logged:
            self._logged = True
            log.error(
                "journal off: %s; pending registrations and CDRs are held in memory "
                "only (a crash now loses them); retrying every %.0f s",
                self.spool.error,
                SPOOL_RETRY,
            )
            self._on_off()

    def replay(self, engine: sa.engine.Engine) -> None:
        """Write what an earlier run left in the journal; raises SQLAlchemyError
        to be retried (from the start of the file: replaying is idempotent)."""
        while self._leftovers:
            path = self._leftovers[0]
            try:
                records = read_journal(path)
            except OSError as exc:
                log.error("journal %s not replayed: %s", path, exc.strerror or exc)
                self._leftovers.pop(0)
                continue
            bindings, cdrs = self._pending.replay(engine, records)
            self.spool.remove(path)
            self._leftovers.pop(0)
            log.warning(
                "replayed journal %s left by an earlier run: %d registration writes, %d CDRs",
                path.name,
                bindings,
                cdrs,
            )
