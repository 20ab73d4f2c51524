"""One heap of deadlines for timers that their owners arm, re-arm and cancel.

Both sans-I/O machines with timers keep them this way: the SIP transaction
layer (timers A-M of every transaction) and the B2BUA's call table (no-answer,
2xx re-sending, bearer moves).  ``heapq`` cannot delete an entry, so a timer
is cancelled lazily: each owner keeps a dict ``kind -> token`` of its armed
timers, a heap entry fires only while its token is still the owner's, and
the others (re-armed or cancelled: *stale*) are skipped when they reach the
top.  Cancelled timers would otherwise sit in the heap until their deadline
(up to 64*T1 = 32 s), so the heap is compacted once they are most of it.

The owner's dict is found with ``armed(owner)`` (an ``attrgetter``), so an
owner pays no more than one dict in its slots.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["TimerHeap"]

O = TypeVar("O")  # noqa: E741 - the owner of timers
K = TypeVar("K")  # a timer's kind

#: Compact when more than this many stale entries are over half of the heap.
COMPACT_MIN = 256


class TimerHeap(Generic[O, K]):
    """Deadlines of ``(owner, kind)`` timers, cancelled lazily (see the module doc)."""

    __slots__ = ("_armed", "_heap", "_seq", "_stale")

    def __init__(self, armed: Callable[[O], dict[K, int]]) -> None:
        self._armed = armed
        self._heap: list[tuple[float, int, O, K]] = []
        self._seq = 0
        self._stale = 0

    def __len__(self) -> int:
        """Entries in the heap, stale ones included: a bound on what can fire."""
        return len(self._heap)

    def arm(self, owner: O, kind: K, deadline: float) -> None:
        """(Re)arm ``kind`` for ``owner``; an earlier arming of it no longer fires."""
        timers = self._armed(owner)
        if kind in timers:
            self._stale += 1
        self._seq += 1
        timers[kind] = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, owner, kind))

    def disarm(self, owner: O, kind: K) -> None:
        """Cancel ``kind`` for ``owner`` if it is armed."""
        if self._armed(owner).pop(kind, None) is not None:
            self._stale += 1
            self._compact()

    def disarm_all(self, owner: O) -> None:
        """Cancel every timer of ``owner`` (it is going away)."""
        timers = self._armed(owner)
        self._stale += len(timers)
        timers.clear()
        self._compact()

    def next_deadline(self) -> float | None:
        """The earliest deadline of any armed timer, or None."""
        heap, armed = self._heap, self._armed
        while heap:  # bounded: every turn pops a stale entry
            deadline, seq, owner, kind = heap[0]
            if armed(owner).get(kind) == seq:
                return deadline
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def pop_due(self, now: float) -> tuple[O, K] | None:
        """The next timer due at ``now``, disarmed, or None when none is.

        One at a time: what fires may arm or cancel others."""
        heap, armed = self._heap, self._armed
        while heap and heap[0][0] <= now:  # bounded: every turn pops an entry
            _, seq, owner, kind = heapq.heappop(heap)
            timers = armed(owner)
            if timers.get(kind) != seq:
                self._stale -= 1
                continue
            del timers[kind]
            return owner, kind
        return None

    def _compact(self) -> None:
        # In place: a caller may be holding this very list.
        if self._stale > COMPACT_MIN and 2 * self._stale > len(self._heap):
            armed: Any = self._armed
            self._heap[:] = [e for e in self._heap if armed(e[2]).get(e[3]) == e[1]]
            heapq.heapify(self._heap)
            self._stale = 0
