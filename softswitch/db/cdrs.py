"""CDRs as rows of the ``cdrs`` table, and back.

Times are epoch seconds in memory (`Cdr`); the table stores them as UTC
DATETIME so that billing queries read naturally in SQL.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from softswitch.model.cdr import Cdr, Disposition

#: Longest text the cdrs table holds per column; longer values are cut so a
#: strange caller URI can never make a whole batch of CDRs fail to insert.
TEXT_LIMITS = {
    "call_id": 255,
    "caller": 255,
    "callee": 255,
    "bearer": 64,
    "recording": 512,
    "forwarded_from": 255,
}


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
        "forwarded_from": _cut("forwarded_from", cdr.forwarded_from),
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
        forwarded_from=m.get("forwarded_from"),
    )
