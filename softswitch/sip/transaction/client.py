"""Client transactions: the requests we send (RFC 3261 §17.1, RFC 6026).

One class per machine, each with its theory of operation above its table;
the INVITE machine also builds the ACK and CANCEL that repeat its request.
"""

from __future__ import annotations

from typing import ClassVar

from softswitch.sip.message import Request, Response
from softswitch.sip.transaction.events import ResponseReceived
from softswitch.sip.transaction.machine import Input, State, Table, Transaction

# Short names for the transition tables below.
_S, _In = State, Input


def _top_via_text(request: Request) -> str:
    """The top Via as header text, for the ACK and CANCEL that must repeat it."""
    return str(request.via)


class ClientTransaction(Transaction):
    """A request we sent (§17.1). ``request`` is what went out."""

    __slots__ = ()
    is_client = True

    def _pass_up(self, msg: Response, now: float, events: list) -> None:
        self.last_response = msg
        self.status = msg.status
        events.append(ResponseReceived(self, msg))

    def _copy_for(self, method: str, to: str) -> Request:
        """The headers an ACK (§17.1.1.3) or a CANCEL (§9.1) copies from the
        request: same Request-URI, one Via equal to the request's top Via (so
        same branch), From, Call-ID, CSeq number, Route set."""
        req = self.request
        assert req is not None, "ACK and CANCEL are built before the transaction lingers"
        from_ = req.get("From")
        assert from_ is not None, "a request we sent has a From"
        headers = [
            ["Via", _top_via_text(req)],
            ["Max-Forwards", "70"],
            ["From", from_],
            ["To", to],
            ["Call-ID", req.call_id],
            ["CSeq", f"{req.cseq} {method}"],
        ]
        headers += [["Route", value] for value in req.get_all("Route")]
        return Request(method, req.uri, headers=headers)


class ClientInviteTransaction(ClientTransaction):
    # Theory of operation (§17.1.1, Figure 5; RFC 6026 Figure 3).
    # CALLING: the INVITE went out. Over UDP timer A retransmits it at T1,
    #   2*T1, 4*T1 ... (no cap); timer B (64*T1) gives up and tells the TU.
    # PROCEEDING: a 1xx arrived; retransmissions stop (the server has it) and
    #   so does timer B: from here the TU decides how long to ring.
    # COMPLETED: a 300-699 arrived; we ACK it ourselves with the INVITE's
    #   branch (the ACK belongs to this transaction) and re-send that ACK for
    #   every retransmitted final, until timer D.
    # ACCEPTED (RFC 6026): a 2xx arrived; every copy goes to the TU, which
    #   ACKs it end-to-end in a new transaction, until timer M.
    __slots__ = ("_ack",)
    is_invite = True
    LINGER = frozenset((State.COMPLETED, State.ACCEPTED))

    def _start(self, now: float) -> None:
        self._ack: bytes | None = None  # our ACK for a non-2xx final, once built
        self._send_wire()
        timers = self._layer.timers
        self._start_retrying(Input.TIMER_A, timers.a, Input.TIMER_B, timers.b, now)

    def create_cancel(self) -> Request:
        """The CANCEL for this INVITE (§9.1). Send it with send_request(); by
        §9.1 only once a provisional response has arrived (state PROCEEDING)."""
        assert self.request is not None, "a lingering INVITE cannot be cancelled"
        to = self.request.get("To")
        assert to is not None, "a request we sent has a To"
        return self._copy_for("CANCEL", to)

    def _retransmit(self, msg: None, now: float, events: list) -> None:
        self._retransmit_wire(Input.TIMER_A, 2 * self._interval, now)  # no cap

    def _provisional(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        self._pass_up(msg, now, events)

    def _accept(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        self._arm(Input.TIMER_M, self._layer.timers.m, now)
        self._pass_up(msg, now, events)

    def _complete(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_A, Input.TIMER_B)
        to = msg.get("To")
        assert to is not None, "the parser refuses a response without To"
        self._ack = bytes(self._copy_for("ACK", to))
        self._send(self._ack)
        self._arm(Input.TIMER_D, self._layer.timers.d(self.reliable), now)
        self._pass_up(msg, now, events)

    def _resend_ack(self, msg: Response, now: float, events: list) -> None:
        assert self._ack is not None, "COMPLETED is entered by _complete, which builds it"
        self._send(self._ack)
        self._layer.stats.retransmitted += 1
        self._layer.stats.absorbed += 1

    TABLE: ClassVar[Table] = {
        (_S.CALLING, _In.TIMER_A): (_S.CALLING, _retransmit),
        (_S.CALLING, _In.TIMER_B): (_S.TERMINATED, Transaction._timeout),
        (_S.CALLING, _In.PROVISIONAL): (_S.PROCEEDING, _provisional),
        (_S.CALLING, _In.SUCCESS): (_S.ACCEPTED, _accept),
        (_S.CALLING, _In.FAILURE): (_S.COMPLETED, _complete),
        (_S.CALLING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, _provisional),
        (_S.PROCEEDING, _In.SUCCESS): (_S.ACCEPTED, _accept),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _complete),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.PROVISIONAL): (_S.COMPLETED, Transaction._absorb),
        # A late 2xx from another fork: the TU must still ACK (and BYE) it.
        (_S.COMPLETED, _In.SUCCESS): (_S.COMPLETED, ClientTransaction._pass_up),
        (_S.COMPLETED, _In.FAILURE): (_S.COMPLETED, _resend_ack),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.TIMER_D): (_S.TERMINATED, None),
        (_S.ACCEPTED, _In.PROVISIONAL): (_S.ACCEPTED, Transaction._absorb),
        (_S.ACCEPTED, _In.SUCCESS): (_S.ACCEPTED, ClientTransaction._pass_up),
        (_S.ACCEPTED, _In.FAILURE): (_S.ACCEPTED, Transaction._absorb),
        (_S.ACCEPTED, _In.TRANSPORT_ERROR): (_S.ACCEPTED, None),
        (_S.ACCEPTED, _In.TIMER_M): (_S.TERMINATED, None),
    }


