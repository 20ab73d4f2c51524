"""The location service (usrloc): address of record → registered contacts.

Theory of operation
-------------------
This is storage only, as Kamailio's ``usrloc`` is to its ``registrar``: the
registrar (softswitch/registrar.py) decides what a REGISTER means and hands
the resulting ``userdb.Binding`` values here; the B2BUA asks ``lookup`` where
to fork an INVITE.  Nothing here parses SIP or touches the database: the core
turns every change into a DB-thread command so bindings survive a restart,
and ``load`` puts them back at start.

A binding is keyed by (username, lower-case domain, contact URI text).  Its
``source_*`` fields say where the REGISTER really came from (RFC 3581: the
NAT's public side, or the TCP connection), which is where requests to the
phone must be sent; the contact URI is what goes in their Request-URI.

Expiry is driven by a heap of (expires_at, key) entries with lazy deletion:
a refreshed or removed binding leaves its old entry behind, skipped when it
surfaces; the heap is rebuilt when stale entries outnumber live ones, so a
phone that re-registers every minute cannot grow it without bound.

``expires_at`` is absolute wall-clock seconds (``time.time()``), the same
clock the database stores, so a binding loaded after a restart keeps its
original lifetime.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from softswitch.model.users import Binding

__all__ = ["MAX_CONTACTS", "LocalAddress", "Location"]

#: Contacts kept per address of record; more devices than this for one user
#: is a misbehaving phone (a new contact at every reboot), not a user.
MAX_CONTACTS = 10

AorKey = tuple[str, str]
#: Transports whose bindings are reached through the phone's own connection.
_CONNECTED = frozenset({"tcp", "tls"})


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """Where we are reachable: what goes in our Via sent-by, Contact and
    Record-Route.  ``host`` is an IP address or name (IPv6 without brackets)."""

    host: str
    port: int
    transports: tuple[str, ...]
    #: Where SIP over TLS is served (when "tls" is in ``transports``).
    tls_port: int = 5061

    @property
    def host_port(self) -> str:
        """``host:port`` as written in a Via or a SIP URI (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def sent_by(self, transport: str) -> str:
        """Our Via sent-by and Contact ``host:port`` for ``transport`` (TLS has its own port)."""
        if transport == "tls":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{host}:{self.tls_port}"
        return self.host_port


class Location:
    """Every live binding, in memory; owned by the main thread.

    ``max_contacts`` bounds one AOR: ``save`` beyond it evicts the binding
    that would expire first (the oldest registration), so a phone that
    re-registers with a fresh contact at each reboot pushes out its own
    stale bindings instead of locking its user out.

    Memory matters (DESIGN.md: 100,000 users with their registrations in
    memory): an AOR's contacts are a short list (scanned, at most
    ``max_contacts``) rather than a dict, and only connection (TCP, TLS)
    sources are indexed.
    """

    __slots__ = ("_aors", "_count", "_heap", "_sources", "max_contacts")

    def __init__(self, max_contacts: int = MAX_CONTACTS) -> None:
        if max_contacts < 1:
            raise ValueError("max_contacts must be at least 1")
        self.max_contacts = max_contacts
        self._aors: dict[AorKey, list[Binding]] = {}
        # (expires_at, username, domain, contact): the binding's own objects.
        self._heap: list[tuple[float, str, str, str]] = []
        self._count = 0
        # (transport, host, port) of TCP and TLS registrations -> how many
        # bindings came from there: the daemon keeps such a connection open
        # (§18.2.2).
        self._sources: Counter[tuple[str, str, int]] = Counter()

    def __len__(self) -> int:
        """Number of bindings (expired ones not yet collected included)."""
        return self._count

    @property
    def aor_count(self) -> int:
        """Number of addresses of record with at least one binding."""
        return len(self._aors)

    # ------------------------------------------------------------------ reads

    def lookup(self, username: str, domain: str, now: float) -> list[Binding]:
        """The unexpired bindings of username@domain, oldest registration first:
        the contacts an INVITE to that user is forked to."""
        contacts = self._aors.get((username, domain.lower()))
        if not contacts:
            return []
        return [b for b in contacts if b.expires_at > now]

    def get(self, username: str, domain: str, contact: str) -> Binding | None:
        """One binding by its exact contact text (expired or not), or None."""
        for b in self._aors.get((username, domain.lower()), ()):
            if b.contact == contact:
                return b
        return None

    def has_source(self, transport: str, host: str, port: int) -> bool:
        """Whether any binding was registered over TCP or TLS from this address
        (a connection the daemon must keep open).  Always False for UDP."""
        return (transport, host, port) in self._sources

    def __iter__(self) -> Iterator[Binding]:
        for contacts in self._aors.values():
            yield from contacts

    # ------------------------------------------------------------------ writes

    def save(self, binding: Binding) -> list[Binding]:
        """Insert or replace ``binding``; returns the bindings evicted to stay
        within ``max_contacts`` (the caller deletes them from the database)."""
        key = (binding.username, binding.domain)
        if binding.domain != binding.domain.lower():
            raise ValueError("binding domains are stored lower-case")
        contacts = self._aors.get(key)
        if contacts is None:
            contacts = self._aors[key] = []
        for i, old in enumerate(contacts):
            if old.contact == binding.contact:
                del contacts[i]
                self._unsource(old)
                self._count -= 1
                break
        contacts.append(binding)
        self._count += 1
        if binding.source_transport in _CONNECTED:
            src = (binding.source_transport, binding.source_host, binding.source_port)
            self._sources[src] += 1
        self._push(binding)
        evicted: list[Binding] = []
        while len(contacts) > self.max_contacts:  # bounded: shrinks by one per turn
            victim = min(contacts[:-1], key=lambda b: b.expires_at)
            self._drop(key, contacts, victim.contact)
            evicted.append(victim)
        return evicted

    def remove(self, username: str, domain: str, contact: str) -> Binding | None:
        """Forget one binding; returns it, or None if there was none."""
        key = (username, domain.lower())
        contacts = self._aors.get(key)
        if contacts is None:
            return None
        return self._drop(key, contacts, contact)

    def remove_aor(self, username: str, domain: str) -> list[Binding]:
        """Forget every binding of username@domain (user deleted or disabled)."""
        contacts = self._aors.pop((username, domain.lower()), None)
        if not contacts:
            return []
        for b in contacts:
            self._unsource(b)
        self._count -= len(contacts)
        return contacts

    def expire(self, now: float, limit: int = 100_000) -> list[Binding]:
        """Remove and return the bindings whose ``expires_at`` is ``now`` or
        earlier (at most ``limit`` per call, so one call stays short)."""
        out: list[Binding] = []
        heap = self._heap
        for _ in range(len(heap)):  # bounded by the heap's size
            if not heap or heap[0][0] > now or len(out) >= limit:
                break
            at, username, domain, contact = heapq.heappop(heap)
            key = (username, domain)
            b = self._live(key, contact, at)
            if b is None:
                continue  # stale entry: refreshed or removed since
            self._drop(key, self._aors[key], contact)
            out.append(b)
        return out

    def load(self, bindings: Iterable[Binding], now: float) -> int:
        """Replace everything with ``bindings`` (the DB thread's ``Loaded``),
        skipping expired ones; returns how many were kept."""
        self._aors = {}
        self._heap = []
        self._count = 0
        self._sources = Counter()
        for b in bindings:
            if b.expires_at > now:
                if b.domain != b.domain.lower():
                    b = replace(b, domain=b.domain.lower())
                self.save(b)
        return self._count

    def get_timer(self) -> float | None:
        """When the next binding expires, or None."""
        heap = self._heap
        while heap:  # drop stale entries from the top; bounded by the heap's size
            at, username, domain, contact = heap[0]
            if self._live((username, domain), contact, at) is not None:
                return at
            heapq.heappop(heap)
        return None

    # ------------------------------------------------------------------ admin

    def snapshot(self, now: float) -> list[dict[str, Any]]:
        """Every live binding as flat rows for ``softswitchctl registrations``."""
        rows = []
        for (username, domain), contacts in sorted(self._aors.items()):
            for b in contacts:
                if b.expires_at <= now:
                    continue
                rows.append(
                    {
                        "aor": f"{username}@{domain}",
                        "contact": b.contact,
                        "expires": int(b.expires_at - now),
                        "source": _source_text(b),
                        "user_agent": b.user_agent,
                    }
                )
        return rows

    # ------------------------------------------------------------------ internals

    def _live(self, key: AorKey, contact: str, at: float) -> Binding | None:
        """The binding a heap entry stands for, if the entry is not stale."""
        for b in self._aors.get(key, ()):
            if b.contact == contact:
                return b if b.expires_at == at else None
        return None

    def _push(self, b: Binding) -> None:
        heapq.heappush(self._heap, (b.expires_at, b.username, b.domain, b.contact))
        if len(self._heap) > 2 * self._count + 1024:
            # Stale entries are most of the heap: rebuild it from the live ones.
            self._heap = [(b.expires_at, b.username, b.domain, b.contact) for b in self]
            heapq.heapify(self._heap)

    def _drop(self, key: AorKey, contacts: list[Binding], contact: str) -> Binding | None:
        for i, b in enumerate(contacts):
            if b.contact == contact:
                del contacts[i]
                if not contacts:
                    del self._aors[key]
                self._unsource(b)
                self._count -= 1
                return b
        return None

    def _unsource(self, b: Binding) -> None:
        if b.source_transport not in _CONNECTED:
            return
        src = (b.source_transport, b.source_host, b.source_port)
        n = self._sources[src] - 1
        if n > 0:
            self._sources[src] = n
        else:
            del self._sources[src]


def _source_text(b: Binding) -> str:
    host = f"[{b.source_host}]" if ":" in b.source_host else b.source_host
    return f"{b.source_transport}:{host}:{b.source_port}"
