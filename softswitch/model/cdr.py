"""Call detail records: what one finished call leaves behind.

The call state machine builds a `Cdr` when a call ends (answered or not) and
hands it to the DB thread with `DbThread.write_cdr()`; the DB thread batches
them into the `cdrs` table (see softswitch/db/schema.py). A `Cdr` is a frozen,
slotted value: it crosses from the main thread to the DB thread, so it must
not be mutable, and the control daemon may hold thousands of them queued while
the database is down, so it must be small.

Times are epoch seconds (`time.time()` of the main loop) in memory; the table
stores them as UTC DATETIME so that billing queries read naturally in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Disposition(StrEnum):
    """How a call ended, from the caller's point of view."""

    ANSWERED = "answered"  # 200 OK to the INVITE; duration counts from then
    BUSY = "busy"  # 486/600 from every callee
    NO_ANSWER = "no-answer"  # rang until no_answer_timeout (480) or 408
    CANCELLED = "cancelled"  # the caller hung up before an answer
    FAILED = "failed"  # our side or the network failed (5xx, bearer lost, timeouts)
    REJECTED = "rejected"  # refused before ringing: auth, unknown user, limits (4xx)


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
    #: the dialled user@domain when the call was forwarded (then `callee` is the target)
    forwarded_from: str | None = None

    @property
    def duration(self) -> float:
        """Billable seconds: answer to end, 0 for a call that was never answered."""
        if self.answer is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.answer)
