"""The shared timer heap (softswitch/sip/timerheap.py): lazy cancellation."""

from __future__ import annotations

from operator import attrgetter

from softswitch.sip.timerheap import COMPACT_MIN, TimerHeap


class Owner:
    def __init__(self) -> None:
        self.timers: dict[str, int] = {}


def heap() -> TimerHeap[Owner, str]:
    return TimerHeap(attrgetter("timers"))


def test_rearming_moves_the_deadline_and_the_old_entry_never_fires() -> None:
    h, a = heap(), Owner()
    h.arm(a, "x", 5.0)
    h.arm(a, "x", 9.0)
    assert h.next_deadline() == 9.0
    assert h.pop_due(8.9) is None
    assert h.pop_due(9.0) == (a, "x") and a.timers == {}
    assert h.next_deadline() is None


def test_due_timers_come_one_at_a_time_in_deadline_order_and_cancelled_ones_not_at_all() -> None:
    h, a, b = heap(), Owner(), Owner()
    h.arm(a, "x", 3.0)
    h.arm(b, "y", 1.0)
    h.arm(a, "z", 2.0)
    h.disarm(a, "z")
    h.disarm(a, "never armed")
    assert [h.pop_due(10.0), h.pop_due(10.0), h.pop_due(10.0)] == [(b, "y"), (a, "x"), None]


def test_cancellations_do_not_grow_the_heap_without_bound() -> None:
    h = heap()
    live = Owner()
    h.arm(live, "keep", 100.0)
    for _ in range(20 * COMPACT_MIN):
        o = Owner()
        h.arm(o, "a", 50.0)
        h.arm(o, "b", 60.0)
        h.disarm_all(o)
    assert len(h) <= 2 * COMPACT_MIN + 3
    assert h.next_deadline() == 100.0 and h.pop_due(100.0) == (live, "keep")
