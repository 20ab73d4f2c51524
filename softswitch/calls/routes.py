"""Where the manager sends each input: one table per kind of input.

Handlers fill these in ``register``; ``CallManager`` looks the input up and
calls what it finds.  A new handler (transfer, forwarding, presence) is one
more ``register`` call: it claims its methods, the roles of the requests it
sends, its timers and the states whose bearer wait it ends, and nothing
that already works changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from softswitch.calls.state import Call, CallState, Timer
from softswitch.sip.message import Request, Response
from softswitch.sip.transaction import ClientTransaction, Peer, ServerTransaction

__all__ = ["Routes"]

RequestFn = Callable[[ServerTransaction, Request, Peer, float], None]
ResponseFn = Callable[[Call, ClientTransaction, Any, Response, float], None]
TimeoutFn = Callable[[Call, ClientTransaction, Any, float], None]
CallFn = Callable[[Call, float], None]
TimerFn = Callable[[Call, Timer, float], None]
EventFn = Callable[[Call, Any, float], None]


class Routes:
    """The dispatch tables, filled by the handlers' ``register``."""

    __slots__ = ("events", "requests", "responses", "settled", "timeouts", "timers")

    def __init__(self) -> None:
        #: (method, in a dialog?) -> handler; anything else gets 405
        self.requests: dict[tuple[str, bool], RequestFn] = {}
        #: role of one of our requests -> its responses / its timeout (§8.1.3.1)
        self.responses: dict[str, ResponseFn] = {}
        self.timeouts: dict[str, TimeoutFn] = {}
        #: a call timer -> what fires
        self.timers: dict[Timer, TimerFn] = {}
        #: the state of a call whose last pending bearer request was answered
        #: -> the step that waited for it
        self.settled: dict[CallState, CallFn] = {}
        #: type of a bearer event about a session -> handler
        self.events: dict[type, EventFn] = {}

    def request(self, method: str, fn: RequestFn, *, initial: bool, in_dialog: bool) -> None:
        """Claim ``method`` out of a dialog (``initial``) and/or within one."""
        for flag, wanted in ((False, initial), (True, in_dialog)):
            if wanted:
                key = (method, flag)
                assert key not in self.requests, f"{key} claimed twice"
                self.requests[key] = fn

    def role(self, name: str, on_response: ResponseFn, on_timeout: TimeoutFn) -> None:
        assert name not in self.responses, f"role {name} claimed twice"
        self.responses[name] = on_response
        self.timeouts[name] = on_timeout

    def timer(self, kind: Timer, fn: TimerFn) -> None:
        assert kind not in self.timers, f"{kind} claimed twice"
        self.timers[kind] = fn

    def when_settled(self, state: CallState, fn: CallFn) -> None:
        assert state not in self.settled, f"{state} claimed twice"
        self.settled[state] = fn

    def event(self, kind: type, fn: EventFn) -> None:
        self.events[kind] = fn
