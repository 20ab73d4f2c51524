"""Feature codes dialled from a phone: call forwarding and do-not-disturb on and off.

A user dials, with the codes of ``[calls] feature_*`` (defaults below; ""
switches a code off): ``*72carol`` forwards every call to carol, ``*73``
stops that, ``*78`` turns do-not-disturb on and ``*79`` off.  The INVITE is
authenticated like any call (``SetupHandler`` hands it here after the
digest check), so a user can only change its own settings.

The change is applied to the in-memory directory at once (the very next call
sees it) and handed to the DB thread as ``UpdateUser``, which stamps the row
like ``softswitchctl user set`` so every daemon's user sync picks it up.
The phone is told by a short call: 200 with an SDP answer that rejects the
audio stream (port 0, RFC 3264 §6: no bearer session is ever allocated) and,
once it ACKs, an immediate BYE (§15: not before the ACK).  A forward to a
user that does not exist gets 404, to oneself 482.  No CDR is written: it
is not a call.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from softswitch.calls.outputs import Outputs
from softswitch.db.messages import UpdateUser
from softswitch.model.users import Forwarding, User, UserDirectory
from softswitch.sip.dialog import Dialog, request_dialog_id
from softswitch.sip.message import Request
from softswitch.sip.transaction import Peer, ServerTransaction

__all__ = ["FeatureCodes"]

#: Confirmations waiting for their ACK at most this long (64*T1), and at most this many.
_ACK_WAIT = 32.0
_MAX_PENDING = 1000


class FeatureCodes:
    """Recognises feature codes in a dialled user part and carries them out."""

    __slots__ = ("config", "directory", "domain", "on_update", "out", "pending")

    def __init__(
        self,
        out: Outputs,
        *,
        config: SimpleNamespace,
        directory: UserDirectory,
        domain: str,
        on_update: Callable[[UpdateUser], None],
    ) -> None:
        self.out = out
        self.config = config  # read on every use: a SIGHUP reload changes [calls]
        self.directory = directory
        self.domain = domain
        self.on_update = on_update
        #: dialog id of a confirmation -> (its dialog, the phone, give-up time)
        self.pending: dict[Any, tuple[Dialog, Peer, float]] = {}

    def settings(self, dialled: str, caller: User) -> dict[str, Any] | int | None:
        """The columns a dialled code sets, an error status, or None (not a code)."""
        calls = self.config.calls
        exact: dict[str, dict[str, Any]] = {
            calls.feature_forward_off: {"forward_always": ""},
            calls.feature_dnd_on: {"dnd": True},
            calls.feature_dnd_off: {"dnd": False},
        }
        exact.pop("", None)
        if dialled in exact:
            return exact[dialled]
        prefix = calls.feature_forward_on
        if prefix and dialled.startswith(prefix) and len(dialled) > len(prefix):
            target = dialled[len(prefix) :]
            if target == caller.username:
                return 482
            user = self.directory.lookup(target, self.domain)
            if user is None or not user.enabled:
                return 404
            return {"forward_always": target}
        return None

    def handle(
        self, tx: ServerTransaction, request: Request, peer: Peer, caller: User, now: float
    ) -> bool:
        """Carry out the code ``request`` dials, if it dials one (True: answered here)."""
        dialled = getattr(request.uri, "user", None) or ""
        values = self.settings(dialled, caller)
        if values is None:
            return False
        if isinstance(values, int):
            self.out.reply(tx, request, values, now)
            return True
        self.directory.apply([_changed(caller, values)], [])
        self.on_update(UpdateUser(caller.username, self.domain, tuple(values.items())))
        self.out.bump("feature_code")
        self._confirm(tx, request, peer, now)
        return True

    def _confirm(self, tx: ServerTransaction, request: Request, peer: Peer, now: float) -> None:
        """200 with every offered stream rejected; the BYE follows the ACK (see ``ack``)."""
        tag = secrets.token_hex(8)
        contact = self.out.contact_for(peer)
        dialog = Dialog.from_uas(request, tag, local_target=contact)
        response = self.out.leg_response(peer, request, 200, _rejecting(request.body), tag)
        self.out.respond(tx, response, now)
        pending = self.pending
        for key in [k for k, (_, _, until) in pending.items() if until < now]:
            del pending[key]
        if len(pending) < _MAX_PENDING:
            pending[dialog.id] = (dialog, peer, now + _ACK_WAIT)

    def ack(self, request: Request, now: float) -> bool:
        """The ACK of a confirmation: hang up now (True), or not ours (False)."""
        entry = self.pending.pop(request_dialog_id(request), None)
        if entry is None:
            return False
        dialog, peer, _ = entry
        self.out.request(dialog, peer, "BYE", now)
        return True


def _changed(user: User, values: dict[str, Any]) -> User:
    fw: dict[str, Any] = {
        "always": user.forward_always,
        "busy": user.forward_busy,
        "noanswer": user.forward_noanswer,
        "noanswer_after": user.noanswer_after,
        "dnd": user.dnd,
    }
    if "forward_always" in values:
        fw["always"] = values["forward_always"]
    if "dnd" in values:
        fw["dnd"] = values["dnd"]
    return replace(user, forwarding=Forwarding.of(**fw))


def _rejecting(offer: bytes) -> bytes:
    """An SDP answer rejecting every m= line of ``offer`` (RFC 3264 §6), or b"" if none."""
    lines = offer.decode("utf-8", "replace").splitlines()
    media = [line.split() for line in lines if line.startswith("m=")]
    if not media:
        return b""
    out = [
        "v=0",
        f"o=- {secrets.randbits(31)} 1 IN IP4 0.0.0.0",
        "s=-",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
    ]
    for m in media:
        if len(m) >= 4:
            out.append(f"{m[0]} 0 {m[2]} {m[3]}")
    return ("\r\n".join(out) + "\r\n").encode()
