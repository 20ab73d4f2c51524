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

At start the thread creates missing tables, loads every user and every live
registration and sends one `Loaded`; the daemon waits for it before serving.
Then every `sync_interval` it polls for changed users (``updated_at`` with an
overlap, tombstones in ``deleted_users``, and a ``COUNT(*)`` check every
`reconcile_every` polls; see softswitch/db/schema.py) and sends `UsersChanged`
when something changed.

Writes are coalesced and batched: registrations by (user, domain, contact),
last write wins, so a re-REGISTER storm costs one row per contact; CDRs in
arrival order, inserted in one statement per chunk, when `batch_max` are
pending or `batch_interval` after the first one, or at once on `flush()`.

A database outage must not stop calls. When a statement fails for want of a
database (OperationalError and friends) the thread reports ``DbStatus(ok=
False)``, keeps accepting writes up to `write_queue_max` pending (beyond that
they are dropped, counted, and logged once per outage), and retries with
exponential backoff; when a retry succeeds it writes the backlog, reports
``DbStatus(ok=True)`` and polls at once. A row the database refuses on its
own merits (IntegrityError, DataError) is dropped and counted so that it
cannot block the rows behind it.

Every write the thread takes off its queue is journaled first (one write(2)
per wake-up, softswitch/db/spool.py) and the journal is emptied whenever nothing
is pending, so a crash of the daemon loses nothing that was handed over: the
next DB thread replays what it finds in `spool_dir` into the database before
it loads (CDRs carry a ``uid`` so that one committed just before the crash is
not written twice). A journal that cannot be written is logged, counted
(`spool_errors`) and switched off until it can be again; writes go on.

