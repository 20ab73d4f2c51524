"""The registrar: what a REGISTER means (RFC 3261 §10.3), sans-I/O.

Theory of operation
-------------------
``Registrar.handle(request, peer, now)`` runs §10.3's steps on one REGISTER
that the transaction layer has already de-duplicated, and returns a
``RegisterResult``: the response to send, and the bindings saved and deleted
(which the core turns into DB-thread commands so a restart loses none).
Storage is the ``Location`` table (Kamailio's registrar/usrloc split): this
module decides, ``Location`` keeps.

The order of checks is deliberate:

1. To and From must be SIP/SIPS URIs with a user part (§10.3 step 3;
   RFC 4475 §3.3.4: a registrar answers a non-SIP To with 400).
2. Digest authentication (§10.3 step 2, §22; RFC 7616/8760 via
   ``DigestServer``).  Credentials in any other scheme are ignored and
   challenged (RFC 4475 §3.3.7).  An unknown user and a wrong password are
   answered alike (401 with a fresh challenge) so usernames cannot be probed.
3. Only then: the user must be enabled and must own the AOR (§10.3 step 3,
   "authorized to modify registrations for this address-of-record").
4. Contacts (§10.3 steps 6-7): ``*`` only alone and with Expires: 0; each
   contact's expiry from its own parameter, else the Expires header, else the
   default; a non-zero expiry under ``min_expires`` fails the whole request
   with 423 and Min-Expires (§10.3 step 6, §20.23); above ``max_expires`` it
   is cut down.  A contact already bound under the same Call-ID with a CSeq
   not higher than the stored one aborts the request (§10.3 step 7: an old
   REGISTER arriving late must not undo a newer one).  All updates are
   committed only if all succeed (§10.3 step 7).
5. The 200 lists every current contact of the AOR with its remaining
   lifetime (§10.3 step 8).

Every reason a REGISTER can be refused, digest failures included, is one
enum value in ``ANSWERS``, mapped there and only there to its status.

NAT (RFC 3581): each binding records the address and transport the REGISTER
came from (``peer``), which is where requests to that phone are sent,
whatever private address its Contact names.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from types import SimpleNamespace

from softswitch.location import Location
from softswitch.model.users import Binding, User, UserDirectory, check_binding
from softswitch.sip.digest import AuthFailure, DigestServer
from softswitch.sip.errors import SipError
from softswitch.sip.grammar import parse_uint, unescape
from softswitch.sip.message import Address, Request, Response, make_response
from softswitch.sip.transaction import Peer
from softswitch.sip.uri import SipUri, parse_uri, uri_equal

__all__ = ["ANSWERS", "Challenge", "Refusal", "RegisterResult", "Registrar"]

MAX_USER_AGENT = 255


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def sip_date(epoch: int) -> str:
    """``Date`` header text (RFC 3261 §20.17: RFC 1123 form, always GMT).

    Written here rather than taken from ``email.utils.formatdate`` because
    that module imports ``socket``, and the sans-I/O core must not (see
    tests/unit/test_layering.py). English names regardless of the locale.
    """
    t = time.gmtime(epoch)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class Refusal(Enum):
    """Why the registrar refused a REGISTER (digest failures are ``AuthFailure``)."""

    NO_CREDENTIALS = "no-credentials"
    NOT_SIP_AOR = "not-sip-aor"
    NO_AOR_USER = "no-aor-user"
    BAD_CONTACT = "bad-contact"
    STAR_MISUSE = "star-misuse"
    INTERVAL_TOO_BRIEF = "interval-too-brief"
    USER_MISMATCH = "user-mismatch"
    DISABLED = "disabled"
    OUT_OF_ORDER = "out-of-order"
    TOO_MANY_CONTACTS = "too-many-contacts"
    CONTACT_TOO_LONG = "contact-too-long"


class Challenge(Enum):
    """Which WWW-Authenticate a refusal carries."""

    NONE = 0
    FRESH = 1
    STALE = 2  # RFC 7616 §3.3: right password, old nonce: retry without prompting


#: The one table: refusal -> (status, reason phrase or None for the standard
#: one, challenge).  Digest failures follow the advice in sip/digest/server.py.
ANSWERS: dict[Refusal | AuthFailure, tuple[int, str | None, Challenge]] = {
    Refusal.NO_CREDENTIALS: (401, None, Challenge.FRESH),
    AuthFailure.MALFORMED: (400, "Malformed Authorization header", Challenge.NONE),
    AuthFailure.WRONG_REALM: (401, None, Challenge.FRESH),
    AuthFailure.UNKNOWN_USER: (401, None, Challenge.FRESH),
    AuthFailure.BAD_NONCE: (401, None, Challenge.FRESH),
    AuthFailure.STALE_NONCE: (401, None, Challenge.STALE),
    AuthFailure.BAD_RESPONSE: (401, None, Challenge.FRESH),
    AuthFailure.REPLAY: (401, None, Challenge.FRESH),
    AuthFailure.UNSUPPORTED_ALGORITHM: (401, None, Challenge.FRESH),
    AuthFailure.URI_MISMATCH: (400, "Digest uri does not match the Request-URI", Challenge.NONE),
    AuthFailure.USERHASH_UNSUPPORTED: (401, None, Challenge.FRESH),
    Refusal.NOT_SIP_AOR: (400, "To and From must be SIP URIs", Challenge.NONE),
    Refusal.NO_AOR_USER: (400, "Missing user in To URI", Challenge.NONE),
    Refusal.BAD_CONTACT: (400, "Contact must be a SIP URI", Challenge.NONE),
    Refusal.STAR_MISUSE: (400, "Contact * needs Expires: 0 and no other Contact", Challenge.NONE),
    Refusal.INTERVAL_TOO_BRIEF: (423, None, Challenge.NONE),
    Refusal.USER_MISMATCH: (403, "Authenticated user does not own this AOR", Challenge.NONE),
    Refusal.DISABLED: (403, "User disabled", Challenge.NONE),
    Refusal.OUT_OF_ORDER: (400, "Invalid CSeq number", Challenge.NONE),
    Refusal.TOO_MANY_CONTACTS: (403, "Too many contacts", Challenge.NONE),
    Refusal.CONTACT_TOO_LONG: (400, "Contact too long", Challenge.NONE),
}


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What one REGISTER did: the response, and the bindings to persist."""

    response: Response
    saved: tuple[Binding, ...] = ()
    deleted: tuple[Binding, ...] = ()
    refusal: Refusal | AuthFailure | None = None
    aor: str | None = None


