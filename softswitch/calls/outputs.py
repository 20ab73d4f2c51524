"""What the B2BUA sends: the only door from the call handlers to the outside.

``Outputs`` builds and sends responses to phones, requests to phones (through
the transaction layer, which retransmits them) and requests to bearers
(through the protocol client's pool, which retransmits those), and emits
CDRs and counters.  It decides nothing and remembers nothing about a call:
what a request is for is recorded by the handler in the ``CallTable``, keyed
by the transaction or request id returned here.  That is what lets every
handler be tested against a fake that only records what it was asked to
send (tests/unit/control/test_calls_handlers.py).

It is also where our own identity on the wire lives: the Via sent-by and
the Contact for each transport (RFC 3261 §8.1.1.7, §8.1.1.8).
"""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from softswitch.calls.state import ALLOW, CALLER, Call
from softswitch.sip.message import Address, Request, Response, make_response
from softswitch.sip.transaction import (
    ClientInviteTransaction,
    ClientTransaction,
    Peer,
    ServerTransaction,
    TransactionLayer,
    new_branch,
)

if TYPE_CHECKING:
    from softswitch.location import LocalAddress
    from softswitch.model.cdr import Cdr
    from softswitch.protocol import Message
    from softswitch.sip.dialog import Dialog
    from softswitch.sip.uri import Uri

__all__ = ["SDP", "DelayHistogram", "Outputs"]

