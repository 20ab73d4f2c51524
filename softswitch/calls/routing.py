"""Where an authenticated INVITE goes: a conference room, a user's devices, or a refusal.

Routing reads the dialled Request-URI user only: every user of the switch
lives in one domain, so the host part (often our IP address) says nothing.
The checks run in the order a caller would want to hear about them: a
conference prefix first (rooms are not users), then whether the callee
exists (404), is registered (480) and has room for one more call (486).
The caller's own limit is checked by the caller of ``route`` before it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from softswitch.calls.state import Refusal
from softswitch.model.users import Binding, User, UserDirectory
from softswitch.sip.uri import SipUri, TelUri, Uri

__all__ = ["Conference", "Destination", "Locator", "dialled_user", "route"]


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
    bindings = location.lookup(user, domain, now)
    if not bindings:
        return Refusal.NOT_REGISTERED
    if callee.max_calls and active_calls(user, domain) >= callee.max_calls:
        return Refusal.CALLEE_OVER_LIMIT
    return Destination(callee, tuple(bindings))
