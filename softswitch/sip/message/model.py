"""SIP messages as objects: ``Request`` and ``Response``, their headers in
wire order with cached parsed values, editing, ``bytes()`` and ``make_response``.

Separate from the parser (parser.py) because this is what every handler
holds and edits, while the parser is one function that builds these objects
fast (it fills their slots directly rather than going through ``__init__``).

Editing.  Change headers with ``set``/``add``/``prepend``/``remove``: they
keep names canonical and drop the cached values of the header they touch.
The parsed ``Via`` and ``Address`` objects handed out by the properties are
live: set ``msg.via.received`` (RFC 3581) or ``msg.to.tag`` and the change is
written back into ``headers`` by ``flush()``, which ``bytes()``,
``make_response`` and every edit call first (``get``/``get_all`` do not, to
stay cheap: call ``flush()`` before reading a changed header as text).  If
you edit the ``headers`` list in place instead, call ``invalidate()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from softswitch.sip.errors import SipError, reason_phrase
from softswitch.sip.grammar import TOKEN, split_commas, words
from softswitch.sip.headers import (
    Address,
    Via,
    canonical_name,
    delta_seconds,
    parse_address,
    parse_call_id,
    parse_contacts,
    parse_cseq,
    parse_max_forwards,
    parse_via,
    parse_vias,
)
from softswitch.sip.uri import SipUri, Uri, parse_uri

__all__ = ["Message", "Request", "Response", "make_response"]

# Headers whose value is *not* a comma-separated list: ``get_all`` returns
# their lines whole (credentials use commas between parameters, Date has one).
_NO_SPLIT = frozenset(
    words(
        "Authorization Proxy-Authorization WWW-Authenticate Proxy-Authenticate "
        "Authentication-Info Date Subject User-Agent Server Call-ID CSeq From To "
        "Organization Timestamp Retry-After Max-Forwards Content-Length Content-Type "
        "Expires Min-Expires Priority Reply-To Refer-To Referred-By Replaces Event "
        "Session-Expires Min-SE Subscription-State RAck RSeq MIME-Version Identity "
        "Identity-Info Content-Disposition SIP-ETag SIP-If-Match "
    )
)

# Cached parsed values, by the header they come from.
_CACHE_KEYS: dict[str, tuple[str, ...]] = {
    "Via": ("vias",),
    "From": ("from_",),
    "To": ("to",),
    "Call-ID": ("call_id",),
    "CSeq": ("cseq",),
    "Max-Forwards": ("max_forwards",),
    "Contact": ("contacts", "contact_star"),
    "Route": ("routes",),
    "Record-Route": ("record_routes",),
    "Expires": ("expires",),
    "Content-Type": ("content_type",),
}
# The cached values that are mutable objects, and their header.
_LIVE_HEADER = {
    "vias": "Via",
    "from_": "From",
    "to": "To",
    "contacts": "Contact",
    "routes": "Route",
    "record_routes": "Record-Route",
}
_MISSING: Any = object()


class Message:
    """What requests and responses share: headers in wire order and a body."""

    __slots__ = ("_cache", "_live", "body", "headers")

    headers: list[list[str]]
    body: bytes

    def __init__(
        self, headers: Iterable[tuple[str, str] | list[str]] | None = None, body: bytes = b""
    ) -> None:
        self.headers = []
        self.body = body
        self._cache: dict[str, Any] = {}
        self._live: set[str] = set()
        for name, value in headers or ():
            self.add(name, value)

    # -- raw headers -------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (any case, compact form accepted)."""
        canon = canonical_name(name)
        if canon is not None:
            for n, v in self.headers:
                if n == canon:
                    return v
            return None
        low = name.lower()
        for n, v in self.headers:
            if n.lower() == low:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of header ``name``; list headers split at their commas.

        Commas inside quotes and ``<>`` do not split, and empty elements are
        dropped.  Headers that are not lists (credentials, Date, Subject,
        From, ...) are returned one line per element.
        """
        canon = canonical_name(name)
        if canon is not None:
            values = [v for n, v in self.headers if n == canon]
        else:
            low = name.lower()
            values = [v for n, v in self.headers if n.lower() == low]
        if canon in _NO_SPLIT:
            return values
        return [e for v in values for e in split_commas(v) if e]

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header with one, where the first one was."""
        name = self._edit(name, value)
        pos = None
        kept: list[list[str]] = []
        for _i, h in enumerate(self.headers):
            if _same(h[0], name):
                if pos is None:
                    pos = len(kept)
            else:
                kept.append(h)
        kept.insert(len(kept) if pos is None else pos, [name, value])
        self.headers = kept

    def add(self, name: str, value: str) -> None:
        """Append a ``name`` header after all the others."""
        name = self._edit(name, value)
        self.headers.append([name, value])

    def prepend(self, name: str, value: str) -> None:
        """Insert a ``name`` header before the first one, or at the top (new Via)."""
        name = self._edit(name, value)
        headers = self.headers
        for i, h in enumerate(headers):
            if _same(h[0], name):
                headers.insert(i, [name, value])
                return
        headers.insert(0, [name, value])

    def remove(self, name: str) -> None:
        """Remove every ``name`` header."""
        name = self._edit(name, "")
        self.headers = [h for h in self.headers if not _same(h[0], name)]

    def invalidate(self) -> None:
        """Forget every parsed value (call after editing ``headers`` in place)."""
        self._cache.clear()
        self._live.clear()

    def _edit(self, name: str, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("header values cannot contain CR or LF")
        if self._live:
            self.flush()
        canon = canonical_name(name)
        if canon is None:
            if not TOKEN.fullmatch(name):
                raise ValueError(f"bad header name {name!r}")
            canon = name
        for key in _CACHE_KEYS.get(canon, ()):
            self._cache.pop(key, None)
            self._cache.pop("#" + key, None)
            self._live.discard(key)
        return canon

    def _values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]

    def _single(self, name: str) -> str | None:
        value = None
        for n, v in self.headers:
            if n == name:
                if value is not None:
                    raise SipError(400, f"Multiple {name} headers")
                value = v
        return value

    def flush(self) -> None:
        """Write the changes made to live Via/Address objects back into ``headers``.

        ``bytes()``, ``make_response`` and the editing methods call it; call
        it yourself before reading ``get``/``get_all``/``headers`` as text
        after changing a parsed object (those stay cheap by not doing so).

        An object counts as changed when its text differs from what the
        header's current text parses to, so merely reading ``msg.to`` never
        reformats a header (a token display name stays unquoted, odd
        whitespace stays), while any edit is written in canonical form.  A
        snapshot of each object's fields, kept in the cache, makes the next
        flush of an unchanged object cost a tuple comparison, not a
        serialisation (a request touched once and then answered several
        times).
        """
        cache = self._cache
        for key in list(self._live):
            obj = cache.get(key)
            if obj is None:
                continue
            state = _state(obj)
            if cache.get("#" + key) == state:
                continue  # unchanged since the last flush
            cache["#" + key] = state
            name = _LIVE_HEADER[key]
            if isinstance(obj, Address):
                text = str(obj)
                for h in self.headers:
                    if h[0] == name:
                        if h[1] != text and not _same_text(h[1], text, name):
                            h[1] = text
                        break
                else:
                    self.headers.append([name, text])
                continue
            old = [e for v in self._values(name) for e in split_commas(v)]
            if key == "contacts" and not obj and old == ["*"]:
                continue
            new = [str(o) for o in obj]
            if new == old or (
                len(new) == len(old)
                and all(_same_text(a, b, name) for a, b in zip(old, new, strict=True))
            ):
                continue
            pos = next((i for i, h in enumerate(self.headers) if h[0] == name), None)
            rest = [h for h in self.headers if h[0] != name]
            if pos is None:
                pos = 0 if name == "Via" else len(rest)
            rest[pos:pos] = [[name, s] for s in new]
            self.headers = rest

    # -- parsed headers (cached) -------------------------------------------

    @property
    def vias(self) -> list[Via]:
        """Every Via, top first (§20.42); comma-joined values split."""
        v = self._cache.get("vias")
        if v is None:
            v = self._cache["vias"] = parse_vias(self._values("Via"))
        self._live.add("vias")
        return v

    @property
    def via(self) -> Via:
        """The top Via: where responses go, and the transaction's branch."""
        vias = self.vias
        if not vias:
            raise SipError(400, "Missing Via header")
        return vias[0]

    def _address(self, key: str, name: str) -> Address:
        a = self._cache.get(key)
        if a is None:
            raw = self._single(name)
            if raw is None:
                raise SipError(400, f"Missing {name} header")
            a = self._cache[key] = parse_address(raw, name)
        self._live.add(key)
        return a

    @property
    def from_(self) -> Address:
        """The From header (§20.20)."""
        return self._address("from_", "From")

    @property
    def to(self) -> Address:
        """The To header (§20.39)."""
        return self._address("to", "To")

    @property
    def call_id(self) -> str:
        """The Call-ID (§20.8), validated against ``callid``."""
        c = self._cache.get("call_id")
        if c is None:
            raw = self._single("Call-ID")
            if raw is None:
                raise SipError(400, "Missing Call-ID header")
            c = self._cache["call_id"] = parse_call_id(raw)
        return c

    def _cseq(self) -> tuple[int, str]:
        c = self._cache.get("cseq")
        if c is None:
            raw = self._single("CSeq")
            if raw is None:
                raise SipError(400, "Missing CSeq header")
            c = self._cache["cseq"] = parse_cseq(raw)
        return c

    @property
    def cseq(self) -> int:
        """The CSeq sequence number (§20.16), 0..2**32-1."""
        return self._cseq()[0]

    @property
    def cseq_method(self) -> str:
        """The CSeq method (§20.16)."""
        return self._cseq()[1]

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (§20.22), 0..255, or None if absent (treat as 70)."""
        m = self._cache.get("max_forwards", _MISSING)
        if m is _MISSING:
            raw = self._single("Max-Forwards")
            m = self._cache["max_forwards"] = None if raw is None else parse_max_forwards(raw)
        return m

    @property
    def contact_star(self) -> bool:
        """True for ``Contact: *`` (REGISTER removing all bindings, §10.2.2)."""
        s = self._cache.get("contact_star")
        if s is None:
            s = self._cache["contact_star"] = [
                e for v in self._values("Contact") for e in split_commas(v)
            ] == ["*"]
        return s

    @property
    def contacts(self) -> list[Address]:
        """Every Contact (§20.10); empty for ``Contact: *``."""
        c = self._cache.get("contacts")
        if c is None:
            c = self._cache["contacts"] = parse_contacts(self._values("Contact"))
        self._live.add("contacts")
        return c

    def _address_list(self, key: str, name: str) -> list[Address]:
        a = self._cache.get(key)
        if a is None:
            a = self._cache[key] = [
                parse_address(e, name) for v in self._values(name) for e in split_commas(v)
            ]
        self._live.add(key)
        return a

    @property
    def routes(self) -> list[Address]:
        """Every Route, in order (§20.34)."""
        return self._address_list("routes", "Route")

    @property
    def record_routes(self) -> list[Address]:
        """Every Record-Route, in order (§20.30)."""
        return self._address_list("record_routes", "Record-Route")

    @property
    def expires(self) -> int | None:
        """The Expires header (§20.19) in seconds, clamped to 2**32-1, or None."""
        e = self._cache.get("expires", _MISSING)
        if e is _MISSING:
            raw = self._single("Expires")
            e = self._cache["expires"] = None if raw is None else delta_seconds(raw, "Expires")
        return e

    @property
    def content_type(self) -> str | None:
        """The media type of the body, lower-cased, without parameters ('application/sdp')."""
        t = self._cache.get("content_type", _MISSING)
        if t is _MISSING:
            raw = self._single("Content-Type")
            t = None if raw is None else raw.partition(";")[0].strip(" \t").lower()
            self._cache["content_type"] = t
        return t

    # -- serialisation -------------------------------------------------------

    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        """The wire form: headers in order, Content-Length set to the body's length."""
        if self._live:
            self.flush()
        body = self.body
        lines = [self._start_line()]
        length_done = False
        for n, v in self.headers:
            if n == "Content-Length":
                if length_done:
                    continue
                length_done = True
                v = str(len(body))
            lines.append(f"{n}: {v}")
        if not length_done:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


