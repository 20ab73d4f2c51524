"""Entry control: what control does with new work it cannot serve in time.

Theory of operation
-------------------
Control's queue is the kernel's: the UDP socket's receive buffer (4 MiB, a
few thousand requests).  When requests arrive faster than control serves
them the buffer fills, every request waits longer, phones retransmit
(Timer A/E: 500 ms) and the retransmissions are more work: served in
arrival order, an overloaded SIP server spends its core on requests whose
senders have given up, and goodput collapses (RFC 6357 §2).  The remedy is
to decide, per request and before the expensive part, whether it can still
be served in time, and to refuse the rest at the lowest possible cost.

The measure is each datagram's *queueing delay*: the kernel stamps it on
arrival (``SO_TIMESTAMPNS``), and the transport passes the age at the
moment control reads it.  The age says how far behind control is, whatever
the cause (offered load, a slow database write, a GC pause, another
process on the core), in the unit that matters to the phone.

Work is split in two, by a look at the raw bytes (no parse):

* **Work in progress** is always served, and first: responses to our own
  requests, ACK, CANCEL, BYE, PRACK, UPDATE, INFO, NOTIFY, and any request
  with a To tag (a re-INVITE, a refresh inside a dialog).  It ends or keeps
  up calls that already cost a set-up, and it is cheap.  The transport
  serves it before the new work read in the same batch, and answered
  challenges before the rest.
* **Answered challenges** (new work carrying Authorization or
  Proxy-Authorization) come next: their first half, the 401/407, is work
  already spent, so they are served up to ``drop_delay`` and never get a
  503; under overload control finishes the registrations and calls it has
  started before it starts new ones.
* **New work** (an out-of-dialog INVITE, REGISTER, OPTIONS, SUBSCRIBE,
  MESSAGE, ...) without credentials is judged by its age:

  - younger than ``shed_delay``: served;
  - between ``shed_delay`` and ``drop_delay``: answered ``503 Service
    Unavailable`` with ``Retry-After``, statelessly, after a parse but
    before authentication, the database or a bearer, up to ``shed_rate``
    503s a second (a 503 costs about what a challenge does), and dropped
    beyond that;
  - older than ``drop_delay``: dropped unparsed (a few microseconds).  The
    phone has retransmitted already or is about to, and a 503 would cost
    the time that the requests behind it are waiting for.

  Under mild overload the 503s are enough and tell phones to back off;
  under heavy overload the queue crosses ``drop_delay`` and most new work
  is dropped for almost nothing, so the core goes to the requests served
  within ``drop_delay``: goodput stays near capacity (the seed system's
  gateway does the same entry control).

Stream transports (TCP, TLS) carry no kernel stamp, and dropping a request
there would leave the phone waiting for Timer B/F (32 s): new work on them
gets the 503 while the latest UDP age says control is behind.

Counted: ``overload_shed`` (503s) in the Switch's counters,
``overload_dropped`` in its drops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ANSWERED_CHALLENGE",
    "IN_PROGRESS",
    "IN_PROGRESS_METHODS",
    "NEW",
    "Admission",
    "work_kind",
]

#: Methods that never start new work: they continue a transaction or a
#: dialog that already exists (CANCEL and ACK belong to an INVITE; the
#: others are only sent inside a dialog).
IN_PROGRESS_METHODS = frozenset(
    ("ACK", "BYE", "CANCEL", "PRACK", "UPDATE", "INFO", "NOTIFY", "REFER")
)
_IN_PROGRESS = frozenset(m.encode() for m in IN_PROGRESS_METHODS)
#: A To header (long or compact form) carrying a tag: a request inside a dialog.
_TO_TAG = re.compile(rb"\n(?:[Tt][Oo]|[Tt])[ \t]*:[^\n]*;[ \t]*[Tt][Aa][Gg][ \t]*=")


#: An Authorization or Proxy-Authorization header: the answer to a challenge.
_CREDENTIALS = re.compile(rb"\n(?:proxy-)?authorization[ \t]*:", re.IGNORECASE)

#: What ``work_kind`` says of a datagram.
IN_PROGRESS, ANSWERED_CHALLENGE, NEW = 0, 1, 2


def work_kind(data: bytes) -> int:
    """IN_PROGRESS, ANSWERED_CHALLENGE or NEW for a raw datagram (see the
    module docstring); responses and malformed leads count as in progress,
    so that the parser, not this guess, decides what to do with them."""
    if data[:8] == b"SIP/2.0 ":
        return IN_PROGRESS
    space = data.find(b" ", 0, 20)
    if space <= 0:
        return IN_PROGRESS
    method = data[:space]
    if method in _IN_PROGRESS:
        return IN_PROGRESS
    if method != b"REGISTER" and _TO_TAG.search(data) is not None:  # REGISTER has no dialog
        return IN_PROGRESS
    return ANSWERED_CHALLENGE if _CREDENTIALS.search(data) is not None else NEW


@dataclass
class Admission:
    """The thresholds, the 503 allowance, and the latest queueing delay seen
    (for streams)."""

    shed_delay: float = 0.1
    drop_delay: float = 0.3
    retry_after: int = 5
    shed_rate: float = 200.0
    #: Age of the latest UDP datagram read, and when it was read.
    latest_age: float = 0.0
    latest_at: float = 0.0
    #: 503s that may be sent now (a token bucket of ``shed_rate``/s, 1 s deep).
    allowance: float = 0.0
    refilled: float = 0.0

    def behind(self, now: float) -> bool:
        """Whether new work on a stream should be shed: the latest UDP
        datagram (within the last second) waited ``shed_delay`` or more."""
        return self.latest_age >= self.shed_delay and now - self.latest_at < 1.0

    def judge(self, age: float, now: float, answered_challenge: bool = False) -> int:
        """0 serve, 1 shed (503), 2 drop, for new work that waited ``age``.

        A request answering our challenge is served up to ``drop_delay``
        and never shed: its first half (the challenge) is work already
        done, which a 503 now would waste, so under overload control
        finishes the registrations and calls it has started before it
        starts new ones.

        503s are rationed to ``shed_rate`` per second and the rest of the
        late work is dropped: a 503 costs a parse and a response, about as
        much as the challenge it replaces, so at 3x capacity answering
        every late request 503 kept the queue just short of ``drop_delay``
        and left a quarter of the core for real work (measured: 24 % of
        capacity completed).  The allowance tells some phones to back off;
        dropping the rest costs microseconds.
        """
        self.latest_age = age
        self.latest_at = now
        if answered_challenge:
            return 0 if age < self.drop_delay else 2
        if age < self.shed_delay:
            return 0
        if age < self.drop_delay:
            rate = self.shed_rate
            allowance = min(rate, self.allowance + (now - self.refilled) * rate)
            self.refilled = now
            if allowance >= 1.0:
                self.allowance = allowance - 1.0
                return 1
            self.allowance = allowance
        return 2
