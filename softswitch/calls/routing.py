"""Where an authenticated INVITE goes: a conference room, a user's devices, or a refusal.

Routing reads the dialled Request-URI user only: every user of the switch
lives in one domain, so the host part (often our IP address) says nothing.
The checks run in the order a caller would want to hear about them: a
conference prefix first (rooms are not users), then whether the callee
exists (404), is registered (480) and has room for one more call (486).
The caller's own limit is checked by the caller of ``route`` before it.

Call forwarding and do-not-disturb (a user's ``forward_*``, ``dnd``) are
decided here where they can be before anything rings: forward-always; DND
(486, or forward_busy); no registration (480, or forward_noanswer); the
callee at its max_calls (486, or forward_busy).  Each hop is checked again
with the target's own settings, so a chain bob -> carol -> dave works.
What needs ringing first (the phones answer busy, nobody answers within
noanswer_after) is decided in ``setup`` with the same ``forward_to`` and
``settle``.  A chain longer than ``MAX_FORWARD_HOPS`` or one that comes back
to a user already in it is refused with 482 Loop Detected (RFC 3261
§21.4.20): the status that says what happened, where 486 would tell the
caller a person is busy and 480 would invite a retry that loops again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from softswitch.calls.state import Refusal
from softswitch.model.users import Binding, User, UserDirectory
from softswitch.sip.uri import SipUri, TelUri, Uri

__all__ = [
    "MAX_FORWARD_HOPS",
    "Conference",
    "Destination",
    "Locator",
    "dialled_user",
    "forward_to",
    "route",
    "settle",
]

#: Forwarding hops one call may take (dialled user -> ... -> the one that rings).
MAX_FORWARD_HOPS = 5


class Locator(Protocol):
    def lookup(self, username: str, domain: str, now: float) -> list[Binding]: ...


@dataclass(frozen=True, slots=True)
class Conference:
    """A dialled conference room (``conf1``: room ``conf1``)."""

    room: str


@dataclass(frozen=True, slots=True)
class Destination:
    """A registered user and the devices to fork to."""

    user: User
    bindings: tuple[Binding, ...]
    #: the users the call was forwarded from, the dialled one first ("" = not forwarded)
    forwarded_from: tuple[str, ...] = ()


def dialled_user(uri: Uri) -> str | None:
    """The user part of a sip:/sips: Request-URI, or a tel: number (RFC 3966)."""
    if isinstance(uri, SipUri):
        return uri.user
    if isinstance(uri, TelUri):
        return uri.number
    return None


def route(
    uri: Uri,
    domain: str,
    *,
    prefix: str,
    directory: UserDirectory,
    location: Locator,
    active_calls: Callable[[str, str], int],
    now: float,
) -> Conference | Destination | Refusal:
    """Route one INVITE by its Request-URI (see the module docstring for the order)."""
    user = dialled_user(uri)
    if not user:
        return Refusal.UNKNOWN_CALLEE
    if prefix and user.startswith(prefix) and len(user) > len(prefix):
        return Conference(user)
    callee = directory.lookup(user, domain)
    if callee is None or not callee.enabled:
        return Refusal.UNKNOWN_CALLEE
    return settle(
        callee,
        (),
        domain,
        directory=directory,
        location=location,
        active_calls=active_calls,
        now=now,
    )


def settle(
    callee: User,
    chain: tuple[str, ...],
    domain: str,
    *,
    directory: UserDirectory,
    location: Locator,
    active_calls: Callable[[str, str], int],
    now: float,
) -> Destination | Refusal:
    """Follow ``callee``'s forwarding that is decided before ringing, hop by hop.

    ``chain`` is the users already forwarded from (the dialled one first).
    """
    while True:
        bindings = location.lookup(callee.username, domain, now)
        if callee.forward_always:
            target, refusal = callee.forward_always, None
        elif callee.dnd:
            target, refusal = callee.forward_busy, Refusal.DO_NOT_DISTURB
        elif not bindings:
            target, refusal = callee.forward_noanswer, Refusal.NOT_REGISTERED
        elif callee.max_calls and active_calls(callee.username, domain) >= callee.max_calls:
            target, refusal = callee.forward_busy, Refusal.CALLEE_OVER_LIMIT
        else:
            return Destination(callee, tuple(bindings), chain)
        if not target:
            assert refusal is not None, "forward_always is set"
            return refusal
        step = forward_to(callee, target, chain, domain, directory)
        if isinstance(step, Refusal):
            return step
        callee, chain = step


def forward_to(
    callee: User, target: str, chain: tuple[str, ...], domain: str, directory: UserDirectory
) -> tuple[User, tuple[str, ...]] | Refusal:
    """One forwarding hop from ``callee`` to the user ``target``: (target, longer chain).

    482 (FORWARD_LOOP) if ``target`` is already in the chain or the chain
    would be longer than MAX_FORWARD_HOPS; 404 if ``target`` is no (enabled) user.
    """
    chain = (*chain, callee.username)
    if target in chain or len(chain) > MAX_FORWARD_HOPS:
        return Refusal.FORWARD_LOOP
    user = directory.lookup(target, domain)
    if user is None or not user.enabled:
        return Refusal.UNKNOWN_CALLEE
    return user, chain
