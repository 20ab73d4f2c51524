"""The control daemon's DB thread: the only place SQL runs (DESIGN.md 3, 4).

Theory of operation
-------------------
The main thread (asyncio) never waits on the database. It talks to this
thread through two FIFOs and nothing else:

- commands in: a bounded ``queue.Queue`` fed by `save_binding`,
  `delete_binding`, `write_cdr` and `flush`, which never block (a full queue
  counts the write as dropped);
- results out: ``results``, a ``queue.SimpleQueue`` of `Loaded`,
  `UsersChanged`, `DbStatus` and `DbFatal`; after each put the thread calls
  ``notify()`` (the daemon passes something like
  ``lambda: loop.call_soon_threadsafe(drain)``) and the main thread drains it.

At start the thread creates missing tables, replays what an earlier run
left in its journal, loads every user and every live registration and sends
one `Loaded`; the daemon waits for it before serving. Then every
`sync_interval` it polls for changed users and sends `UsersChanged` when
something changed (softswitch/db/usersync.py).

Writes are coalesced and batched: registrations by (user, domain, contact),
last write wins, so a re-REGISTER storm costs one row per contact; CDRs in
arrival order, inserted in one statement per chunk (softswitch/db/writer.py),
when `batch_max` are pending or `batch_interval` after the first one, or at
once on `flush()`.

A database outage must not stop calls. When a statement fails for want of a
database (OperationalError and friends) the thread reports ``DbStatus(ok=
False)``, keeps accepting writes up to `write_queue_max` pending (beyond that
they are dropped, counted, and logged once per outage), and retries with
exponential backoff; when a retry succeeds it writes the backlog, reports
``DbStatus(ok=True)`` and polls at once. A row the database refuses on its
own merits (IntegrityError, DataError) is dropped and counted so that it
cannot block the rows behind it.

Every write the thread takes off its queue is journaled first, so that a
crash of the daemon loses nothing that was handed over
(softswitch/db/journal.py).

`stop(timeout)` (the SIGTERM path) writes everything pending, retrying until
the deadline; what still cannot be written is logged with its count, and
stays in the journal for the next start.

This module is the thread itself: the queue, the loop and its timers, the
outage state and the stop. What it reads (`UserSync`), writes
(`PendingWrites`) and journals (`Journal`) are objects of their own, each
driven only from this thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from softswitch.db.journal import Journal
from softswitch.db.messages import USER_SETTINGS, DbFatal, DbStatus, UpdateUser
from softswitch.db.schema import SchemaError, create_schema, make_engine
from softswitch.db.spool import CdrWrite, Delete, Record, Save
from softswitch.db.usersync import UserSync
from softswitch.db.writer import PendingWrites, first_line
from softswitch.model.cdr import Cdr
from softswitch.model.users import Binding, check_binding

log = logging.getLogger("softswitch.db")

#: Commands taken from the queue per wake-up before the thread does DB work.
MAX_DRAIN = 20_000
#: Longest the thread sleeps with nothing to do (it re-checks its timers).
IDLE = 1.0


# -- commands (main thread -> DB thread) ------------------------------------


@dataclass(frozen=True, slots=True)
class _Stop:
    deadline: float


_FLUSH = object()


class DbThread:
    """Owns the engine; loads, polls and writes on behalf of the main thread."""

    def __init__(
        self,
        url: str,
        notify: Callable[[], object],
        *,
        sync_interval: float = 2.0,
        write_queue_max: int = 100_000,
        batch_max: int = 100,
        batch_interval: float = 1.0,
        reconcile_every: int = 15,
        purge_every: int = 30,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        timeout: float = 5.0,
        spool_dir: str | Path | None = None,
    ) -> None:
        self.results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._url = url
        self._notify = notify
        self._sync_interval = sync_interval
        self._write_queue_max = write_queue_max
        self._batch_max = batch_max
        self._batch_interval = batch_interval
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._timeout = timeout
        self._cmds: queue.Queue[Any] = queue.Queue(maxsize=write_queue_max)
        self._thread = threading.Thread(target=self._run, name="softswitch-db", daemon=True)
        self._dropped_put = 0  # written by the main thread only
        self._unwritten = 0  # set by the thread when it exits
        # Everything below belongs to the DB thread.
        self._engine: sa.engine.Engine | None = None
        self._writes = PendingWrites()
        self._users = UserSync(reconcile_every=reconcile_every, purge_every=purge_every)
        self._journal = (
            None
            if spool_dir is None
            else Journal(spool_dir, self._writes, lambda: self._emit(self._status(bool(self._ok))))
        )
        self._taken: list[Record] = []  # taken in this wake-up, not yet journaled
        self._first_pending = 0.0
        self._flush_requested = False
        self._stop: _Stop | None = None
        self._dropped = 0
        self._overflow_logged = False
        self._ok: bool | None = None
        self._error: str | None = None
        self._loaded = False
        self._backoff = 0.0
        self._next_retry = 0.0
        self._next_poll = 0.0
        self._kept_at_stop = False

    # -- main-thread API (never blocks) ---------------------------------------

    def start(self) -> None:
        """Start the thread; a `Loaded` (or `DbStatus`/`DbFatal`) follows."""
        self._thread.start()

    def save_binding(self, binding: Binding) -> bool:
        """Persist a binding (insert or replace). ValueError if it cannot be stored."""
        check_binding(binding)
        return self._put(Save(binding))

    def delete_binding(self, username: str, domain: str, contact: str) -> bool:
        """Forget a binding (unregistered or expired)."""
        return self._put(Delete((username, domain, contact)))

    def write_cdr(self, cdr: Cdr) -> bool:
        """Queue a CDR for the next batch. False if it had to be dropped."""
        return self._put(cdr)

    def update_user(self, update: UpdateUser) -> bool:
        """Change a user's settings (feature codes). ValueError for a column not allowed.

        Not journaled: a crash before the write loses the change, which the
        phone's user then sees (the feature has no effect) and repeats.
        """
        unknown = {name for name, _ in update.values} - USER_SETTINGS
        if unknown:
            raise ValueError(f"not a user setting: {', '.join(sorted(unknown))}")
        return self._put(update)

    def flush(self) -> None:
        """Write everything pending now instead of at the next batch deadline."""
        self._put(_FLUSH)

    @property
    def dropped(self) -> int:
        """Writes lost so far (queue full or rows the database refused)."""
        return self._dropped_put + self._dropped + self._writes.refused

    @property
    def backlog(self) -> int:
        """Writes waiting: handed over but not yet taken, plus taken but not
        yet written.  Approximate, and safe from any thread (lengths only)."""
        return self._cmds.qsize() + len(self._writes.bindings) + len(self._writes.cdrs)

    @property
    def spool_errors(self) -> int:
        """Times the journal could not be written (it is off until it can be again)."""
        return 0 if self._journal is None else self._journal.errors

    @property
    def kept_at_stop(self) -> bool:
        """After a stop that could not write everything: whether the journal
        holds the rest for the next start (False: they are lost)."""
        return self._kept_at_stop

    @property
    def healthy(self) -> bool | None:
        """The database's state as the thread last saw it (None: not reached yet)."""
        return self._ok

    def _put(self, item: object) -> bool:
        try:
            self._cmds.put_nowait(item)
            return True
        except queue.Full:
            if item is not _FLUSH:
                self._dropped_put += 1
            return False

    def stop(self, timeout: float = 10.0) -> bool:
        """Write what is pending (retrying until `timeout`) and end the thread.

        Blocks the caller (the daemon's shutdown path, after the loop has
        stopped serving). True if the thread ended with nothing unwritten.
        """
        if self._thread.ident is None:  # never started: whatever was queued is lost
            return self._cmds.empty()
        if not self._thread.is_alive():
            return self._unwritten == 0
        deadline = time.monotonic() + timeout
        try:
            self._cmds.put(_Stop(deadline), timeout=timeout)
        except queue.Full:
            log.error("DB thread not draining its queue; giving up on a clean stop")
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        return not self._thread.is_alive() and self._unwritten == 0

    # -- the thread -----------------------------------------------------------

    def _emit(self, message: object) -> None:
        self.results.put(message)
        try:
            self._notify()
        except Exception:  # e.g. the loop already closed at shutdown
            log.debug("notify() failed", exc_info=True)

    def _run(self) -> None:
        try:
            try:
                self._engine = make_engine(self._url, timeout=self._timeout)
            except (sa.exc.ArgumentError, ImportError) as exc:  # bad URL, driver missing
                self._emit(DbFatal(f"[database] url: {first_line(exc)}"))
                return
            if self._journal is not None:
                self._journal.open()
            if self._loop():
                self._shutdown()
        except Exception as exc:  # a bug here must not vanish with the thread
            log.exception("DB thread crashed")
            self._emit(DbFatal(f"DB thread crashed: {first_line(exc)}"))
        finally:
            self._unwritten = len(self._writes)
            if self._journal is not None:
                self._journal.close()
            if self._engine is not None:
                self._engine.dispose()

    def _loop(self) -> bool:
        """Serve until asked to stop (True) or until a fatal error was reported (False)."""
        while True:
            now = time.monotonic()
            self._receive(max(0.0, self._next_wake(now) - now))
            if self._stop is not None:
                return True
            now = time.monotonic()
            if self._ok is False and now < self._next_retry:
                continue
            if self._loaded and self._ok and now < self._next_poll and not self._write_due(now):
                continue
            try:
                if not self._loaded:
                    self._load()
                if self._write_due(now) or self._ok is False:
                    self._write_pending()
                if self._ok is False or now >= self._next_poll:
                    self._poll()
            except SchemaError as exc:
                self._emit(DbFatal(str(exc)))
                return False
            except sa.exc.SQLAlchemyError as exc:  # an outage, or e.g. a table dropped by hand
                self._failed(exc)
                continue
            self._succeeded()

    def _next_wake(self, now: float) -> float:
        wake = now + IDLE
        if self._ok is False or not self._loaded:
            return min(wake, self._next_retry)
        wake = min(wake, self._next_poll)
        if self._writes:
            wake = min(wake, self._first_pending + self._batch_interval)
        return wake

    def _receive(self, timeout: float) -> None:
        try:
            item = self._cmds.get(timeout=timeout) if timeout > 0 else self._cmds.get_nowait()
        except queue.Empty:
            return
        self._take(item)
        for _ in range(MAX_DRAIN):
            try:
                item = self._cmds.get_nowait()
            except queue.Empty:
                break
            self._take(item)
        if self._taken:
            if self._journal is not None:
                self._journal.append(self._taken)
            self._taken = []

    def _take(self, item: object) -> None:
        if item is _FLUSH:  # only what is pending now; a later write waits its turn
            self._flush_requested = bool(self._writes)
            return
        if isinstance(item, _Stop):
            self._stop = item
            return
        pending = len(self._writes)
        if isinstance(item, Cdr):
            if pending >= self._write_queue_max:
                self._overflow()
                return
            write = CdrWrite(uuid.uuid4().hex, item)
            self._writes.cdrs.append(write)
            self._taken.append(write)
        elif isinstance(item, UpdateUser):
            user = (item.username, item.domain)
            if user not in self._writes.users and pending >= self._write_queue_max:
                self._overflow()
                return
            self._writes.users.setdefault(user, {}).update(item.values)
        elif isinstance(item, (Save, Delete)):
            key = item.binding.key if isinstance(item, Save) else item.key
            if key not in self._writes.bindings and pending >= self._write_queue_max:
                self._overflow()
                return
            self._writes.bindings[key] = item.binding if isinstance(item, Save) else None
            self._taken.append(item)
        else:
            log.error("DB thread got an unknown command %r", item)
            return
        if pending == 0:
            self._first_pending = time.monotonic()

    def _overflow(self) -> None:
        self._dropped += 1
        if not self._overflow_logged:
            self._overflow_logged = True
            log.error(
                "write queue full (%d pending): dropping registrations and CDRs "
                "until the database is back",
                self._write_queue_max,
            )
            self._emit(self._status(bool(self._ok)))

    def _status(self, ok: bool) -> DbStatus:
        return DbStatus(ok, len(self._writes), self.dropped, self._error, self.spool_errors)

    def _write_due(self, now: float) -> bool:
        writes = self._writes
        if not writes:
            return False
        return (
            self._flush_requested
            or self._stop is not None
            or len(writes.cdrs) >= self._batch_max
            or len(writes.bindings) >= self._batch_max
            or now >= self._first_pending + self._batch_interval
        )

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        error = first_line(exc)
        self._backoff = (
            self._retry_initial
            if self._ok is not False
            else min(self._retry_max, self._backoff * 2)
        )
        self._next_retry = now + self._backoff
        self._writes.recheck = True  # the failure may have come after a commit
        if self._ok is not False:
            log.error("database unavailable: %s (retrying, writes queued)", error)
            self._ok = False
            self._error = error
            self._emit(self._status(False))

    def _succeeded(self) -> None:
        if self._ok is False:
            log.warning("database is back (%d writes dropped so far)", self.dropped)
            self._ok = True
            self._error = None
            self._overflow_logged = False
            self._emit(self._status(True))
        self._ok = True

    # -- loading, polling and writing --------------------------------------------

    def _load(self) -> None:
        assert self._engine is not None
        create_schema(self._engine)
        if self._journal is not None:
            self._journal.replay(self._engine)
        loaded = self._users.load(self._engine)
        self._next_poll = time.monotonic() + self._sync_interval
        self._loaded = True
        self._emit(loaded)

    def _poll(self) -> None:
        assert self._engine is not None
        changed = self._users.poll(self._engine)
        self._next_poll = time.monotonic() + self._sync_interval
        if changed is not None:
            self._emit(changed)

    def _write_pending(self) -> None:
        """Write everything pending; raises SQLAlchemyError to retry later."""
        assert self._engine is not None
        self._writes.write(self._engine)
        self._flush_requested = False
        if self._journal is not None:
            self._journal.committed()

    def _shutdown(self) -> None:
        """Drain the queue and write everything, retrying until the stop deadline."""
        assert self._stop is not None
        deadline = self._stop.deadline
        self._receive(0)
        while self._writes:
            try:
                self._write_pending()
                break
            except sa.exc.SQLAlchemyError as exc:
                self._error = first_line(exc)
                pause = min(max(self._backoff, self._retry_initial), self._retry_max)
                self._backoff = pause * 2
                if time.monotonic() + pause >= deadline - 0.5:
                    break
                time.sleep(pause)
        left_b, left_c = len(self._writes.bindings), len(self._writes.cdrs)
        if left_b or left_c:
            spool = None if self._journal is None else self._journal.spool
            kept = spool is not None and spool.active
            self._kept_at_stop = kept
            log.error(
                "stopping with %d CDRs and %d registration writes unwritten: %s; %s",
                left_c,
                left_b,
                self._error,
                f"kept in the journal {spool.directory} for the next start"
                if kept and spool is not None
                else "lost (no journal)",
            )