SDP = "application/sdp"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Outputs:
    """Replies and requests to phones, requests to bearers, CDRs and counters."""

    __slots__ = ("_contact", "_layer", "_pool", "_via", "counters", "on_cdr", "setup_delay")

    def __init__(
        self,
        *,
        layer: TransactionLayer,
        bearers: Any,
        local: LocalAddress,
        on_cdr: Callable[[Cdr], None],
    ) -> None:
        self._layer = layer
        self._pool = bearers
        self.on_cdr = on_cdr
        served = ("udp", "tcp", *(("tls",) if "tls" in local.transports else ()))
        self._via = {t: f"SIP/2.0/{t.upper()} {local.sent_by(t)};rport;branch=" for t in served}
        self._contact = {
            "udp": f"<sip:{local.sent_by('udp')}>",
            "tcp": f"<sip:{local.sent_by('tcp')};transport=tcp>",
        }
        if "tls" in served:
            # RFC 5630 §4 deprecates transport=tls, but a sip: URI with it is
            # what phones registered over TLS with sip: URIs expect; dialogs
            # a sips: URI started get a sips: Contact (§12.1.1, _secure_contact).
            self._contact["tls"] = f"<sip:{local.sent_by('tls')};transport=tls>"
            self._contact["sips"] = f"<sips:{local.sent_by('tls')}>"
        #: Named event counts (refusals, auth failures, CDRs by disposition, moves).
        self.counters: dict[str, int] = {}
        #: Added set-up delay (A's INVITE in -> INVITE out to B), for softswitch.daemon.metrics.
        self.setup_delay = DelayHistogram()

    # ------------------------------------------------------------------ who we are

    @property
    def t1(self) -> float:
        """RFC 3261 T1 now (a SIGHUP may change it)."""
        return self._layer.timers.t1

    @property
    def t2(self) -> float:
        return self._layer.timers.t2

    def serves(self, transport: str) -> bool:
        return transport in self._via

    def contact_for(self, peer: Peer) -> str:
        return self._contact[peer.transport]

    def _contact_for(self, peer: Peer, uri: Any) -> str:
        """Our Contact in a dialog with ``peer`` whose request targets ``uri``:
        a sips: one over TLS when that URI is sips: (§8.1.1.8, §12.1.1)."""
        if peer.transport == "tls" and getattr(uri, "scheme", "") == "sips":
            return self._contact["sips"]
        return self._contact[peer.transport]

    # ------------------------------------------------------------------ responses to phones

    def trying(self, tx: ServerTransaction, request: Request, now: float) -> None:
        """100 Trying at once (§17.2.1), unless the layer sends it itself."""
        if tx.last_response is None and not self._layer.auto_trying:
            self._layer.send_response(tx, make_response(request, 100), now)

    def reply(
        self,
        tx: ServerTransaction,
        request: Request,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> None:
        """A response that makes no dialog (a fresh To tag for a final one)."""
        response = make_response(
            request, status, reason, to_tag=None if status == 100 else secrets.token_hex(8)
        )
        for name, value in headers or ():
            response.add(name, value)
        if body:
            response.add("Content-Type", content_type or SDP)
            response.body = body
        self._layer.send_response(tx, response, now)

    def a_response(
        self, call: Call, status: int, *, reason: str | None = None, body: bytes = b""
    ) -> Response:
        """A response to the caller's INVITE, in its dialog (our To tag)."""
        response = make_response(call.a_request, status, reason, to_tag=call.a_tag)
        if status < 300:
            peer = call.legs[CALLER].peer
            assert peer is not None, "the caller's INVITE came from somewhere"
            response.add("Contact", self._contact_for(peer, call.a_request.uri))
        if body:
            response.add("Content-Type", SDP)
            response.body = body
        return response

    def reply_a(
        self, call: Call, status: int, now: float, *, reason: str | None = None, body: bytes = b""
    ) -> None:
        self._layer.send_response(
            call.a_tx, self.a_response(call, status, reason=reason, body=body), now
        )

    def leg_response(
        self, peer: Peer, request: Request, status: int, body: bytes, to_tag: str | None = None
    ) -> Response:
        """A response to an in-dialog request (its To tag is already ours), or with
        ``to_tag`` one that makes a dialog (a feature code's 200)."""
        response = make_response(request, status, to_tag=to_tag)
        response.add("Contact", self._contact_for(peer, request.uri))
        if body:
            response.add("Content-Type", SDP)
            response.body = body
        return response

    def respond(self, tx: ServerTransaction, response: Response, now: float) -> None:
        """A response built above (a 2xx, and each retransmission of it, §13.3.1.4)."""
        self._layer.send_response(tx, response, now)

    # ------------------------------------------------------------------ requests to phones

    def invite(
        self,
        uri: Uri,
        peer: Peer,
        from_: Address,
        to: str,
        max_forwards: int | None,
        body: bytes,
        path: str | None,
        now: float,
    ) -> tuple[Request, ClientInviteTransaction]:
        """A new INVITE to one device of the callee (a fork): its own Call-ID."""
        transport = peer.transport
        headers = [
            ["Via", self._via[transport] + new_branch()],
            ["Max-Forwards", str((70 if max_forwards is None else max_forwards) - 1)],
            ["From", str(from_)],
            ["To", to],
            ["Call-ID", secrets.token_hex(12)],
            ["CSeq", "1 INVITE"],
            ["Contact", self._contact_for(peer, uri)],
            ["Allow", ALLOW],
            ["Content-Type", SDP],
        ]
        if path:  # RFC 3327: reach the device through the proxies it registered by
            headers += [["Route", p] for p in path.split(",") if p.strip()]
        invite = Request("INVITE", uri, body=body)
        invite.headers = headers  # canonical names already: skip add()'s checks
        # An INVITE starts an INVITE client transaction (TransactionLayer.send_request).
        tx = cast(ClientInviteTransaction, self._layer.send_request(invite, peer, now))
        return invite, tx

    def request(
        self,
        dialog: Dialog,
        peer: Peer,
        method: str,
        now: float,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> ClientTransaction:
        """A request within ``dialog`` (BYE, re-INVITE, a relayed INFO)."""
        request = dialog.create_request(
            method,
            via=self._via[peer.transport] + new_branch(),
            body=body,
            content_type=content_type,
            headers=headers,
        )
        return self._layer.send_request(request, peer, now)

    def cancel(self, tx: ClientInviteTransaction, peer: Peer, now: float) -> ClientTransaction:
        """CANCEL for one of our INVITEs (§9.1)."""
        return self._layer.send_request(tx.create_cancel(), peer, now)

    def ack(self, dialog: Dialog, cseq: int, peer: Peer) -> Request:
        """ACK a 2xx (§13.2.2.4); returned so it can be sent again for its copies."""
        ack = dialog.create_ack(cseq, via=self._via[peer.transport] + new_branch())
        self._layer.send_stateless(ack, peer)
        return ack

    def resend(self, message: Request, peer: Peer) -> None:
        """An ACK again, for a retransmitted 2xx (our first ACK was lost)."""
        self._layer.send_stateless(message, peer)

    # ------------------------------------------------------------------ bearers, records

    def bearer(self, bearer: Any, message: Message, now: float) -> int:
        """A request to a bearer; its reply comes back under the id returned."""
        return cast(int, self._pool.request(bearer, message, now))

    def cdr(self, cdr: Cdr) -> None:
        self.on_cdr(cdr)

    def bump(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class DelayHistogram:
    """Bucket counts of a delay, updated on the main thread for a few
    nanoseconds per observation; softswitch.daemon.metrics reads them as a
    Prometheus histogram (``snapshot`` copies, so another thread may call it).

    >>> h = DelayHistogram((0.001, 0.01))
    >>> for s in (0.0005, 0.001, 0.002, 3.0):
    ...     h.observe(s)
    >>> h.snapshot()
    ([(0.001, 2), (0.01, 3), (inf, 4)], 3.0035)
    """

    #: Upper bounds in seconds (DESIGN.md: p99 < 5 ms, target < 2 ms).
    BOUNDS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)  # a wall-clock step back is not a negative delay
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative ``(upper bound, count)`` pairs ending with +Inf, and the sum."""
        counts, total = list(self.counts), self.total
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            running += n
            out.append((bound, running))
        return out, round(total, 9)