def _state(obj: Any) -> Any:
    """A comparable snapshot of a live object's fields (or a list of them)."""
    if isinstance(obj, list):
        return [_state(o) for o in obj]
    if isinstance(obj, Via):
        return (obj.transport, obj.host, obj.port, *obj.params.items())
    uri = obj.uri
    if isinstance(uri, SipUri):
        u: Any = (
            uri.scheme,
            uri.user,
            uri.password,
            uri.host,
            uri.port,
            *uri.params.items(),
            "?",
            *uri.headers.items(),
        )
    else:
        u = str(uri)
    return (obj.display, u, *obj.params.items())


def _same_text(raw: str, text: str, name: str) -> bool:
    """Whether header text ``raw`` parses to an object that serialises as ``text``."""
    if raw == text:
        return True
    try:
        obj = parse_via(raw) if name == "Via" else parse_address(raw, name)
    except SipError:
        return False
    return str(obj) == text


def _same(a: str, b: str) -> bool:
    return a == b or a.lower() == b.lower()


class Request(Message):
    """A SIP request (§7.1): method, Request-URI and version, then headers and body."""

    __slots__ = ("method", "uri", "version")

    def __init__(
        self,
        method: str,
        uri: Uri | str,
        headers: Iterable[tuple[str, str] | list[str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri: Uri = parse_uri(uri, "Request-URI") if isinstance(uri, str) else uri
        self.version = "SIP/2.0"

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response (§7.2): status code and reason phrase, then headers and body."""

    __slots__ = ("reason", "status", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str] | list[str]] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason
        self.version = "SIP/2.0"

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


def make_response(
    request: Request, status: int, reason: str | None = None, *, to_tag: str | None = None
) -> Response:
    """Build a response to ``request`` per RFC 3261 §8.2.6.2.

    Copies every Via (in order, on top), From, To, Call-ID and CSeq; adds ``to_tag``
    to the To header if it has no tag yet (§8.2.6.2: a tag already there is
    kept, so in-dialog responses keep the dialog's tag).  A 100 Trying also
    copies Timestamp (§8.2.6.1).  Other headers are the caller's to add.
    """
    if request._live:
        request.flush()
    vias: list[list[str]] = []
    headers: list[list[str]] = []
    for n, v in request.headers:
        if n == "Via":
            vias.append([n, v])
        elif n == "From" or n == "Call-ID" or n == "CSeq":
            headers.append([n, v])
        elif n == "To":
            if to_tag is not None and request.to.tag is None:
                v = f"{v};tag={to_tag}"
            headers.append([n, v])
        elif n == "Timestamp" and status == 100:
            headers.append([n, v])
    headers[:0] = vias
    response = Response.__new__(Response)
    response.headers = headers
    response.body = b""
    response._cache = {}
    response._live = set()
    response.status = status
    response.reason = reason_phrase(status) if reason is None else reason
    response.version = "SIP/2.0"
    return response
