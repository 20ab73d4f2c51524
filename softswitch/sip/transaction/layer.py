"""The transaction layer: finds the transaction a message belongs to (§17.1.3,
§17.2.3), creates new ones, and owns every transaction's timers in one heap.

This is the object the daemon drives (receive / send_* / datagrams_to_send /
get_timer / handle_timer); the machines it steps are in client.py and server.py.
"""

from __future__ import annotations

from operator import attrgetter

from softswitch.sip.errors import SipError
from softswitch.sip.message import Request, Response, Via, make_response
from softswitch.sip.timerheap import TimerHeap
from softswitch.sip.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
)
from softswitch.sip.transaction.events import (
    MAGIC_COOKIE,
    AckReceived,
    Event,
    Peer,
    RequestReceived,
    StrayResponse,
    TransactionStats,
    TransitionError,
    new_branch,
)
from softswitch.sip.transaction.machine import Input, State, Transaction, status_input
from softswitch.sip.transaction.server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
)
from softswitch.sip.transaction.timers import Timers

_DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "SCTP": 5060, "TLS": 5061, "WS": 80, "WSS": 443}


# --------------------------------------------------------------------------- matching


def _stamp_via(via: Via, peer: Peer) -> None:
    """Record on the top Via where a request really came from, so that every
    response built from it (make_response copies the Vias) says so too.

    §18.2.1: add received= when the sent-by host is not the source address;
    RFC 3581 §4: when the client asked with a bare rport, fill it with the
    source port and add received= even if the host is the same.
    """
    source = peer.host.strip("[]")
    if via.rport is True:
        via.rport = peer.port
        via.received = source
    elif via.host.strip("[]") != source:
        via.received = source


def _via_identity(via: Via) -> tuple:
    """A top Via as a comparable value, for RFC 2543 matching (§17.2.3)."""
    params = tuple(sorted((str(k).lower(), v) for k, v in via.params.items()))
    return (via.transport.upper(), via.host.lower(), via.port, params)


def _server_key(request: Request, method: str) -> tuple:
    """The key a server transaction is found by (§17.2.3). ``method`` is the
    request's, except ACK and CANCEL looking for their INVITE, which pass
    "INVITE".

    RFC 3261 peers (branch with the magic cookie): branch + sent-by + method.
    RFC 2543 peers: Request-URI, From tag, Call-ID, CSeq number, top Via; the
    To tag is checked apart by _to_tag_matches because it is the response's
    To tag that an ACK must carry.
    """
    via = request.via
    branch = via.branch
    if branch and branch.startswith(MAGIC_COOKIE):
        port = via.port or _DEFAULT_PORTS.get(via.transport.upper(), 5060)
        return (branch, via.host.lower(), port, method)
    return (
        "rfc2543",
        str(request.uri),
        request.from_.tag,
        request.call_id,
        request.cseq,
        _via_identity(via),
        method,
    )


def _to_tag_matches(tx: Transaction, request: Request) -> bool:
    """The To tag half of RFC 2543 matching (§17.2.3); always true for RFC 3261 keys."""
    if tx.key[0] != "rfc2543":
        return True
    if request.method == "ACK":
        sent = tx.last_response
        return sent is not None and request.to.tag == sent.to.tag
    assert tx.request is not None, "RFC 2543 transactions keep their request (_linger)"
    return request.to.tag == tx.request.to.tag


# --------------------------------------------------------------------------- the layer


