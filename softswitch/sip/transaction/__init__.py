"""SIP transactions: RFC 3261 §17 with the RFC 6026 corrections, sans-I/O.

Import every name from ``softswitch.sip.transaction``; its modules are the
seams: ``events`` (peers, branches, what the TU receives, counters),
``timers`` (T1/T2/T4 and the timers derived from them), ``machine`` (inputs,
states, the stepping base class), ``client`` and ``server`` (the four state
machines and their tables) and ``layer`` (matching and the timer heap).

A transaction is one request and every response to it. This layer exists so
that the transaction user (registrar, B2BUA) sees each request once and each
response once, whatever the network loses or repeats: it retransmits over UDP,
absorbs retransmissions it receives, answers them from memory, and tells the TU
when a peer stops answering.

Driving it (aioquic-style; time is always a parameter, the caller owns the
clock and the sockets)::

    events = layer.receive(message, peer, now)     # parsed message from the wire
    tx = layer.send_request(request, peer, now)     # caller built the Via + branch
    events = layer.send_response(tx, response, now)
    for data, peer in layer.datagrams_to_send(): ...
    deadline = layer.get_timer()                     # earliest deadline, or None
    events = layer.handle_timer(now)

RFC 6026 is taken where it fixes real bugs: a 2xx to INVITE moves both INVITE
transactions to "Accepted" instead of destroying them, so 2xx retransmissions
are the TU's job (the layer never retransmits a 2xx by itself), a retransmitted
INVITE is still absorbed, and the 2xx's ACK (a new transaction of its own in
RFC 3261) is handed to the TU.

Responses to requests are sent to the peer the request came from (the
"symmetric response routing" of RFC 3581, what Kamailio's force_rport does):
phones behind NAT are the norm for a softswitch, and over TCP it is the only
way to reach the same connection (§18.2.2). On receipt the layer also writes
received= and rport= into the request's top Via (§18.2.1, RFC 3581 §4), so
every response built from it records the real source.

The TU owes each server transaction a final response: there is no timer
that ends a server transaction still waiting for one (RFC 3261 has none).
"""

from __future__ import annotations

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
    ResponseReceived,
    StrayResponse,
    TransactionStats,
    TransactionTerminated,
    TransactionTimeout,
    TransitionError,
    TransportError,
    new_branch,
)
from softswitch.sip.transaction.layer import TransactionLayer
from softswitch.sip.transaction.machine import Input, State, Transaction
from softswitch.sip.transaction.server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
)
from softswitch.sip.transaction.timers import Timers

__all__ = [
    "MAGIC_COOKIE",
    "AckReceived",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Event",
    "Input",
    "Peer",
    "RequestReceived",
    "ResponseReceived",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "State",
    "StrayResponse",
    "Timers",
    "Transaction",
    "TransactionLayer",
    "TransactionStats",
    "TransactionTerminated",
    "TransactionTimeout",
    "TransitionError",
    "TransportError",
    "new_branch",
]
