"""The DB thread's write-ahead journal: pending writes that survive a crash.

Theory of operation
-------------------
The DB thread (softswitch/db/thread.py) holds registration writes and CDRs in
memory until the database commits them; a crash of softswitch-control, or a
stop while the database is down, would lose them (DESIGN.md principle 6). So
every write the thread takes off its queue is first appended here, one JSON
line per write, and the journal is emptied once the database has everything:

- `Spool.append` writes one batch (everything taken in one wake-up) with a
  single write(2). No fsync: a process crash keeps the page cache, and fsync
  per batch would tie call throughput to the disk. `Spool.close` (a clean
  stop) fsyncs.
- `Spool.clear` truncates the file when nothing is pending any more, which in
  normal operation is after every batch: the journal stays small.
- `Spool.restart` writes what is pending now into a new file and removes the
  old one: used to compact a journal that grew during an outage (re-REGISTERs
  keep appending while memory coalesces them) and to switch the journal on
  again after a failure.
- `Spool.leftovers` lists the files a previous run left behind; the next DB
  thread replays them into the database (`read`) before it loads, then
  removes them. Replay is idempotent: bindings are replayed in order (a save
  or delete of a row is the same however often it is done) and every CDR
  carries a `uid` that the ``cdrs`` table keeps unique. The live file is
  held with flock(2), which dies with the process: a file still locked
  belongs to another running daemon pointed at the same directory, and is
  left alone.

A record is ``{"seq": N, "op": "save" | "delete" | "cdr", ...}``. Bindings
use `binding_row` (its keys are `Binding`'s fields); CDRs are `Cdr`'s fields
as they are in memory (epoch seconds, not the table's DATETIMEs), because
`cdr.to_row` also cuts texts and refuses a bad disposition, which is the
database write's business, not the journal's.

Any OSError switches the journal off (`Spool.error` says why) after removing
its file, which would be stale from then on; the caller logs, counts and goes
on without it, and tries `restart` again later. Calls never wait for it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from softswitch.db.schema import binding_row
from softswitch.model.cdr import Cdr, Disposition
from softswitch.model.users import Binding

log = logging.getLogger("softswitch.db")

PREFIX = "journal-"
SUFFIX = ".jsonl"


@dataclass(frozen=True, slots=True)
class Save:
    """Insert or replace a binding."""

    binding: Binding


@dataclass(frozen=True, slots=True)
class Delete:
    """Forget a binding: (username, domain, contact)."""

    key: tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class CdrWrite:
    """A CDR and the id that makes writing it twice harmless (``cdrs.uid``)."""

    uid: str
    cdr: Cdr


Record = Save | Delete | CdrWrite


def encode(seq: int, record: Record) -> str:
    """One journal line (with its newline) for `record`."""
    body: dict[str, Any]
    if isinstance(record, CdrWrite):
        body = {"seq": seq, "op": "cdr", "uid": record.uid, "cdr": asdict(record.cdr)}
    elif isinstance(record, Save):
        body = {"seq": seq, "op": "save", "binding": binding_row(record.binding)}
    else:
        body = {"seq": seq, "op": "delete", "key": list(record.key)}
    # ASCII-only: a surrogate-escaped byte in a SIP header still round-trips.
    return json.dumps(body, separators=(",", ":")) + "\n"


def decode(line: str) -> tuple[int, Record]:
    """(seq, record) from one journal line; ValueError if it is not one."""
    try:
        body = json.loads(line)
        seq, op = body["seq"], body["op"]
        if not isinstance(seq, int):
            raise ValueError("seq is not an integer")
        if op == "cdr":
            fields = dict(body["cdr"])
            disposition = fields["disposition"]
            if disposition in Disposition.__members__.values():
                fields["disposition"] = Disposition(disposition)
            return seq, CdrWrite(str(body["uid"]), Cdr(**fields))
        if op == "save":
            return seq, Save(Binding(**body["binding"]))
        if op == "delete":
            username, domain, contact = body["key"]
            return seq, Delete((username, domain, contact))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a journal record: {exc}") from None
    raise ValueError(f"unknown op {op!r}")


def read(path: Path) -> list[Record]:
    """The records in a journal file, in order; unreadable lines are skipped
    with a warning (a crash in the middle of a write leaves a truncated last
    line). OSError if the file cannot be read."""
    numbered: list[tuple[int, Record]] = []
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw:
            continue
        try:
            numbered.append(decode(raw.decode("ascii")))
        except ValueError as exc:  # UnicodeDecodeError is one
            last = number == len(lines)  # no newline after it: the write was cut short
            log.warning(
                "journal %s line %d: %s skipped (%s)",
                path,
                number,
                "truncated last record" if last else "unreadable record",
                exc,
            )
    numbered.sort(key=lambda item: item[0])  # stable: equal seqs keep file order
    return [record for _, record in numbered]


class Spool:
    """The journal directory: one live file of this run, leftovers of earlier runs.

    Used by the DB thread only. Every method that touches the disk returns
    False (or an empty list) on OSError, with the journal switched off and
    `error` set; nothing here raises for I/O.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        #: Records in the live file since it was last cleared or restarted.
        self.records = 0
        #: Why the journal is off (None while it works).
        self.error: str | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        self._seq = 0
        self._last_name = 0

    @property
    def active(self) -> bool:
        return self.error is None

    def leftovers(self) -> list[Path]:
        """Journal files already in the directory (an earlier run's), oldest first.

        Creates the directory if it is missing. Call before the first append:
        this run's own file is not a leftover.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            found = [p for p in self.directory.iterdir() if _is_journal(p.name)]
        except OSError as exc:
            self._fail(exc)
            return []
        return sorted((p for p in found if not _in_use(p)), key=lambda p: p.name)

    def append(self, records: Iterable[Record]) -> bool:
        """Journal one batch with one write(2). False if the journal is (now) off."""
        if self.error is not None:
            return False
        lines = [encode(self._next_seq(), r) for r in records]
        if not lines:
            return True
        try:
            if self._fd is None:
                self._fd, self._path = self._create()
            _write_all(self._fd, "".join(lines).encode("ascii"))
        except OSError as exc:
            self._fail(exc)
            return False
        self.records += len(lines)
        return True

    def clear(self) -> bool:
        """Everything journaled is committed: empty the live file."""
        if self._fd is None or self.records == 0:
            return self.error is None
        try:
            os.ftruncate(self._fd, 0)
        except OSError as exc:
            self._fail(exc)
            return False
        self.records = 0
        return True

    def restart(self, records: Iterable[Record]) -> bool:
        """A new live file holding exactly `records` (all that is pending);
        the old one is removed once the new one is written. Also switches the
        journal back on after a failure."""
        lines = [encode(self._next_seq(), r) for r in records]
        old = (self._fd, self._path)
        try:
            fd, path = self._create()
        except OSError as exc:
            self._fail(exc)
            return False
        try:
            _write_all(fd, "".join(lines).encode("ascii"))
        except OSError as exc:
            _discard(fd, path)
            self._fail(exc)
            return False
        self._fd, self._path = fd, path
        self.records = len(lines)
        self.error = None
        if old[0] is not None and old[1] is not None:
            _discard(old[0], old[1])
        return True

    def close(self) -> None:
        """A clean stop: fsync what is left for the next run, or remove an empty file."""
        if self._fd is None or self._path is None:
            return
        fd, path = self._fd, self._path
        self._fd = self._path = None
        try:
            if self.records == 0:
                os.close(fd)
                path.unlink()
                return
            os.fsync(fd)
            os.close(fd)
        except OSError as exc:
            self.error = f"{path}: {exc.strerror or exc}"
            log.error("journal %s", self.error)

    def remove(self, path: Path) -> bool:
        """Delete a leftover once it is replayed. False (logged) if it stays."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("journal %s not removed after replay: %s", path, exc.strerror or exc)
            return False
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _create(self) -> tuple[int, Path]:
        # Names sort in creation order, across runs (the clock) and within one.
        name = max(time.time_ns(), self._last_name + 1)
        self._last_name = name
        path = self.directory / f"{PREFIX}{name:020d}-{os.getpid()}{SUFFIX}"
        # Again here: a directory unusable at start may have been mended since.
        self.directory.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(path, flags, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            _discard(fd, path)
            raise
        return fd, path

    def _fail(self, exc: OSError) -> None:
        where = exc.filename or self._path or self.directory
        self.error = f"{where}: {exc.strerror or exc}"
        # Whatever the file holds is stale from now on: writes committed
        # without the journal would be undone by replaying it.
        if self._fd is not None and self._path is not None:
            _discard(self._fd, self._path)
        self._fd = self._path = None
        self.records = 0


def _is_journal(name: str) -> bool:
    return name.startswith(PREFIX) and name.endswith(SUFFIX)


def _in_use(path: Path) -> bool:
    """True if a running process holds `path` (its live journal)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # gone meanwhile, or unreadable: read() will say so
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning(
            "journal %s belongs to a running process (two daemons, one spool_dir?); not replayed",
            path,
        )
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _discard(fd: int, path: Path) -> None:
    """Close and remove a journal file, as far as the disk allows."""
    try:
        os.ftruncate(fd, 0)  # frees the space even if the unlink fails
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass
    try:
        path.unlink()
    except OSError as exc:
        log.error("journal %s could not be removed: %s", path, exc.strerror or exc)