`stop(timeout)` (the SIGTERM path) writes everything pending, retrying until
the deadline; what still cannot be written is logged with its count, and
stays in the journal for the next start.
"""

from __future__ import annotations

import collections
import itertools
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

from softswitch.db.cdrs import to_row as cdr_row
from softswitch.db.messages import DbFatal, DbStatus, Loaded, UsersChanged
from softswitch.db.schema import (
    BINDING_COLUMNS,
    OVERLAP,
    USER_COLUMNS,
    SchemaError,
    binding_from_row,
    binding_row,
    cdrs,
    create_schema,
    deleted_users,
    make_engine,
    registrations,
    user_from_row,
    users,
)
from softswitch.db.spool import CdrWrite, Delete, Record, Save, Spool
from softswitch.db.spool import read as read_journal
from softswitch.model.cdr import Cdr
from softswitch.model.users import Binding, Deleted, User, UserKey, check_binding

log = logging.getLogger("softswitch.db")

#: Rows per INSERT/DELETE statement when writing a backlog.
CHUNK = 1000
#: Commands taken from the queue per wake-up before the thread does DB work.
MAX_DRAIN = 20_000
#: Longest the thread sleeps with nothing to do (it re-checks its timers).
IDLE = 1.0
#: A journal with more records than this and twice what is pending is compacted.
COMPACT_MIN = 10_000
#: Seconds between attempts to switch a failed journal back on.
SPOOL_RETRY = 30.0


# -- commands (main thread -> DB thread) ------------------------------------


@dataclass(frozen=True, slots=True)
class _Stop:
    deadline: float


_FLUSH = object()

BindingKey = tuple[str, str, str]

#: Errors meaning "this row is wrong": drop it, keep going.
_BAD_ROW = (sa.exc.IntegrityError, sa.exc.DataError)


# The statements run again and again, built once.  Building one per batch made reference
# cycles (SQLAlchemy memoizes its cache key on the statement), and this
# thread's objects are frozen with the rest of the heap (softswitch/daemonkit/gctune.py):
# a cycle alive at a re-freeze and dropped later is never reclaimed.
_DELETE_BINDING = sa.delete(registrations).where(
    registrations.c.username == sa.bindparam("k_user"),
    registrations.c.domain == sa.bindparam("k_domain"),
    registrations.c.contact == sa.bindparam("k_contact"),
)
_INSERT_BINDING = sa.insert(registrations)
_INSERT_CDR = sa.insert(cdrs)
_CDR_UIDS = sa.select(cdrs.c.uid).where(cdrs.c.uid.in_(sa.bindparam("uids", expanding=True)))
_COUNT_USERS = sa.select(sa.func.count()).select_from(users)
_USER_IDS = sa.select(users.c.id)
_USERS_BY_ID = sa.select(*USER_COLUMNS).where(users.c.id.in_(sa.bindparam("ids", expanding=True)))
_PURGE_BINDINGS = sa.delete(registrations).where(
    registrations.c.expires_at < sa.bindparam("now", type_=registrations.c.expires_at.type)
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        self._reconcile_every = max(1, reconcile_every)
        self._purge_every = max(1, purge_every)
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._timeout = timeout
        self._cmds: queue.Queue[Any] = queue.Queue(maxsize=write_queue_max)
        self._thread = threading.Thread(target=self._run, name="softswitch-db", daemon=True)
        self._dropped_put = 0  # written by the main thread only
        self._unwritten = 0  # set by the thread when it exits
        # Everything below belongs to the DB thread.
        self._engine: sa.engine.Engine | None = None
        self._bindings: dict[BindingKey, Binding | None] = {}
        self._cdrs: collections.deque[CdrWrite] = collections.deque()
        self._spool = None if spool_dir is None else Spool(spool_dir)
        self._leftovers: list[Path] = []
        self._journal: list[Record] = []  # taken in this wake-up, not yet journaled
        self._spool_errors = 0
        self._spool_retry = 0.0
        self._spool_logged = False
        self._recheck = False  # a CDR batch may have committed unseen: skip known uids
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
        self._polls = 0
        self._kept_at_stop = False
        self._last_poll_wall = 0.0
        self._known: dict[int, UserKey] = {}  # user id -> key, for deletions
        self._seen: dict[int, float] = {}  # user id -> updated_at sent, within OVERLAP
        self._seen_tombs: dict[int, float] = {}  # tombstone id -> deleted_at, within OVERLAP

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

    def flush(self) -> None:
        """Write everything pending now instead of at the next batch deadline."""
        self._put(_FLUSH)

    @property
    def dropped(self) -> int:
        """Writes lost so far (queue full or rows the database refused)."""
        return self._dropped_put + self._dropped

    @property
    def backlog(self) -> int:
        """Writes waiting: handed over but not yet taken, plus taken but not
        yet written.  Approximate, and safe from any thread (lengths only)."""
        return self._cmds.qsize() + len(self._bindings) + len(self._cdrs)

    @property
    def spool_errors(self) -> int:
        """Times the journal could not be written (it is off until it can be again)."""
        return self._spool_errors

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
                self._emit(DbFatal(f"[database] url: {_first_line(exc)}"))
                return
            if self._spool is not None:
                self._leftovers = self._spool.leftovers()
                if not self._spool.active:
                    self._spool_failed()
            if self._loop():
                self._shutdown()
        except Exception as exc:  # a bug here must not vanish with the thread
            log.exception("DB thread crashed")
            self._emit(DbFatal(f"DB thread crashed: {_first_line(exc)}"))
        finally:
            self._unwritten = len(self._bindings) + len(self._cdrs)
            if self._spool is not None:
                self._spool.close()
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
        if self._bindings or self._cdrs:
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
        if self._journal:
            self._write_journal(self._journal)
            self._journal = []

    def _take(self, item: object) -> None:
        if item is _FLUSH:  # only what is pending now; a later write waits its turn
            self._flush_requested = bool(self._bindings or self._cdrs)
            return
        if isinstance(item, _Stop):
            self._stop = item
            return
        pending = len(self._bindings) + len(self._cdrs)
        if isinstance(item, Cdr):
            if pending >= self._write_queue_max:
                self._overflow()
                return
            write = CdrWrite(uuid.uuid4().hex, item)
            self._cdrs.append(write)
            self._journal.append(write)
        elif isinstance(item, (Save, Delete)):
            key = item.binding.key if isinstance(item, Save) else item.key
            if key not in self._bindings and pending >= self._write_queue_max:
                self._overflow()
                return
            self._bindings[key] = item.binding if isinstance(item, Save) else None
            self._journal.append(item)
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

    def _pending(self) -> int:
        return len(self._bindings) + len(self._cdrs)

    def _status(self, ok: bool) -> DbStatus:
        return DbStatus(ok, self._pending(), self.dropped, self._error, self._spool_errors)

    # -- the journal ----------------------------------------------------------------

    def _write_journal(self, records: list[Record]) -> None:
        """Journal what was just taken, before any of it can be committed."""
        spool = self._spool
        if spool is None:
            return
        if spool.active:
            ok = spool.append(records)
            if ok and spool.records > max(COMPACT_MIN, 2 * self._pending()):
                ok = spool.restart(self._snapshot())
        elif time.monotonic() >= self._spool_retry:
            ok = spool.restart(self._snapshot())  # everything pending, these included
            if ok:
                log.warning("journal %s written again", spool.directory)
                self._spool_logged = False
        else:
            return
        if not ok:
            self._spool_failed()

    def _snapshot(self) -> list[Record]:
        """Everything pending, as journal records (one per binding key)."""
        records: list[Record] = [
            Save(b) if b is not None else Delete(k) for k, b in self._bindings.items()
        ]
        records.extend(self._cdrs)
        return records

    def _journal_committed(self) -> None:
        """Nothing is pending: the journal holds nothing the database lacks."""
        spool = self._spool
        if spool is None:
            return
        if spool.active:
            if spool.clear():
                return
        elif time.monotonic() < self._spool_retry or spool.restart([]):
            if spool.active:
                log.warning("journal %s written again", spool.directory)
                self._spool_logged = False
            return
        self._spool_failed()

    def _spool_failed(self) -> None:
        assert self._spool is not None
        self._spool_errors += 1
        self._spool_retry = time.monotonic() + SPOOL_RETRY
        if not self._spool_logged:
            self._spool_logged = True
            log.error(
                "journal off: %s; pending registrations and CDRs are held in memory "
                "only (a crash now loses them); retrying every %.0f s",
                self._spool.error,
                SPOOL_RETRY,
            )
            self._emit(self._status(bool(self._ok)))

    def _replay(self) -> None:
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
            bindings: dict[BindingKey, Binding | None] = {}
            writes: list[CdrWrite] = []
            for record in records:
                if isinstance(record, CdrWrite):
                    writes.append(record)
                elif isinstance(record, Save):
                    bindings.pop(record.binding.key, None)  # keep the order of the last write
                    bindings[record.binding.key] = record.binding
                else:
                    bindings.pop(record.key, None)
                    bindings[record.key] = None
            items = list(bindings.items())
            self._recheck = True
            for i in range(0, len(items), CHUNK):
                self._write_rows(items[i : i + CHUNK], self._write_bindings, lambda _: None)
            for i in range(0, len(writes), CHUNK):
                self._write_rows(writes[i : i + CHUNK], self._write_cdrs, lambda _: None)
            if self._spool is not None:
                self._spool.remove(path)
            self._leftovers.pop(0)
            log.warning(
                "replayed journal %s left by an earlier run: %d registration writes, %d CDRs",
                path.name,
                len(items),
                len(writes),
            )

    def _write_due(self, now: float) -> bool:
        if not (self._bindings or self._cdrs):
            return False
        return (
            self._flush_requested
            or self._stop is not None
            or len(self._cdrs) >= self._batch_max
            or len(self._bindings) >= self._batch_max
            or now >= self._first_pending + self._batch_interval
        )

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        error = _first_line(exc)
        self._backoff = (
            self._retry_initial
            if self._ok is not False
            else min(self._retry_max, self._backoff * 2)
        )
        self._next_retry = now + self._backoff
        self._recheck = True  # the failure may have come after a commit
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

    # -- loading and polling ----------------------------------------------------

    def _load(self) -> None:
        assert self._engine is not None
        create_schema(self._engine)
        self._replay()
        started = time.time()
        since = started - OVERLAP
        loaded: dict[UserKey, User] = {}
        known: dict[int, UserKey] = {}
        seen: dict[int, float] = {}
        bindings: list[Binding] = []
        with self._engine.connect() as conn:
            stream = conn.execution_options(stream_results=True)
            result = stream.execute(sa.select(*USER_COLUMNS))
            for part in result.partitions(5000):
                for row in part:
                    user = user_from_row(row)
                    key = (user.username, user.domain)
                    loaded[key] = user
                    known[user.id] = key
                    if row[-1] >= since:
                        seen[user.id] = row[-1]
            query = sa.select(*BINDING_COLUMNS).where(registrations.c.expires_at > started)
            for part in stream.execute(query).partitions(5000):
                bindings.extend(binding_from_row(row) for row in part)
        self._known, self._seen = known, seen
        self._last_poll_wall = started
        self._next_poll = time.monotonic() + self._sync_interval
        self._loaded = True
        log.info("loaded %d users and %d registrations", len(loaded), len(bindings))
        self._emit(Loaded(loaded, bindings))

    def _poll(self) -> None:
        assert self._engine is not None
        started = time.time()
        since = self._last_poll_wall - OVERLAP
        self._polls += 1
        changed: list[User] = []
        deleted: list[Deleted] = []
        with self._engine.connect() as conn:
            tombs = conn.execute(
                sa.select(deleted_users).where(deleted_users.c.deleted_at >= since)
            ).all()
            rows = conn.execute(sa.select(*USER_COLUMNS).where(users.c.updated_at >= since)).all()
            for t in tombs:
                if t.id in self._seen_tombs:
                    continue
                self._seen_tombs[t.id] = t.deleted_at
                if self._known.pop(t.user_id, None) is not None:
                    deleted.append(Deleted(t.username, t.domain, t.user_id))
            for row in rows:
                if self._seen.get(row[0]) == row[-1]:
                    continue
                self._seen[row[0]] = row[-1]
                changed.append(self._remember(user_from_row(row), deleted))
            if self._polls % self._reconcile_every == 0:
                self._reconcile(conn, changed, deleted)
        if self._polls % self._purge_every == 0:
            with self._engine.begin() as conn:
                conn.execute(_PURGE_BINDINGS, {"now": started})
        self._last_poll_wall = started
        self._next_poll = time.monotonic() + self._sync_interval
        horizon = started - OVERLAP
        for seen in (self._seen, self._seen_tombs):
            for key in [k for k, v in seen.items() if v < horizon]:
                del seen[key]
        if changed or deleted:
            self._emit(UsersChanged(tuple(changed), tuple(deleted)))

    def _remember(self, user: User, deleted: list[Deleted]) -> User:
        key = (user.username, user.domain)
        old = self._known.get(user.id)
        if old is not None and old != key:  # renamed with SQL: the old name is gone
            deleted.append(Deleted(old[0], old[1], user.id))
        self._known[user.id] = key
        return user

    def _reconcile(self, conn: Any, changed: list[User], deleted: list[Deleted]) -> None:
        """Catch rows inserted or deleted by hand without the change contract."""
        count = conn.execute(_COUNT_USERS).scalar()
        if count == len(self._known):
            return
        ids = set(conn.execute(_USER_IDS).scalars())
        for gone in [i for i in self._known if i not in ids]:
            username, domain = self._known.pop(gone)
            deleted.append(Deleted(username, domain, gone))
        missing = sorted(ids.difference(self._known))
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            for row in conn.execute(_USERS_BY_ID, {"ids": chunk}):
                changed.append(self._remember(user_from_row(row), deleted))
        log.warning("user table changed without updated_at/tombstones; resynchronised")

    # -- writing ------------------------------------------------------------------

    def _write_pending(self) -> None:
        """Write bindings then CDRs in chunks; raises SQLAlchemyError to retry later.

        An item leaves the pending buffers only once it is committed (or
        refused for good), so an outage half-way loses and repeats nothing.
        """
        assert self._engine is not None
        while self._bindings:
            chunk = list(itertools.islice(self._bindings.items(), CHUNK))
            self._write_rows(chunk, self._write_bindings, lambda item: self._bindings.pop(item[0]))
        while self._cdrs:
            batch = list(itertools.islice(self._cdrs, CHUNK))
            self._write_rows(batch, self._write_cdrs, lambda _: self._cdrs.popleft())
        self._flush_requested = False
        self._recheck = False
        self._journal_committed()

    def _write_rows(
        self,
        chunk: list[Any],
        write: Callable[[Any, list[Any]], None],
        done: Callable[[Any], object],
    ) -> None:
        """One transaction for the chunk; row by row if the database refuses a row."""
        assert self._engine is not None
        try:
            with self._engine.begin() as conn:
                write(conn, chunk)
        except (*_BAD_ROW, ValueError, TypeError):
            pass
        else:
            for item in chunk:
                done(item)
            return
        for item in chunk:
            try:
                with self._engine.begin() as conn:
                    write(conn, [item])
            except (*_BAD_ROW, ValueError, TypeError) as exc:
                self._dropped += 1
                log.error("database refused a row, dropped: %s (%r)", _first_line(exc), item)
            done(item)

    @staticmethod
    def _write_bindings(
        conn: Any, chunk: list[tuple[tuple[str, str, str], Binding | None]]
    ) -> None:
        conn.execute(
            _DELETE_BINDING,
            [{"k_user": k[0], "k_domain": k[1], "k_contact": k[2]} for k, _ in chunk],
        )
        rows = [binding_row(b) for _, b in chunk if b is not None]
        if rows:
            conn.execute(_INSERT_BINDING, rows)

    def _write_cdrs(self, conn: Any, batch: list[CdrWrite]) -> None:
        if self._recheck:  # replaying, or retrying after a commit that may have happened
            known = set(conn.execute(_CDR_UIDS, {"uids": [w.uid for w in batch]}).scalars())
            batch = [w for w in batch if w.uid not in known]
            if not batch:
                return
        conn.execute(_INSERT_CDR, [{**cdr_row(w.cdr), "uid": w.uid} for w in batch])

    def _shutdown(self) -> None:
        """Drain the queue and write everything, retrying until the stop deadline."""
        assert self._stop is not None
        deadline = self._stop.deadline
        self._receive(0)
        while self._bindings or self._cdrs:
            try:
                self._write_pending()
                break
            except sa.exc.SQLAlchemyError as exc:
                self._error = _first_line(exc)
                pause = min(max(self._backoff, self._retry_initial), self._retry_max)
                self._backoff = pause * 2
                if time.monotonic() + pause >= deadline - 0.5:
                    break
                time.sleep(pause)
        left_b, left_c = len(self._bindings), len(self._cdrs)
        if left_b or left_c:
            spool = self._spool
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