class _Refused(Exception):
    def __init__(self, refusal: Refusal | AuthFailure) -> None:
        self.refusal = refusal


class Registrar:
    """REGISTER handling for one domain; ``config`` is the [sip] section
    (min_expires, max_expires, default_expires, user_agent), read on every
    request so a reload applies at once."""

    def __init__(
        self,
        *,
        location: Location,
        directory: UserDirectory,
        auth: DigestServer,
        config: SimpleNamespace,
        domain: str,
        local_hosts: Iterable[str] = (),
    ) -> None:
        self.location = location
        self.directory = directory
        self.auth = auth
        self.config = config
        self.domain = domain.lower()
        # Hosts a To URI may name for our own domain: the domain itself and
        # every address we listen on (phones often register to the IP).
        self.local_hosts = {h.lower().strip("[]") for h in (self.domain, *local_hosts)}
        self.refusals: Counter[str] = Counter()
        self.accepted = 0
        self._date_cache: tuple[int, str] = (-1, "")

    # ------------------------------------------------------------------ entry

    def handle(self, request: Request, peer: Peer, now: float) -> RegisterResult:
        """Answer one REGISTER (a new server transaction, never a retransmission:
        digest nonce counts must see each request once)."""
        try:
            return self._handle(request, peer, now)
        except _Refused as r:
            self.refusals[r.refusal.value] += 1
            return RegisterResult(self._refuse(request, r.refusal, now), refusal=r.refusal)

    def _handle(self, request: Request, peer: Peer, now: float) -> RegisterResult:
        to_uri = request.to.uri
        if not isinstance(to_uri, SipUri) or not isinstance(request.from_.uri, SipUri):
            raise _Refused(Refusal.NOT_SIP_AOR)
        if not to_uri.user:
            raise _Refused(Refusal.NO_AOR_USER)
        # §19.1.4: user parts compare after %HH decoding; stored usernames
        # never contain '%', so "%61lice" is alice and "a%00b" is nobody.
        username = unescape(to_uri.user) if "%" in to_uri.user else to_uri.user
        host = to_uri.host.strip("[]")
        domain = self.domain if host in self.local_hosts else host
        user = self._authenticate(request, peer, f"{username}@{domain}", domain, now)
        if user.username != username:
            raise _Refused(Refusal.USER_MISMATCH)
        if not user.enabled:
            raise _Refused(Refusal.DISABLED)
        saved, deleted = self._update(request, peer, user, now)
        self.accepted += 1
        aor = f"{user.username}@{user.domain}"
        return RegisterResult(self._ok(request, user, now), saved, deleted, None, aor)

    # ------------------------------------------------------------------ steps

    def _authenticate(
        self, request: Request, peer: Peer, aor: str, domain: str, now: float
    ) -> User:
        """§22.4 with DigestServer: the authenticated, existing user, or _Refused.
        Attempts that cannot work are logged (``DigestServer.trouble``)."""
        trouble = self.auth.trouble
        credentials = _digest_credentials(request.get_all("Authorization"), self.auth.realm)
        if credentials is None:
            trouble.challenged(peer.host, aor, now)
            raise _Refused(Refusal.NO_CREDENTIALS)
        trouble.answered(peer.host, aor)
        found: list[User] = []
        directory = self.directory

        def lookup(name: str) -> dict[str, str] | None:
            user = directory.lookup(name, domain)
            if user is None:
                return None
            found.append(user)
            return {"MD5": user.ha1_md5, "SHA-256": user.ha1_sha256}

        result = self.auth.verify(credentials, "REGISTER", now, lookup)
        if not result.ok:
            trouble.refused(peer.host, credentials, result, now)
            raise _Refused(result.reason or AuthFailure.MALFORMED)
        return found[-1]

    def _update(
        self, request: Request, peer: Peer, user: User, now: float
    ) -> tuple[tuple[Binding, ...], tuple[Binding, ...]]:
        """§10.3 steps 6-7: plan every change, then commit them all or none."""
        location = self.location
        cfg = self.config
        current = location.lookup(user.username, user.domain, now)
        call_id = request.call_id
        cseq = request.cseq
        header_expires = request.expires

        if request.contact_star:
            if header_expires != 0:
                raise _Refused(Refusal.STAR_MISUSE)
            for b in current:
                if b.call_id == call_id and cseq <= b.cseq:
                    raise _Refused(Refusal.OUT_OF_ORDER)
            deleted = tuple(b for b in current if location.remove(b.username, b.domain, b.contact))
            return (), deleted

        contacts = request.contacts
        if not contacts:
            return (), ()  # a query (§10.2.3): the 200 lists the bindings
        if len(contacts) > location.max_contacts:
            raise _Refused(Refusal.TOO_MANY_CONTACTS)

        user_agent = request.get("User-Agent")
        if user_agent is not None:
            user_agent = user_agent[:MAX_USER_AGENT]
        saves: dict[str, Binding] = {}
        removes: dict[str, Binding] = {}
        for contact in contacts:
            uri = contact.uri
            if not isinstance(uri, SipUri):
                raise _Refused(Refusal.BAD_CONTACT)
            expires = contact.expires
            if expires is None:
                expires = header_expires if header_expires is not None else cfg.default_expires
            if 0 < expires < cfg.min_expires:
                raise _Refused(Refusal.INTERVAL_TOO_BRIEF)
            expires = min(expires, cfg.max_expires)
            text = str(uri)
            existing = _find(current, text, uri)
            if existing is not None:
                if existing.call_id == call_id and cseq <= existing.cseq:
                    raise _Refused(Refusal.OUT_OF_ORDER)
                if expires == 0 or existing.contact != text:
                    removes[existing.contact] = existing
            if expires == 0:
                saves.pop(text, None)
                continue
            instance, reg_id = _outbound_params(contact)
            binding = Binding(
                user.username,
                user.domain,
                text,
                now + expires,
                peer.transport,
                peer.host,
                peer.port,
                call_id,
                cseq,
                user_agent=user_agent,
                instance=instance,
                reg_id=reg_id,
            )
            try:
                check_binding(binding)
            except ValueError:
                raise _Refused(Refusal.CONTACT_TOO_LONG) from None
            if instance is not None:
                # RFC 5626 §6: the same device (instance, reg-id) registering
                # a new contact replaces its old one (a NAT port change, a reboot).
                for b in current:
                    if b.instance == instance and b.reg_id == reg_id and b.contact != text:
                        removes[b.contact] = b
            saves[text] = binding

        # Commit (§10.3 step 7: all or nothing; nothing above changed state).
        removed: list[Binding] = []
        for contact_text, b in removes.items():
            if contact_text not in saves and location.remove(b.username, b.domain, contact_text):
                removed.append(b)
        for b in saves.values():
            removed.extend(location.save(b))
        return tuple(saves.values()), tuple(removed)

    # ------------------------------------------------------------------ responses

    def _ok(self, request: Request, user: User, now: float) -> Response:
        """§10.3 step 8: 200 with every current binding and its remaining time."""
        response = make_response(request, 200, to_tag=_tag())
        headers = response.headers
        for b in self.location.lookup(user.username, user.domain, now):
            headers.append(["Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}"])
        headers.append(["Date", self._date(now)])
        headers.append(["Server", self.config.user_agent])
        return response

    def _date(self, now: float) -> str:
        """The Date header (§20.17), formatted once per second: it is on every 200."""
        second = int(now)
        if self._date_cache[0] != second:
            self._date_cache = (second, sip_date(second))
        return self._date_cache[1]

    def _refuse(self, request: Request, refusal: Refusal | AuthFailure, now: float) -> Response:
        status, reason, challenge = ANSWERS[refusal]
        response = make_response(request, status, reason, to_tag=_tag())
        headers = response.headers
        if challenge is not Challenge.NONE:
            for value in self.auth.challenge(now, stale=challenge is Challenge.STALE):
                headers.append(["WWW-Authenticate", value])
        if refusal is Refusal.INTERVAL_TOO_BRIEF:
            headers.append(["Min-Expires", str(self.config.min_expires)])  # §20.23
        headers.append(["Server", self.config.user_agent])
        return response


