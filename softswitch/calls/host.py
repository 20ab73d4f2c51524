"""What the B2BUA's mixins (``CallSetup``, ``MidCall``, ``Failover``) use of ``CallManager``.

The B2BUA is one class, ``softswitch.calls.manager.CallManager``, written in four
files so each reads in one sitting.  The mixins call helpers and read state
that only ``CallManager`` defines; ``CallHost``, the base of the mixins,
declares them so that a type checker can follow those calls, and checks
that ``CallManager``'s definitions keep matching.  It adds nothing at run
time: the annotations are not evaluated and the methods exist only for the
type checker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import SimpleNamespace

    from softswitch.bearerpool import BearerPool
    from softswitch.calls.manager import DelayHistogram
    from softswitch.calls.state import Call, Refusal, Timer
    from softswitch.location import Location
    from softswitch.model.cdr import Cdr
    from softswitch.model.users import User, UserDirectory
    from softswitch.protocol import LegSpec, Message
    from softswitch.sip.digest import DigestServer
    from softswitch.sip.message import Request, Response
    from softswitch.sip.sdp import SessionDescription
    from softswitch.sip.transaction import (
        ClientTransaction,
        Peer,
        ServerTransaction,
        TransactionLayer,
    )

__all__ = ["CallHost"]


class CallHost:
    """The state and helpers of ``CallManager`` that its mixins use."""

    layer: TransactionLayer
    location: Location
    directory: UserDirectory
    bearers: BearerPool
    auth: DigestServer
    on_cdr: Callable[[Cdr], None]
    domain: str
    config: SimpleNamespace
    setup_delay: DelayHistogram
    _via: dict[str, str]
    _contact: dict[str, str]
    _dialogs: dict[tuple, tuple[Call, int]]
    _by_invite: dict[tuple[str, str | None], Call]
    _sessions: dict[int, Call]
    _txs: dict[ClientTransaction, tuple[Call, str, Any]]
    _rooms: dict[str, list[Any]]
    _next_session: int
    _closing: bool

    if TYPE_CHECKING:
        # softswitch/calls/manager.py

        def active_calls(self, username: str, domain: str) -> int: ...

        def _bearer(self, call: Call, message: Message, now: float) -> int: ...

        def _update(self, call: Call, leg: int, spec: LegSpec, now: float) -> None: ...

        def _start_recording(self, call: Call, now: float) -> None: ...

        def _send_reinvite(
            self, call: Call, leg: int, offer: SessionDescription, role: str, extra: Any, now: float
        ) -> ClientTransaction: ...

        def _a_response(
            self, call: Call, status: int, *, reason: str | None = None, body: bytes = b""
        ) -> Response: ...

        def _reply_a(
            self,
            call: Call,
            status: int,
            now: float,
            *,
            reason: str | None = None,
            body: bytes = b"",
        ) -> None: ...

        def _reply(
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
        ) -> None: ...

        def _send_2xx(
            self,
            call: Call,
            leg: int,
            tx: ServerTransaction,
            response: Response,
            owed: int | None,
            now: float,
        ) -> None: ...

        def _send_ack(self, call: Call, leg: int, cseq: int) -> None: ...

        def _hangup(
            self,
            call: Call,
            now: float,
            *,
            refusal: Refusal | None = None,
            status: int | None = None,
            by: int | None = None,
        ) -> None: ...

        def _arm(self, call: Call, kind: Timer, deadline: float) -> None: ...

        def _disarm(self, call: Call, kind: Timer) -> None: ...

        def _count(self, call: Call, delta: int) -> None: ...

        def _contact_for(self, peer: Peer) -> str: ...

        def _bump(self, name: str) -> None: ...

        # softswitch/calls/setup.py, for MidCall

        def _refuse(
            self,
            tx: ServerTransaction,
            request: Request,
            refusal: Refusal,
            now: float,
            caller: User | None = None,
            callee: str = "",
            *,
            reason: str | None = None,
            headers: list[tuple[str, str]] | None = None,
        ) -> None: ...
