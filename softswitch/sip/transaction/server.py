"""Server transactions: the requests we receive (RFC 3261 §17.2, RFC 6026).

One class per machine, each with its theory of operation above its table.
A server transaction answers retransmitted requests from the bytes it sent.
"""

from __future__ import annotations

from typing import ClassVar

from softswitch.sip.message import Request, Response
from softswitch.sip.transaction.events import AckReceived
from softswitch.sip.transaction.machine import Input, State, Table, Transaction

# Short names for the transition tables below.
_S, _In = State, Input


class ServerTransaction(Transaction):
    """A request we received (§17.2). ``peer`` is where it came from and
    where every response goes."""

    __slots__ = ()
    is_client = False

    def _respond(self, msg: Response, now: float, events: list) -> None:
        self.last_response = msg
        self.status = msg.status
        self._wire = bytes(msg)
        self._send(self._wire)

    def _resend(self, msg: Request, now: float, events: list) -> None:
        """A retransmitted request: answer it with the very bytes we sent last
        (§17.2.1, §17.2.2); before any response there is nothing to say."""
        self._layer.stats.absorbed += 1
        if self._wire is not None:
            self._send(self._wire)
            self._layer.stats.retransmitted += 1


class ServerInviteTransaction(ServerTransaction):
    # Theory of operation (§17.2.1, Figure 7; RFC 6026 Figure 5).
    # PROCEEDING: the INVITE went to the TU, which should answer 100 at once
    #   (the layer does it when auto_trying is set). Retransmitted INVITEs are
    #   answered with the last provisional response.
    # COMPLETED: the TU sent 300-699. Over UDP timer G re-sends it at T1,
    #   2*T1 ... capped at T2 until the ACK comes; timer H (64*T1) gives up.
    # CONFIRMED: the ACK came; further ACKs are absorbed until timer I.
    # ACCEPTED (RFC 6026): the TU sent a 2xx. The TU, not the layer,
    #   retransmits it (each copy goes through send_response); the ACK is the
    #   TU's business and goes up; INVITE copies are absorbed until timer L.
    __slots__ = ()
    is_invite = True
    LINGER = frozenset((State.CONFIRMED, State.ACCEPTED))

    def _accept(self, msg: Response, now: float, events: list) -> None:
        self._respond(msg, now, events)
        self._arm(Input.TIMER_L, self._layer.timers.l, now)

    def _complete(self, msg: Response, now: float, events: list) -> None:
        self._respond(msg, now, events)
        timers = self._layer.timers
        self._start_retrying(Input.TIMER_G, timers.g, Input.TIMER_H, timers.h, now)

    def _retransmit(self, msg: None, now: float, events: list) -> None:
        interval = min(2 * self._interval, self._layer.timers.t2)
        self._retransmit_wire(Input.TIMER_G, interval, now)

    def _confirm(self, msg: Request, now: float, events: list) -> None:
        self._cancel(Input.TIMER_G, Input.TIMER_H)
        self._arm(Input.TIMER_I, self._layer.timers.i(self.reliable), now)

    def _ack_to_tu(self, msg: Request, now: float, events: list) -> None:
        events.append(AckReceived(msg, self.peer))

    TABLE: ClassVar[Table] = {
        (_S.PROCEEDING, _In.REQUEST): (_S.PROCEEDING, ServerTransaction._resend),
        (_S.PROCEEDING, _In.ACK): (_S.PROCEEDING, Transaction._absorb),  # confused peer
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, ServerTransaction._respond),
        (_S.PROCEEDING, _In.SUCCESS): (_S.ACCEPTED, _accept),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _complete),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.REQUEST): (_S.COMPLETED, ServerTransaction._resend),
        (_S.COMPLETED, _In.ACK): (_S.CONFIRMED, _confirm),
        (_S.COMPLETED, _In.TIMER_G): (_S.COMPLETED, _retransmit),
        (_S.COMPLETED, _In.TIMER_H): (_S.TERMINATED, Transaction._timeout),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.CONFIRMED, _In.REQUEST): (_S.CONFIRMED, Transaction._absorb),
        (_S.CONFIRMED, _In.ACK): (_S.CONFIRMED, Transaction._absorb),
        (_S.CONFIRMED, _In.TRANSPORT_ERROR): (_S.CONFIRMED, None),
        (_S.CONFIRMED, _In.TIMER_I): (_S.TERMINATED, None),
        (_S.ACCEPTED, _In.REQUEST): (_S.ACCEPTED, Transaction._absorb),
        (_S.ACCEPTED, _In.ACK): (_S.ACCEPTED, _ack_to_tu),
        (_S.ACCEPTED, _In.SUCCESS): (_S.ACCEPTED, ServerTransaction._respond),
        # RFC 6026 §8.8: the 2xx is the TU's to retransmit, so is its failure.
        (_S.ACCEPTED, _In.TRANSPORT_ERROR): (_S.ACCEPTED, Transaction._transport_error),
        (_S.ACCEPTED, _In.TIMER_L): (_S.TERMINATED, None),
    }


class ServerNonInviteTransaction(ServerTransaction):
    # Theory of operation (§17.2.2, Figure 8).
    # TRYING: the request went to the TU; copies are absorbed in silence.
    # PROCEEDING: the TU sent a 1xx; copies of the request get it again.
    # COMPLETED: the TU sent the final response; copies of the request get it
    #   again until timer J (64*T1 over UDP, the longest the client retries).
    __slots__ = ()
    is_invite = False
    LINGER = frozenset((State.COMPLETED,))

    def _final(self, msg: Response, now: float, events: list) -> None:
        self._respond(msg, now, events)
        self._arm(Input.TIMER_J, self._layer.timers.j(self.reliable), now)

    TABLE: ClassVar[Table] = {
        (_S.TRYING, _In.REQUEST): (_S.TRYING, Transaction._absorb),
        (_S.TRYING, _In.PROVISIONAL): (_S.PROCEEDING, ServerTransaction._respond),
        (_S.TRYING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.TRYING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.TRYING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.PROCEEDING, _In.REQUEST): (_S.PROCEEDING, ServerTransaction._resend),
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, ServerTransaction._respond),
        (_S.PROCEEDING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.REQUEST): (_S.COMPLETED, ServerTransaction._resend),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, None),
        (_S.COMPLETED, _In.TIMER_J): (_S.TERMINATED, None),
    }
