"""Call detail records: what one finished call leaves behind.

The call state machine builds a `Cdr` when a call ends (answered or not) and
hands it to the DB thread with `DbThread.write_cdr()`; the DB thread batches
them into the `cdrs` table (see softswitch/userdb.py). A `Cdr` is a frozen,
slotted value: it crosses from the main thread to the DB thread, so it must
not be mutable, and the control daemon may hold thousands of them queued while
the database is down, so it must be small.

Times are epoch seconds (`time.time()` of the main loop) in memory; the table
stores them as UTC DATETIME so that billing queries read naturally in SQL.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Disposition(StrEnum):
    """How a call ended, from the caller's point of view."""

    ANSWERED = "answered"  # 200 OK to the INVITE; duration counts from then
    BUSY = "busy"  # 486/600 from every callee
    NO_ANSWER = "no-answer"  # rang until no_answer_timeout (480) or 408
    CANCELLED = "cancelled"  # the caller hung up before an answer
    FAILED = "failed"  # our side or the network failed (5xx, bearer lost, timeouts)
    REJECTED = "rejected"  # refused before ringing: auth, unknown user, limits (4xx)


#: Longest text the cdrs table holds per column; longer values are cut so a
#: strange caller URI can never make a whole batch of CDRs fail to insert.
TEXT_LIMITS = {
    "call_id": 255,
    "caller": 255,
    "callee": 255,
    "bearer": 64,
    "recording": 512,
}


@dataclass(frozen=True, slots=True)
class Cdr:
    """One finished call. Times are epoch seconds; `answer` is None if never answered."""

    call_id: str
    caller: str
    callee: str
    start: float
    answer: float | None
    end: float | None
    disposition: Disposition
    sip_code: int
    bearer: str | None = None
    recording: str | None = None
    a_packets: int = 0
    a_lost: int = 0
    a_jitter_ms: float = 0.0
    b_packets: int = 0
    b_lost: int = 0
    b_jitter_ms: float = 0.0

    @property
    def duration(self) -> float:
        """Billable seconds: answer to end, 0 for a call that was never answered."""
        if self.answer is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.answer)


def _utc(epoch: float | None) -> dt.datetime | None:
    if epoch is None:
        return None
    # Naive UTC: DATETIME columns carry no zone on MariaDB, and SQLite stores text.
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.UTC).timestamp()


def _cut(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    limit = TEXT_LIMITS[name]
    return value if len(value) <= limit else value[:limit]


def to_row(cdr: Cdr) -> dict[str, Any]:
    """The `cdrs` table row for `cdr` (column name -> value)."""
    return {
        "call_id": _cut("call_id", cdr.call_id),
        "caller": _cut("caller", cdr.caller),
        "callee": _cut("callee", cdr.callee),
        "start_time": _utc(cdr.start),
        "answer_time": _utc(cdr.answer),
        "end_time": _utc(cdr.end),
        "duration": round(cdr.duration, 3),
        "disposition": Disposition(cdr.disposition).value,
        "sip_code": int(cdr.sip_code),
        "bearer": _cut("bearer", cdr.bearer),
        "recording": _cut("recording", cdr.recording),
        "a_packets": int(cdr.a_packets),
        "a_lost": int(cdr.a_lost),
        "a_jitter_ms": float(cdr.a_jitter_ms),
        "b_packets": int(cdr.b_packets),
        "b_lost": int(cdr.b_lost),
        "b_jitter_ms": float(cdr.b_jitter_ms),
    }


def from_row(row: Any) -> Cdr:
    """A `Cdr` back from a `cdrs` row (a SQLAlchemy Row or a mapping)."""
    m = row._mapping if hasattr(row, "_mapping") else row
    return Cdr(
        call_id=m["call_id"],
        caller=m["caller"],
        callee=m["callee"],
        start=_epoch(m["start_time"]) or 0.0,
        answer=_epoch(m["answer_time"]),
        end=_epoch(m["end_time"]),
        disposition=Disposition(m["disposition"]),
        sip_code=m["sip_code"],
        bearer=m["bearer"],
        recording=m["recording"],
        a_packets=m["a_packets"],
        a_lost=m["a_lost"],
        a_jitter_ms=m["a_jitter_ms"],
        b_packets=m["b_packets"],
        b_lost=m["b_lost"],
        b_jitter_ms=m["b_jitter_ms"],
    )