class ClientNonInviteTransaction(ClientTransaction):
    # Theory of operation (§17.1.2, Figure 6).
    # TRYING: the request went out. Over UDP timer E retransmits it at T1,
    #   2*T1 ... capped at T2; timer F (64*T1) gives up and tells the TU.
    # PROCEEDING: a 1xx arrived; retransmissions continue every T2 (a
    #   non-INVITE must still complete within F, RFC 4320).
    # COMPLETED: a final response arrived and went to the TU; copies of it
    #   are absorbed until timer K.
    __slots__ = ()
    is_invite = False
    LINGER = frozenset((State.COMPLETED,))

    def _start(self, now: float) -> None:
        self._send_wire()
        timers = self._layer.timers
        self._start_retrying(Input.TIMER_E, timers.e, Input.TIMER_F, timers.f, now)

    def _retransmit_trying(self, msg: None, now: float, events: list) -> None:
        interval = min(2 * self._interval, self._layer.timers.t2)
        self._retransmit_wire(Input.TIMER_E, interval, now)

    def _retransmit_proceeding(self, msg: None, now: float, events: list) -> None:
        self._retransmit_wire(Input.TIMER_E, self._layer.timers.t2, now)

    def _final(self, msg: Response, now: float, events: list) -> None:
        self._cancel(Input.TIMER_E, Input.TIMER_F)
        self._arm(Input.TIMER_K, self._layer.timers.k(self.reliable), now)
        self._pass_up(msg, now, events)

    TABLE: ClassVar[Table] = {
        (_S.TRYING, _In.TIMER_E): (_S.TRYING, _retransmit_trying),
        (_S.TRYING, _In.TIMER_F): (_S.TERMINATED, Transaction._timeout),
        (_S.TRYING, _In.PROVISIONAL): (_S.PROCEEDING, ClientTransaction._pass_up),
        (_S.TRYING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.TRYING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.TRYING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.PROCEEDING, _In.TIMER_E): (_S.PROCEEDING, _retransmit_proceeding),
        (_S.PROCEEDING, _In.TIMER_F): (_S.TERMINATED, Transaction._timeout),
        (_S.PROCEEDING, _In.PROVISIONAL): (_S.PROCEEDING, ClientTransaction._pass_up),
        (_S.PROCEEDING, _In.SUCCESS): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.FAILURE): (_S.COMPLETED, _final),
        (_S.PROCEEDING, _In.TRANSPORT_ERROR): (_S.TERMINATED, Transaction._transport_error),
        (_S.COMPLETED, _In.PROVISIONAL): (_S.COMPLETED, Transaction._absorb),
        (_S.COMPLETED, _In.SUCCESS): (_S.COMPLETED, Transaction._absorb),
        (_S.COMPLETED, _In.FAILURE): (_S.COMPLETED, Transaction._absorb),
        (_S.COMPLETED, _In.TRANSPORT_ERROR): (_S.TERMINATED, None),
        (_S.COMPLETED, _In.TIMER_K): (_S.TERMINATED, None),
    }
