"""The vocabulary the transaction layer and its user share: peers, branches,
events, counters and the one error the TU can provoke.

Separate from the machines so that a TU (the switch, the B2BUA) can name what
it receives without the state tables, and so that the machines and the layer
import these from one place below both.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from softswitch.sip.message import Request, Response

if TYPE_CHECKING:
    from softswitch.sip.transaction.client import ClientTransaction
    from softswitch.sip.transaction.machine import Transaction
    from softswitch.sip.transaction.server import ServerTransaction

#: RFC 3261 §8.1.1.7: every branch of an RFC 3261 element starts with this,
#: which is how a server knows it may match on the branch alone (§17.2.3).
MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh branch: the magic cookie and 80 random bits (§8.1.1.7 wants
    branches unique across space and time, so no counters)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from or goes to; the daemon edge maps it to a
    socket (UDP) or a connection (TCP). ``transport`` is 'udp' or 'tcp'."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Reliable transports get no retransmissions and zero-length wait
        states (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2)."""
        return self.transport != "udp"


class TransitionError(RuntimeError):
    """The TU asked for something its transaction's state forbids (for example
    a second final response). Network input never raises this: every
    (state, network input) pair is in the tables."""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request created a server transaction; answer with send_response."""

    tx: ServerTransaction
    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK for a 2xx (end-to-end, RFC 6026 §8.7): the dialog consumes it."""

    request: Request
    peer: Peer


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for a client transaction, first copy only (2xx to INVITE
    excepted: every copy comes up so the TU can re-ACK, §13.2.2.4)."""

    tx: ClientTransaction
    response: Response


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B or F (client: the TU acts as if it got a 408, §8.1.3.1) or
    timer H (server: the ACK for a non-2xx final never came)."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class TransportError:
    """The edge reported that sending failed (§17.1.4, §17.2.4)."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction is gone; drop any reference the TU keeps to it."""

    tx: Transaction


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response matching no client transaction (§18.1.2: discard). Counted;
    a 2xx to INVITE here is one the TU may still want to ACK and BYE."""

    response: Response
    peer: Peer


Event = (
    RequestReceived
    | AckReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
    | StrayResponse
)


@dataclass(slots=True)
class TransactionStats:
    """Counters, so that nothing the layer swallows is swallowed silently."""

    client_created: int = 0
    server_created: int = 0
    retransmitted: int = 0  # requests, ACKs and responses we sent again
    absorbed: int = 0  # retransmissions received and handled by a transaction
    stray_responses: int = 0
    timeouts: int = 0
    malformed: int = 0  # messages whose Via/CSeq/From could not be read
