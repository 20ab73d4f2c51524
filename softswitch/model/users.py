"""Users and their registered contacts: the data the registrar and calls read.

Plain frozen dataclasses and one dict, with no database library behind them
(DESIGN principle 4: everything in memory at run time). The persistence layer
(softswitch/db/) maps them to tables; the DB thread fills a `UserDirectory`
from its snapshots and the main thread only ever reads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Column widths of the names: the registrar refuses what could not be stored.
MAX_USERNAME = 64
MAX_DOMAIN = 128
#: Seconds a forwarded-on-no-answer call rings before it goes to forward_noanswer.
DEFAULT_NOANSWER_AFTER = 20
MAX_CONTACT = 512  # (64 + 128 + 512) * 4 bytes fits InnoDB's 3072-byte key limit


@dataclass(frozen=True, slots=True)
class Forwarding:
    """A user's call forwarding and do-not-disturb (softswitch.calls.routing).

    Targets are usernames in the user's own domain, "" = off.
    """

    always: str = ""
    busy: str = ""  # also for DND and for the user at its max_calls
    noanswer: str = ""  # also when the user has no registration
    noanswer_after: int = DEFAULT_NOANSWER_AFTER  # seconds of ringing before `noanswer`
    dnd: bool = False  # do-not-disturb: 486, or `busy` if set

    @classmethod
    def of(
        cls,
        always: str = "",
        busy: str = "",
        noanswer: str = "",
        noanswer_after: int = DEFAULT_NOANSWER_AFTER,
        dnd: bool = False,
    ) -> Forwarding | None:
        """The record, or None when it says nothing (the usual user: no object at all)."""
        value = cls(always, busy, noanswer, noanswer_after, dnd)
        return None if value == _NO_FORWARDING else value


_NO_FORWARDING = Forwarding()


@dataclass(frozen=True, slots=True)
class User:
    """One SIP account as the main thread sees it. Never holds a password."""

    id: int
    username: str
    domain: str
    ha1_md5: str
    ha1_sha256: str
    display_name: str
    enabled: bool
    record_calls: bool
    max_calls: int  # 0 = unlimited
    srtp: str = ""  # "optional" | "mandatory" | "off", "" = [calls] srtp (softswitch.calls.media)
    # Call forwarding and DND; None (most users) = none. One slot, not five: 100,000 users.
    forwarding: Forwarding | None = None

    @property
    def forward_always(self) -> str:
        return self.forwarding.always if self.forwarding else ""

    @property
    def forward_busy(self) -> str:
        return self.forwarding.busy if self.forwarding else ""

    @property
    def forward_noanswer(self) -> str:
        return self.forwarding.noanswer if self.forwarding else ""

    @property
    def noanswer_after(self) -> int:
        return self.forwarding.noanswer_after if self.forwarding else DEFAULT_NOANSWER_AFTER

    @property
    def dnd(self) -> bool:
        return self.forwarding.dnd if self.forwarding else False

    def ha1(self, algorithm: str = "MD5") -> str | None:
        """The stored HA1 for a digest algorithm ('MD5' or 'SHA-256'), else None."""
        algo = algorithm.upper()
        if algo == "MD5":
            return self.ha1_md5
        if algo == "SHA-256":
            return self.ha1_sha256
        return None


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an address of record, as persisted.

    `expires_at` is absolute epoch seconds so that a binding loaded after a
    restart keeps its original lifetime. `source_*` is where the REGISTER
    really came from (the NAT's public side), which is where requests to the
    phone must go.
    """

    username: str
    domain: str
    contact: str
    expires_at: float
    source_transport: str
    source_host: str
    source_port: int
    call_id: str
    cseq: int
    path: str | None = None
    received: str | None = None
    user_agent: str | None = None
    instance: str | None = None
    reg_id: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes a binding unique: (username, domain, contact)."""
        return (self.username, self.domain, self.contact)


_BINDING_LIMITS = {
    "username": MAX_USERNAME,
    "domain": MAX_DOMAIN,
    "contact": MAX_CONTACT,
    "source_transport": 8,
    "source_host": 64,
    "path": 1024,
    "received": 255,
    "call_id": 255,
    "user_agent": 255,
    "instance": 255,
}


def check_binding(binding: Binding) -> None:
    """Raise ValueError if `binding` cannot be stored (a text column too long).

    Checked when the registrar hands the binding over, not when the DB thread
    writes it: a REGISTER whose contact cannot be persisted must be refused
    then, instead of failing a batch later where nobody can answer for it.
    """
    for name, limit in _BINDING_LIMITS.items():
        value = getattr(binding, name)
        if value is not None and len(value) > limit:
            raise ValueError(f"{name} is longer than {limit} characters")


UserKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Deleted:
    """A user the database no longer has. `id` guards against a re-added namesake."""

    username: str
    domain: str
    id: int


class UserDirectory:
    """Every user in memory, keyed by (username, lower-case domain).

    Owned by the main thread; filled from the DB thread's `Loaded` snapshot
    and kept current with its `UsersChanged` messages. Lookups are one dict
    access: this is on the path of every REGISTER and INVITE.
    """

    __slots__ = ("_users",)

    def __init__(self) -> None:
        self._users: dict[UserKey, User] = {}

    def __len__(self) -> int:
        return len(self._users)

    def lookup(self, username: str, domain: str) -> User | None:
        """The user, or None. The domain is compared case-insensitively."""
        return self._users.get((username, domain.lower()))

    def load(self, users: dict[UserKey, User]) -> None:
        """Replace everything with a snapshot (takes ownership of the dict)."""
        self._users = users

    def apply(self, changed: Iterable[User], deleted: Iterable[Deleted]) -> None:
        """Apply one poll's changes: deletions first, then inserts/updates.

        That order makes "deleted then re-added within one poll" end with the
        user present. A deletion only removes the user if the id matches, so a
        late tombstone cannot remove a namesake added since.
        """
        users = self._users
        for d in deleted:
            key = (d.username, d.domain)
            current = users.get(key)
            if current is not None and current.id == d.id:
                del users[key]
        for u in changed:
            users[(u.username, u.domain)] = u

    def __iter__(self) -> Any:
        return iter(self._users.values())
