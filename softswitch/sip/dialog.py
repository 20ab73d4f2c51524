"""SIP dialogs (RFC 3261 §12), sans-I/O.

A dialog is the peer-to-peer relationship an INVITE (or SUBSCRIBE ...)
creates: the state both ends keep so that later requests (BYE, re-INVITE,
ACK for 2xx) reach the right device along the right proxies, with CSeq
numbers that let each end detect reordering. It is identified by
(Call-ID, local tag, remote tag) (§12), each end seeing the tags swapped.

The dialog does not send anything: ``create_request`` builds the request and
the caller hands it to the transaction layer (or, for the ACK of a 2xx,
sends it statelessly). It never sees time either: dialogs have no timers of
their own in RFC 3261.

Theory of operation (states, §12.1 and §13.2.2.4):
    EARLY      created by a 1xx with a To tag; a 2xx to the INVITE confirms it
               (route set and target recomputed from the 2xx), a 3xx-6xx ends it;
    CONFIRMED  created by a 2xx, or confirmed; a 408/481 to any request in it
               ends it (§12.2.1.2), and so does BYE (the TU calls terminate());
    TERMINATED nothing more happens in it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum, auto

from softswitch.sip.errors import SipError
from softswitch.sip.headers import parse_address
from softswitch.sip.message import Address, Request, Response, Via
from softswitch.sip.transaction import TransitionError
from softswitch.sip.uri import SipUri, Uri, parse_uri

#: Requests whose Contact replaces the remote target (§12.2: re-INVITE;
#: RFC 3311 UPDATE, RFC 6665 SUBSCRIBE/NOTIFY, RFC 3515 REFER).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

#: §19.1.1 (Table 1): parameters that may not appear in a Request-URI, dropped
#: when a strict-routing route entry becomes one (§12.2.1.1).
_NOT_IN_REQUEST_URI = ("method",)


class DialogState(Enum):
    EARLY = auto()
    CONFIRMED = auto()
    TERMINATED = auto()


_TRANSITIONS: dict[DialogState, frozenset[DialogState]] = {
    DialogState.EARLY: frozenset({DialogState.CONFIRMED, DialogState.TERMINATED}),
    DialogState.CONFIRMED: frozenset({DialogState.TERMINATED}),
    DialogState.TERMINATED: frozenset(),
}

DialogId = tuple[str, str, str | None]


def request_dialog_id(request: Request) -> DialogId:
    """The ID of the dialog ``request`` belongs to, seen by its receiver
    (§12.2.2: the local tag is the To tag, the remote tag the From tag)."""
    return (request.call_id, request.to.tag or "", request.from_.tag)


def response_dialog_id(response: Response) -> DialogId:
    """The ID of the dialog ``response`` belongs to, seen by the UAC that
    sent the request (local tag: From; remote tag: To, None for RFC 2543)."""
    return (response.call_id, response.from_.tag or "", response.to.tag)


def _copy(address: Address, what: str) -> Address:
    """A tag-less copy, so that the dialog shares nothing mutable with the
    message it came from (the message layer's Address objects are live)."""
    copy = parse_address(str(address), what)
    copy.tag = None
    return copy


def _tagged(address: Address, tag: str | None) -> str:
    params = dict(address.params)
    if tag is not None:
        params["tag"] = tag
    return str(Address(address.uri, address.display, params))


def _copy_uri(uri: Uri) -> Uri:
    return parse_uri(str(uri))


def _initial_seq() -> int:
    """§8.1.1.5: chosen by the sender, below 2**31 so it can grow."""
    return 1 + secrets.randbelow(2**31 - 2**16)


@dataclass(slots=True, eq=False)
class Dialog:
    """One dialog's state (§12.1): IDs, sequence numbers, where to send.

    ``local_uri``/``remote_uri`` are the From/To addresses without tags;
    ``remote_target`` the peer's Contact URI; ``route_set`` the Route
    entries in the order they go into requests; ``local_target`` our own
    Contact, added to every target-refresh request we build.
    """

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: Address
    remote_uri: Address
    local_seq: int | None
    remote_seq: int | None
    remote_target: Uri
    route_set: list[Address] = field(default_factory=list)
    secure: bool = False
    state: DialogState = DialogState.CONFIRMED
    local_target: Address | None = None

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    # ------------------------------------------------------------ creation

    @classmethod
    def from_uac(cls, request: Request, response: Response, *, over_tls: bool = False) -> Dialog:
        """The dialog a UAC gets from a 2xx, or a 1xx with a To tag, to ``request`` (§12.1.2).

        Route set: the response's Record-Route in reverse order (it lists
        the proxies from the callee back to us). Remote target: the
        response's Contact; a 2xx without one (broken, but seen) keeps the
        original Request-URI so the dialog can at least be torn down.
        """
        status = response.status
        remote_tag = response.to.tag
        if not 101 <= status < 300 or (status < 200 and remote_tag is None):
            raise ValueError(f"a {status} response does not create a dialog (§12.1)")
        local_tag = request.from_.tag
        if local_tag is None:
            raise ValueError("the request has no From tag (§8.1.1.3)")
        contacts = response.contacts
        target = contacts[0].uri if contacts else request.uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_copy(request.from_, "From"),
            remote_uri=_copy(request.to, "To"),
            local_seq=request.cseq,
            remote_seq=None,
            remote_target=_copy_uri(target),
            route_set=[_copy(r, "Record-Route") for r in reversed(response.record_routes)],
            secure=over_tls and request.uri.scheme == "sips",
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
            local_target=_copy(request.contacts[0], "Contact") if request.contacts else None,
        )

    @classmethod
    def from_uas(
        cls,
        request: Request,
        local_tag: str,
        *,
        local_target: Address | str | None = None,
        early: bool = False,
        over_tls: bool = False,
    ) -> Dialog:
        """The dialog a UAS creates when it answers ``request`` with a 2xx
        (or, ``early``, a 1xx) carrying To tag ``local_tag`` (§12.1.1).

        Route set: the request's Record-Route in order. Remote target: the
        request's Contact, which §8.1.1.8 makes mandatory in a dialog-creating
        request: without it there is nowhere to send the BYE, hence 400.
        """
        contacts = request.contacts
        if not contacts:
            raise SipError(400, "Missing Contact header")
        if isinstance(local_target, str):
            local_target = parse_address(local_target, "Contact")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag,
            local_uri=_copy(request.to, "To"),
            remote_uri=_copy(request.from_, "From"),
            local_seq=None,
            remote_seq=request.cseq,
            remote_target=_copy_uri(contacts[0].uri),
            route_set=[_copy(r, "Record-Route") for r in request.record_routes],
            secure=over_tls and request.uri.scheme == "sips",
            state=DialogState.EARLY if early else DialogState.CONFIRMED,
            local_target=local_target,
        )

    # ------------------------------------------------------------ state

    def _move(self, state: DialogState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise TransitionError(f"dialog {self.state.name} cannot become {state.name}")
        self.state = state

    def confirm(self) -> None:
        """An early dialog is confirmed by the 2xx (UAS: when it sends it)."""
        if self.state is not DialogState.CONFIRMED:
            self._move(DialogState.CONFIRMED)

    def terminate(self) -> None:
        """BYE sent or received, or the call failed: the dialog is over."""
        if self.state is not DialogState.TERMINATED:
            self._move(DialogState.TERMINATED)

    # ------------------------------------------------------------ sending

    def create_request(
        self,
        method: str,
        *,
        via: str | Via,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Request:
        """A request within the dialog (§12.2.1.1), ready for send_request.

        ``via`` is the top Via with a fresh branch (the transaction layer's
        new_branch()). The CSeq is the next local one; ACK and CANCEL reuse
        the current one (an ACK for 2xx should come from create_ack).
        """
        if method in ("ACK", "CANCEL"):
            if self.local_seq is None:
                raise ValueError(f"no request in this dialog for a {method} to refer to")
            seq = self.local_seq
        else:
            seq = _initial_seq() if self.local_seq is None else self.local_seq + 1
            if seq >= 2**32:
                raise ValueError("the local CSeq would exceed 2**32-1 (§8.1.1.5)")
            self.local_seq = seq
        return self._build(method, seq, via, body, content_type, headers)

    def create_ack(
        self,
        invite_cseq: int,
        *,
        via: str | Via,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Request:
        """The ACK for a 2xx to the INVITE with CSeq ``invite_cseq``
        (§13.2.2.4): built like any in-dialog request, with the INVITE's
        CSeq number and a branch of its own. A late offer goes in ``body``."""
        return self._build("ACK", invite_cseq, via, body, content_type, headers)

    def _build(
        self,
        method: str,
        seq: int,
        via: str | Via,
        body: bytes,
        content_type: str | None,
        extra: list[tuple[str, str]] | None,
    ) -> Request:
        uri, routes = self._request_uri_and_routes()
        headers: list[list[str]] = [
            ["Via", str(via)],
            ["Max-Forwards", "70"],
            ["From", _tagged(self.local_uri, self.local_tag)],
            ["To", _tagged(self.remote_uri, self.remote_tag)],
            ["Call-ID", self.call_id],
            ["CSeq", f"{seq} {method}"],
        ]
        headers += [["Route", str(route)] for route in routes]
        # §12.2.1.1: a target refresh carries our (possibly new) Contact.
        if self.local_target is not None and method in TARGET_REFRESH:
            headers.append(["Contact", str(self.local_target)])
        if content_type is not None:
            headers.append(["Content-Type", content_type])
        headers += [[name, value] for name, value in extra or ()]
        return Request(method, uri, headers=headers, body=body)

    def _request_uri_and_routes(self) -> tuple[Uri, list[Address]]:
        """§12.2.1.1. Loose routing (first route has ``lr``, RFC 3261
        proxies): the Request-URI is the remote target and the route set
        goes in Route. Strict routing (RFC 2543 proxies): the first route
        becomes the Request-URI and the remote target the last Route."""
        routes = self.route_set
        if not routes:
            return _copy_uri(self.remote_target), []
        first = routes[0].uri
        if not isinstance(first, SipUri) or "lr" in first.params:
            return _copy_uri(self.remote_target), list(routes)
        uri = _copy_uri(first)
        assert isinstance(uri, SipUri)
        for name in _NOT_IN_REQUEST_URI:
            uri.params.pop(name, None)
        uri.headers.clear()
        return uri, [*routes[1:], Address(_copy_uri(self.remote_target))]

    # ------------------------------------------------------------ receiving

    def receive_request(self, request: Request) -> None:
        """Check and absorb a request the peer sent within the dialog (§12.2.2).

        Raises SipError(481) for a request of another dialog and SipError(500)
        for one out of order. §12.2.2 asks for 500 when the CSeq is lower;
        an equal one is refused too: copies of a request are absorbed by its
        transaction, so an equal CSeq reaching the dialog is a stale copy
        that outlived it, or a peer reusing numbers, and must not act twice.
        ACK (its INVITE's number) and CANCEL (hop-by-hop) are not sequenced.
        """
        if request_dialog_id(request) != self.id:
            raise SipError(481, "Call/Transaction Does Not Exist")
        method = request.method
        if method == "ACK" or method == "CANCEL":
            return
        seq = request.cseq
        if self.remote_seq is not None and seq <= self.remote_seq:
            raise SipError(500, "CSeq Out of Order")
        self.remote_seq = seq
        # §12.2.2: a target refresh replaces the remote target with its Contact.
        if method in TARGET_REFRESH and request.contacts:
            self.remote_target = _copy_uri(request.contacts[0].uri)

    def receive_response(self, response: Response) -> None:
        """Update the dialog from a response to a request we sent in it.

        §13.2.2.4: the 2xx confirming an early dialog recomputes its route
        set and remote target; §12.2.1.2: a 2xx to a target refresh updates
        the target, a 408 or 481 ends the dialog; a 3xx-6xx to the initial
        INVITE ends an early dialog (§12.3).
        """
        if response_dialog_id(response) != self.id:
            raise ValueError(f"response of dialog {response_dialog_id(response)}, not {self.id}")
        status = response.status
        method = response.cseq_method
        if status in (408, 481):
            self.terminate()
            return
        if status >= 300 and self.state is DialogState.EARLY and method == "INVITE":
            self.terminate()
            return
        if not 200 <= status < 300:
            return
        if method == "INVITE" and self.state is DialogState.EARLY:
            self.confirm()
            self.route_set = [_copy(r, "Record-Route") for r in reversed(response.record_routes)]
        if method in TARGET_REFRESH and response.contacts:
            self.remote_target = _copy_uri(response.contacts[0].uri)