class TransactionLayer:
    """Owns every transaction of one SIP endpoint and their timers.

    Transactions are found by dict lookups and their timers kept in one heap
    (lazy deletion: a cancelled timer stays in the heap, marked stale, until
    it surfaces or a compaction drops it), so that receive, get_timer and
    handle_timer stay O(log n) with thousands of calls in progress.
    """

    new_branch = staticmethod(new_branch)

    def __init__(self, timers: Timers | None = None, *, auto_trying: bool = False) -> None:
        """``auto_trying``: answer every new INVITE with 100 Trying before the
        TU sees it (§17.2.1 wants it within 200 ms; the TU may be slow)."""
        self.timers = timers or Timers()
        self.auto_trying = auto_trying
        self.stats = TransactionStats()
        self._clients: dict[tuple, ClientTransaction] = {}
        self._servers: dict[tuple, ServerTransaction] = {}
        self._heap: TimerHeap[Transaction, Input] = TimerHeap(attrgetter("_timers"))
        self._outgoing: list[tuple[bytes, Peer]] = []

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def unanswered(self) -> int:
        """Transactions still owed a final response, ours or the peer's.

        What a graceful stop waits for (client ones sent and not answered,
        server ones received and not yet answered); those in COMPLETED only
        absorb retransmissions and need not be waited for.
        """
        waiting = (State.CALLING, State.TRYING, State.PROCEEDING)
        n = sum(tx.state in waiting for tx in self._clients.values())
        return n + sum(tx.state in waiting[1:] for tx in self._servers.values())

    # ------------------------------------------------------------ inputs

    def receive(self, message: Request | Response, peer: Peer, now: float) -> list[Event]:
        """Feed one parsed message that arrived from ``peer``.

        A request or response whose Via/CSeq/From cannot be read is counted
        in stats.malformed; a request then gets the SipError's response
        statelessly when one can be built (§8.2, §16.3), never a traceback.
        """
        try:
            if isinstance(message, Response):
                return self._receive_response(message, peer, now)
            return self._receive_request(message, peer, now)
        except SipError as err:
            self.stats.malformed += 1
            if isinstance(message, Request) and message.method != "ACK" and not err.drop:
                # A response needs the request's Via to be routed back (§8.2.6.2);
                # without one there is no answer to give, only the counter.
                try:
                    if message.vias:
                        reply = make_response(message, err.status, err.reason)
                        self._outgoing.append((bytes(reply), peer))
                except SipError:
                    pass
            return []

    def _receive_response(self, response: Response, peer: Peer, now: float) -> list[Event]:
        # §17.1.3: top Via branch and CSeq method identify the client transaction.
        tx = self._clients.get((response.via.branch, response.cseq_method))
        if tx is None:
            self.stats.stray_responses += 1
            return [StrayResponse(response, peer)]
        events: list[Event] = []
        tx._step(status_input(response.status), response, now, events)
        return events

    def _receive_request(self, request: Request, peer: Peer, now: float) -> list[Event]:
        _stamp_via(request.via, peer)
        method = request.method
        events: list[Event] = []
        if method == "ACK":
            # §17.2.3: an ACK matches the INVITE it acknowledges. Only the
            # ACK for a non-2xx does; the ACK for a 2xx has its own branch and
            # goes to the TU (RFC 6026 §8.7 sends it there in Accepted too).
            tx = self._servers.get(_server_key(request, "INVITE"))
            if tx is None or not tx.is_invite or not _to_tag_matches(tx, request):
                return [AckReceived(request, peer)]
            tx._step(Input.ACK, request, now, events)
            return events
        key = _server_key(request, method)
        tx = self._servers.get(key)
        if tx is not None and _to_tag_matches(tx, request):
            tx._step(Input.REQUEST, request, now, events)
            return events
        cls = ServerInviteTransaction if method == "INVITE" else ServerNonInviteTransaction
        tx = cls(self, key, request, peer, State.PROCEEDING if cls.is_invite else State.TRYING)
        self._servers[key] = tx
        self.stats.server_created += 1
        events.append(RequestReceived(tx, request, peer))
        if cls.is_invite and self.auto_trying:
            tx._step(Input.PROVISIONAL, make_response(request, 100), now, events)
        return events

    def send_request(self, request: Request, peer: Peer, now: float) -> ClientTransaction:
        """Start a client transaction; the request goes out at once.

        The caller built the top Via with a fresh branch (new_branch()): the
        layer adds nothing, so what is sent is exactly what the TU made. An
        ACK for a 2xx is no transaction (§17.1.1.3): use send_stateless().
        """
        if request.method == "ACK":
            raise ValueError("an ACK for a 2xx is not a transaction: use send_stateless()")
        branch = request.via.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError(f"request branch {branch!r} lacks the {MAGIC_COOKIE} cookie")
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"a client transaction with branch {branch} is in progress")
        cls = ClientInviteTransaction if request.method == "INVITE" else ClientNonInviteTransaction
        tx = cls(self, key, request, peer, State.CALLING if cls.is_invite else State.TRYING)
        self._clients[key] = tx
        self.stats.client_created += 1
        tx._start(now)
        return tx

    def send_response(
        self, tx_or_request: ServerTransaction | Request, response: Response, now: float
    ) -> list[Event]:
        """Send a response within its server transaction.

        A 2xx to an INVITE whose transaction has already ended (timer L) is
        still sent, statelessly: the TU retransmits 2xx until the ACK comes
        and should not have to race the transaction's lifetime.
        """
        if isinstance(tx_or_request, ServerTransaction):
            tx = tx_or_request
        else:
            found = self.find_server(tx_or_request)
            if found is None:
                raise LookupError("no server transaction for this request")
            tx = found
        if tx.state is State.TERMINATED:
            if tx.is_invite and 200 <= response.status < 300:
                self._outgoing.append((bytes(response), tx.peer))
                return []
            raise TransitionError(f"{tx!r} is terminated: cannot send {response.status}")
        events: list[Event] = []
        tx._step(status_input(response.status), response, now, events)
        return events

    def send_stateless(self, message: Request | Response, peer: Peer) -> None:
        """Send outside any transaction: the ACK for a 2xx, a stray answer."""
        self._outgoing.append((bytes(message), peer))

    def transport_error(self, tx: Transaction, now: float) -> list[Event]:
        """The edge could not send for ``tx`` (ICMP error, TCP reset): §17.1.4, §17.2.4."""
        if tx.state is State.TERMINATED:
            return []
        events: list[Event] = []
        tx._step(Input.TRANSPORT_ERROR, None, now, events)
        return events

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The live server transaction ``request`` created or belongs to."""
        method = "INVITE" if request.method == "ACK" else request.method
        tx = self._servers.get(_server_key(request, method))
        if tx is not None and _to_tag_matches(tx, request):
            return tx
        return None

    def find_server_invite(self, cancel: Request) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL cancels (§9.2: matched like
        the INVITE itself, §17.2.3), so the TU can answer it 487; None when
        the CANCEL matches nothing (the TU then answers the CANCEL 481).
        Only a transaction still in PROCEEDING can take the 487; one that has
        already sent its final response just gets the CANCEL's 200."""
        tx = self._servers.get(_server_key(cancel, "INVITE"))
        if isinstance(tx, ServerInviteTransaction) and _to_tag_matches(tx, cancel):
            return tx
        return None

    # ------------------------------------------------------------ outputs

    def datagrams_to_send(self) -> list[tuple[bytes, Peer]]:
        """Everything queued for the wire since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction, or None when idle."""
        return self._heap.next_deadline()

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``."""
        events: list[Event] = []
        heap = self._heap
        # A fired timer re-arms at most one timer, always after ``now``, so
        # the number of due entries drops on every turn: len(heap) bounds it.
        for _ in range(len(heap)):
            due = heap.pop_due(now)
            if due is None:
                break
            tx, timer = due
            tx._step(timer, None, now, events)
        return events

    # ------------------------------------------------------------ internals

    def _remove(self, tx: Transaction) -> None:
        self._heap.disarm_all(tx)
        table: dict = self._clients if tx.is_client else self._servers
        if table.get(tx.key) is tx:
            del table[tx.key]
