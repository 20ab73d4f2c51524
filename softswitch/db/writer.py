"""The DB thread's pending writes and how they reach the database.

Registration writes are coalesced by (user, domain, contact), last write
wins, so a re-REGISTER storm costs one row per contact; CDRs keep their
arrival order. `PendingWrites.write` commits them in chunks of `CHUNK` rows,
one statement per chunk; an item leaves the buffers only once it is
committed, so an outage half-way loses and repeats nothing. A row the
database refuses on its own merits (IntegrityError, DataError) is dropped
and counted so that it cannot block the rows behind it.

Apart from the thread (softswitch/db/thread.py), which decides *when* to
write, because what is written and how a refusal is handled is the same for
live writes and for a journal replayed at start (softswitch/db/journal.py).
Runs on the DB thread only; the main thread reads lengths and counters.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from softswitch.db.cdrs import to_row as cdr_row
from softswitch.db.schema import binding_row, cdrs, registrations, users
from softswitch.db.spool import CdrWrite, Delete, Record, Save
from softswitch.model.users import Binding

log = logging.getLogger("softswitch.db")

#: Rows per INSERT/DELETE statement when writing a backlog.
CHUNK = 1000

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


def first_line(exc: BaseException) -> str:
    """An exception's message in one line, for logs and DbStatus."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PendingWrites:
    """Writes taken from the queue and not yet committed."""

    def __init__(self) -> None:
        self.bindings: dict[BindingKey, Binding | None] = {}
        #: (username, domain) -> columns to set (feature codes; not journaled)
        self.users: dict[tuple[str, str], dict[str, Any]] = {}
        self.cdrs: collections.deque[CdrWrite] = collections.deque()
        #: Rows the database refused (counted in DbThread.dropped).
        self.refused = 0
        #: A CDR batch may have committed unseen: skip uids the table has.
        self.recheck = False

    def __len__(self) -> int:
        return len(self.bindings) + len(self.cdrs) + len(self.users)

    def snapshot(self) -> list[Record]:
        """Everything pending, as journal records (one per binding key)."""
        records: list[Record] = [
            Save(b) if b is not None else Delete(k) for k, b in self.bindings.items()
        ]
        records.extend(self.cdrs)
        return records

    def write(self, engine: sa.engine.Engine) -> None:
        """Write bindings then CDRs in chunks; raises SQLAlchemyError to retry later.

        An item leaves the pending buffers only once it is committed (or
        refused for good), so an outage half-way loses and repeats nothing.
        """
        while self.bindings:
            chunk = list(itertools.islice(self.bindings.items(), CHUNK))
            self._write_rows(
                engine, chunk, self._write_bindings, lambda item: self.bindings.pop(item[0])
            )
        while self.cdrs:
            batch = list(itertools.islice(self.cdrs, CHUNK))
            self._write_rows(engine, batch, self._write_cdrs, lambda _: self.cdrs.popleft())
        while self.users:
            key = next(iter(self.users))
            item = (key, self.users[key])
            self._write_rows(engine, [item], self._write_users, lambda i: self.users.pop(i[0]))
        self.recheck = False

    def replay(self, engine: sa.engine.Engine, records: list[Record]) -> tuple[int, int]:
        """Write a journal an earlier run left, coalesced like live writes;
        raises SQLAlchemyError to be retried (replaying is idempotent).
        Returns (registration writes, CDRs) written."""
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
        self.recheck = True
        for i in range(0, len(items), CHUNK):
            self._write_rows(engine, items[i : i + CHUNK], self._write_bindings, lambda _: None)
        for i in range(0, len(writes), CHUNK):
            self._write_rows(engine, writes[i : i + CHUNK], self._write_cdrs, lambda _: None)
        return len(items), len(writes)

    def _write_rows(
        self,
        engine: sa.engine.Engine,
        chunk: list[Any],
        write: Callable[[Any, list[Any]], None],
        done: Callable[[Any], object],
    ) -> None:
        """One transaction for the chunk; row by row if the database refuses a row."""
        try:
            with engine.begin() as conn:
                write(conn, chunk)
        except (*_BAD_ROW, ValueError, TypeError):
            pass
        else:
            for item in chunk:
                done(item)
            return
        for item in chunk:
            try:
                with engine.begin() as conn:
                    write(conn, [item])
            except (*_BAD_ROW, ValueError, TypeError) as exc:
                self.refused += 1
                log.error("database refused a row, dropped: %s (%r)", first_line(exc), item)
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

    @staticmethod
    def _write_users(conn: Any, chunk: list[tuple[tuple[str, str], dict[str, Any]]]) -> None:
        # Stamped like softswitchctl's writes (schema.py): the sync brings it back.
        for (username, domain), values in chunk:
            conn.execute(
                sa.update(users)
                .where(users.c.username == username, users.c.domain == domain)
                .values(updated_at=time.time(), **values)
            )

    def _write_cdrs(self, conn: Any, batch: list[CdrWrite]) -> None:
        if self.recheck:  # replaying, or retrying after a commit that may have happened
            known = set(conn.execute(_CDR_UIDS, {"uids": [w.uid for w in batch]}).scalars())
            batch = [w for w in batch if w.uid not in known]
            if not batch:
                return
        conn.execute(_INSERT_CDR, [{**cdr_row(w.cdr), "uid": w.uid} for w in batch])
