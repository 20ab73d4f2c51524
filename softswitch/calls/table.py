"""The call table: every index that finds a call, and the calls' timers.

A call is reached from five directions: an in-dialog request (its dialog id
and leg), a CANCEL or a merged INVITE (A's Call-ID and From tag), a bearer
event (its session id), a response to one of our requests (the client
transaction, with the role that request plays) and a bearer reply (the
request id, with the request).  ``CallTable`` owns those dicts, the
per-user active-call counts (``max_calls``), the conference rooms and one
heap of call timers (softswitch.sip.timerheap, as the transactions'), and
keeps them consistent: a call enters with ``add``,
leaves the indexes with ``remove`` when its CDR is written and leaves the
transaction index with ``forget`` once no 2xx copy of its INVITEs can come.

Nothing here sends anything or decides anything about a call: the handlers
do that through ``softswitch.calls.outputs``.  Every lookup is one dict
access, which is what keeps the set-up path cheap.
"""

from __future__ import annotations

import secrets
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from softswitch.calls.state import CALLER, Call, Timer
from softswitch.sip.timerheap import TimerHeap

if TYPE_CHECKING:
    from softswitch.model.users import User
    from softswitch.protocol import Message
    from softswitch.sip.transaction import ClientTransaction

__all__ = ["CallTable"]


class CallTable:
    """The indexes of the live calls and their timers (see the module docstring)."""

    __slots__ = (
        "_next_session",
        "_timers",
        "active",
        "by_invite",
        "dialogs",
        "domain",
        "requests",
        "rooms",
        "sessions",
        "txs",
    )

    def __init__(self, domain: str) -> None:
        self.domain = domain
        #: dialog id -> (call, leg)
        self.dialogs: dict[tuple, tuple[Call, int]] = {}
        #: A's (Call-ID, From tag) -> call: CANCEL and merged requests (§8.2.2.2)
        self.by_invite: dict[tuple[str, str | None], Call] = {}
        #: bearer session id -> call
        self.sessions: dict[int, Call] = {}
        #: our client transaction -> (call, role, what the role needs)
        self.txs: dict[ClientTransaction, tuple[Call, str, Any]] = {}
        #: bearer request id -> (call, the request)
        self.requests: dict[int, tuple[Call, Message]] = {}
        #: (username, domain) -> calls the user is in
        self.active: dict[tuple[str, str], int] = {}
        #: conference room -> [its bearer, members]
        self.rooms: dict[str, list[Any]] = {}
        self._timers: TimerHeap[Call, Timer] = TimerHeap(attrgetter("timers"))
        self._next_session = secrets.randbits(40) << 16

    # ------------------------------------------------------------------ calls

    def new_session_id(self) -> int:
        """A bearer session id no other call of this process has had."""
        self._next_session += 1
        return self._next_session

    def add(self, call: Call) -> None:
        """A new call: findable by A's INVITE, its session and A's dialog;
        counted against both users' limits and its room."""
        request = call.a_request
        self.by_invite[(request.call_id, request.from_.tag)] = call
        self.sessions[call.session_id] = call
        a = call.legs[CALLER].dialog
        assert a is not None, "the caller's dialog exists from its INVITE on"
        self.dialogs[a.id] = (call, CALLER)
        self._count(call, +1)
        if call.room is not None:
            self.rooms.setdefault(call.room, [call.bearer, 0])[1] += 1

    def add_dialog(self, call: Call, leg: int) -> None:
        dialog = call.legs[leg].dialog
        assert dialog is not None, "a leg gets an index once it has a dialog"
        self.dialogs[dialog.id] = (call, leg)

    def rekey(self, call: Call) -> None:
        """Give ``call`` a new session id (a move to another bearer): nothing the
        old bearer may still say about the old session can reach it."""
        self.sessions.pop(call.session_id, None)
        call.session_id = self.new_session_id()
        self.sessions[call.session_id] = call

    def release(self, call: Call) -> None:
        """The call is hanging up: it no longer counts against limits or rooms."""
        self._count(call, -1)
        room = call.room
        if room is None:
            return
        entry = self.rooms.get(room)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:  # with the last member, so is the room's bearer
            del self.rooms[room]

    def remove(self, call: Call) -> None:
        """The CDR is written: no request or bearer event finds the call any more."""
        self.sessions.pop(call.session_id, None)
        key = (call.a_request.call_id, call.a_request.from_.tag)
        if self.by_invite.get(key) is call:
            del self.by_invite[key]
        dialogs = self.dialogs
        for leg in call.legs:
            if leg.dialog is not None and dialogs.get(leg.dialog.id, (None,))[0] is call:
                del dialogs[leg.dialog.id]

    def forget(self, call: Call) -> None:
        """Drop the call's INVITE transactions, kept after their final response
        for 2xx retransmissions: the last reference to the call."""
        txs = self.txs
        for fork in call.forks:
            txs.pop(fork.tx, None)
        for tx in call.reinvites:
            txs.pop(tx, None)

    def active_calls(self, username: str, domain: str) -> int:
        """Calls the user is in now (as caller or callee), for max_calls."""
        return self.active.get((username, domain.lower()), 0)

    def retarget(self, call: Call, callee: User) -> None:
        """The call now rings ``callee`` (forwarded): move its per-user count over."""
        self._count(call, -1)
        call.callee = callee
        self._count(call, +1)

    def _count(self, call: Call, delta: int) -> None:
        active = self.active
        keys = [(call.caller.username, self.domain)]
        if call.callee is not None:
            keys.append((call.callee.username, self.domain))
        for key in keys:
            n = active.get(key, 0) + delta
            if n > 0:
                active[key] = n
            else:
                active.pop(key, None)

    # ------------------------------------------------------------------ timers

    def arm(self, call: Call, kind: Timer, deadline: float) -> None:
        """(Re)arm ``kind`` for ``call``; an earlier arming of it no longer fires."""
        self._timers.arm(call, kind, deadline)

    def disarm(self, call: Call, kind: Timer) -> None:
        self._timers.disarm(call, kind)

    def disarm_all(self, call: Call) -> None:
        self._timers.disarm_all(call)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any armed timer, or None."""
        return self._timers.next_deadline()

    def pop_expired(self, now: float) -> tuple[Call, Timer] | None:
        """The next timer due at ``now``, disarmed, or None when none is.

        One at a time: what fires may arm or disarm others."""
        return self._timers.pop_due(now)

    @property
    def heap_size(self) -> int:
        """Entries in the timer heap, stale ones included: a bound on what can fire."""
        return len(self._timers)

    def __len__(self) -> int:
        """Calls with a bearer session (live or waiting for their DELETE)."""
        return len(self.sessions)
