"""Parsing SIP messages: ``parse(bytes)`` -> ``Request`` | ``Response``.

The hot path of the control daemon (tens of thousands of messages per CPU
second), kept apart from the message classes (model.py) it fills in.

Theory of operation.  ``parse`` splits the header section into ``[name,
value]`` pairs in wire order, with folded lines joined (RFC 3261 §7.3.1) and
known names, compact or not, turned into one canonical spelling (§7.3.3).  It
then validates, eagerly, what every request needs before anything can be done
with it (§8.2, §16.3): the start line, Via, From, To, Call-ID, CSeq,
Max-Forwards, Contact and the framing given by Content-Length (§18.3).  Those
parsed values are cached on the message; every other header stays a string
until a property asks for it, and unknown headers stay opaque forever.

Failures are ``SipError``: 400 for malformed input, 505 for another SIP
version, 416 for a Request-URI scheme other than sip/sips/tel, 501 for an
unknown method whose CSeq disagrees (RFC 4475 §3.1.2.18), 513 for a message
above ``MAX_MESSAGE_SIZE``.  Any error in a *response* has ``drop=True``:
responses are never answered (RFC 4475 §3.1.2.5, §3.1.2.19).  When a
request's headers could be read, the error carries it in ``request`` so the
caller can send the response with ``make_response``.
"""

from __future__ import annotations

import re
from typing import Any

from softswitch.sip.errors import SipError
from softswitch.sip.framing import (
    MAX_MESSAGE_SIZE,
    cut_body,
    index_headers,
    read_head,
    read_headers,
)
from softswitch.sip.grammar import TOKEN, words
from softswitch.sip.headers import (
    parse_address,
    parse_call_id,
    parse_contacts,
    parse_cseq,
    parse_max_forwards,
    parse_vias,
)
from softswitch.sip.message.model import Message, Request, Response
from softswitch.sip.uri import SCHEME_RE, AbsoluteUri, SipUri, parse_uri

__all__ = ["KNOWN_METHODS", "parse", "salvage_request"]

# Methods this stack knows (RFC 3261 and the extensions in common use).  An
# unknown method with a CSeq mismatch gets 501 rather than 400 (RFC 4475
# §3.1.2.18: "501 preferred").
KNOWN_METHODS = frozenset(
    words(
        "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO "
        "REFER MESSAGE UPDATE "
    )
)

# SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT
_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")
# Status-Code = 3DIGIT (§25.1 extension-code); Reason-Phrase is any text.
_STATUS_RE = re.compile(r"[1-6][0-9][0-9]")