#: Tags need uniqueness and 32+ random bits (RFC 3261 §19.3), not secrecy: a
#: PRNG seeded once from the OS spares a getrandom() syscall per response,
#: which releases the GIL and can stall the loop behind the DB thread.
_rng = random.Random()


def new_tag() -> str:
    """A fresh To tag (48 random bits, hex)."""
    return f"{_rng.getrandbits(48):012x}"


_tag = new_tag


def _digest_credentials(values: list[str], realm: str) -> str | None:
    """The Digest credentials to check: the one for our realm when a phone
    sends several (§22.4); other schemes are ignored (RFC 4475 §3.3.7)."""
    digest = [v for v in values if v.lstrip(" \t")[:7].lower() == "digest "]
    if not digest:
        return None
    if len(digest) > 1:
        for v in digest:
            if f'realm="{realm}"' in v:
                return v
    return digest[0]


def _find(current: list[Binding], text: str, uri: SipUri) -> Binding | None:
    """The binding for this contact: same text, else equal by §19.1.4."""
    for b in current:
        if b.contact == text:
            return b
    for b in current:
        try:
            if uri_equal(parse_uri(b.contact), uri):
                return b
        except SipError:
            continue
    return None


def _outbound_params(contact: Address) -> tuple[str | None, int | None]:
    """RFC 5626 ``+sip.instance`` and ``reg-id`` contact parameters."""
    instance = contact.params.get("+sip.instance")
    raw = contact.params.get("reg-id")
    reg_id = parse_uint(raw, 2**31 - 1) if raw is not None else None
    return instance, reg_id