def parse(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one SIP message; raise ``SipError`` for anything malformed.

    ``stream=False`` (a UDP datagram, §18.3): Content-Length may be absent
    (the body is the rest of the datagram), octets after the body are
    ignored (RFC 4475 §3.1.1.8), a Content-Length beyond the data is 400.
    ``stream=True`` (one message cut by ``StreamFramer``): Content-Length is
    required and must match the data exactly.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipError(513, "Message Too Large")
    if data.startswith(b"SIP/"):
        try:
            return _parse(data, stream, False)
        except SipError as e:
            e.drop = True
            raise
    return _parse(data, stream, True)


def _parse(data: bytes, stream: bool, is_request: bool) -> Request | Response:
    lines, body_start = read_head(data, stream)
    msg: Request | Response
    first = lines[0]
    uri_text = ""
    if is_request:
        # Request-Line = Method SP Request-URI SP SIP-Version CRLF
        parts = first.split(" ")
        if len(parts) != 3 or not parts[1] or not TOKEN.fullmatch(parts[0]):
            raise SipError(400, "Bad Request-Line")
        method, uri_text, version = parts
        if version != "SIP/2.0" and version.upper() != "SIP/2.0":
            if _VERSION_RE.fullmatch(version) is None:
                raise SipError(400, "Bad Request-Line")
            # §21.5.6: answer 505, so hand over the headers a response needs.
            error = SipError(505, "Version Not Supported")
            error.request = _bare_request(method, uri_text, read_headers(lines))
            raise error
        msg = _bare_request(method, uri_text, [])
    else:
        # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
        # Status-Code = 3DIGIT (extension-code); 100..699 (§21)
        # (Liberal: the SP before an empty Reason-Phrase may be missing.)
        version, _, rest = first.partition(" ")
        code, _, reason = rest.partition(" ")
        if version.upper() != "SIP/2.0" or not _STATUS_RE.fullmatch(code):
            raise SipError(400, "Bad Status-Line")
        msg = Response.__new__(Response)
        msg.status = int(code)
        msg.reason = reason
        msg.version = "SIP/2.0"
        msg.body = b""
        msg._live = set()
    headers = read_headers(lines)
    msg.headers = headers
    cache: dict[str, Any] = {}
    msg._cache = cache
    try:
        _validate(msg, data, body_start, stream, headers, cache)
        if is_request:
            _validate_request(msg, uri_text, cache)  # type: ignore[arg-type]
    except SipError as e:
        if is_request:
            e.request = msg
        raise
    return msg


def salvage_request(data: bytes) -> Request | None:
    """A request with the headers a response needs, from a message whose
    start line was refused (505, a bad Request-Line), or None.

    What lets a stateless error answer (RFC 3261 §8.2) reach a sender whose
    request could not be parsed whole; the method is kept only if it is a
    token, the Request-URI is left empty.
    """
    try:
        lines, _ = read_head(data)
        headers = read_headers(lines)
    except SipError:
        return None
    if not {"Via", "From", "To", "Call-ID", "CSeq"} <= {n for n, _ in headers}:
        return None
    method = lines[0].split(" ", 1)[0]
    return _bare_request(method if TOKEN.fullmatch(method) else "UNKNOWN", "", headers)


def _bare_request(method: str, uri_text: str, headers: list[list[str]]) -> Request:
    """A Request as parse() builds it, before validation (R-URI still opaque)."""
    msg = Request.__new__(Request)
    msg.method = method
    msg.uri = AbsoluteUri("", uri_text)  # replaced once validated
    msg.version = "SIP/2.0"
    msg.headers = headers
    msg.body = b""
    msg._cache = {}
    msg._live = set()
    return msg


def _validate(
    msg: Message,
    data: bytes,
    body_start: int,
    stream: bool,
    headers: list[list[str]],
    cache: dict[str, Any],
) -> None:
    """Eager checks common to requests and responses (§8.1.1, §8.2.6, §18.3)."""
    first, vias, contacts = index_headers(headers)
    msg.body = cut_body(data, body_start, first.get("Content-Length"), stream)
    if not vias:
        raise SipError(400, "Missing Via header")
    cache["vias"] = parse_vias(vias)
    raw = first.get("From")
    if raw is None:
        raise SipError(400, "Missing From header")
    cache["from_"] = parse_address(raw, "From")
    raw = first.get("To")
    if raw is None:
        raise SipError(400, "Missing To header")
    cache["to"] = parse_address(raw, "To")
    raw = first.get("Call-ID")
    if raw is None:
        raise SipError(400, "Missing Call-ID header")
    cache["call_id"] = parse_call_id(raw)
    raw = first.get("CSeq")
    if raw is None:
        raise SipError(400, "Missing CSeq header")
    cache["cseq"] = parse_cseq(raw)
    raw = first.get("Max-Forwards")
    cache["max_forwards"] = None if raw is None else parse_max_forwards(raw)
    if contacts:
        cache["contacts"] = parse_contacts(contacts)


def _validate_request(msg: Request, uri_text: str, cache: dict[str, Any]) -> None:
    """Request-URI (§8.2.1, §8.2.2.1, RFC 4475 §3.1.2.7/.11) and CSeq method (§8.2.3)."""
    try:
        uri = parse_uri(uri_text, "Request-URI")
    except SipError:
        scheme, sep, _ = uri_text.partition(":")
        low = scheme.lower()
        if sep and SCHEME_RE.fullmatch(scheme) and low not in ("sip", "sips", "tel"):
            msg.uri = AbsoluteUri(low, uri_text)
            raise SipError(416, "Unsupported URI Scheme") from None
        raise
    if type(uri) is SipUri:
        if uri.headers:  # escaped headers never belong in a Request-URI
            raise SipError(400, "Bad Request-URI")
    elif type(uri) is AbsoluteUri:
        msg.uri = uri
        raise SipError(416, "Unsupported URI Scheme")
    msg.uri = uri
    if cache["cseq"][1] != msg.method:
        if msg.method in KNOWN_METHODS:
            raise SipError(400, "Bad CSeq header")
        raise SipError(501, "Not Implemented")
