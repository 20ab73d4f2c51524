"""Messages: parsing details, the header API, live objects, serialising, make_response."""

from __future__ import annotations

import pytest

from softswitch.sip.errors import REASON_PHRASES, SipError, reason_phrase
from softswitch.sip.headers import Via
from softswitch.sip.message import (
    MAX_HEADERS,
    MAX_LINE_LENGTH,
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    make_response,
    parse,
)
from softswitch.sip.uri import SipUri

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0\r\n"
)


def invite(*extra: str, body: bytes = SDP, length: int | None = None) -> bytes:
    lines = [
        "INVITE sip:bob@biloxi.example.com SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        "Max-Forwards: 70",
        "To: Bob <sip:bob@biloxi.example.com>",
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        "CSeq: 314159 INVITE",
        "Contact: <sip:alice@pc33.atlanta.example.com>",
        "Content-Type: application/sdp",
        *extra,
        f"Content-Length: {len(body) if length is None else length}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_of(data: bytes, **kw: bool) -> SipError:
    with pytest.raises(SipError) as exc:
        parse(data, **kw)
    return exc.value


# -- parsing --------------------------------------------------------------


def test_ordinary_invite() -> None:
    m = parse(invite())
    assert isinstance(m, Request)
    assert (m.method, str(m.uri), m.version) == ("INVITE", "sip:bob@biloxi.example.com", "SIP/2.0")
    assert m.via.branch == "z9hG4bK776asdhds" and len(m.vias) == 1
    assert m.max_forwards == 70
    assert (m.to.display, m.to.tag) == ("Bob", None)
    assert (m.from_.display, m.from_.tag) == ("Alice", "1928301774")
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert (m.cseq, m.cseq_method) == (314159, "INVITE")
    assert [str(c.uri) for c in m.contacts] == ["sip:alice@pc33.atlanta.example.com"]
    assert m.contact_star is False
    assert m.content_type == "application/sdp"
    assert m.body == SDP
    assert m.expires is None and m.routes == [] and m.record_routes == []


def test_ordinary_response() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nTo: <sip:b@h>;tag=t\r\n"
        b"From: <sip:a@h>;tag=f\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    r = parse(data)
    assert isinstance(r, Response)
    assert (r.status, r.reason, r.to.tag, r.cseq_method) == (180, "Ringing", "t", "INVITE")
    assert bytes(r) == data


def test_compact_forms_expand_to_canonical_names() -> None:
    data = (
        b"OPTIONS sip:x@h SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nt: <sip:x@h>\r\n"
        b"f: <sip:a@h>;tag=1\r\ni: cid\r\nCSeq: 1 OPTIONS\r\nm: <sip:a@h>\r\nk: timer\r\n"
        b"s: hello\r\nc: text/plain\r\ne: gzip\r\nl: 2\r\n\r\nhi"
    )
    m = parse(data)
    assert [n for n, _ in m.headers] == [
        "Via",
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Contact",
        "Supported",
        "Subject",
        "Content-Type",
        "Content-Encoding",
        "Content-Length",
    ]
    assert m.get("i") == m.get("call-id") == m.get("CALL-ID") == "cid"
    assert bytes(m).startswith(b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n")


def test_header_names_are_case_insensitive_and_hcolon_allows_whitespace() -> None:
    m = parse(invite("x-CUSTOM  :  value  ", "sUbJeCt\t:\tsub"))
    assert m.get("X-Custom") == "value" and m.get("x-custom") == "value"
    assert m.get("Subject") == "sub"
    assert ["x-CUSTOM", "value"] in m.headers  # unknown name kept as written


def test_folded_lines_are_joined_with_one_space() -> None:
    m = parse(invite("Subject: first\r\n  second\r\n\tthird", "X-A: a \r\n b"))
    assert m.get("Subject") == "first second third"
    assert m.get("X-A") == "a b"


def test_folded_structured_headers() -> None:
    data = invite().replace(b"CSeq: 314159 INVITE", b"CSeq: 314159\r\n INVITE")
    assert parse(data).cseq_method == "INVITE"


def test_get_all_splits_lists_but_not_credentials() -> None:
    m = parse(
        invite(
            "Allow: INVITE, ACK,BYE",
            "Allow: CANCEL",
            'Contact: "Doe, J" <sip:j@h>, <sip:k,l@h>',
            'Authorization: Digest username="a", realm="b", nonce="c"',
            "Date: Sat, 13 Nov 2010 23:29:00 GMT",
            "X-List: a, b",
        )
    )
    assert m.get_all("Allow") == ["INVITE", "ACK", "BYE", "CANCEL"]
    assert len(m.contacts) == 3
    assert m.contacts[1].display == "Doe, J"
    assert m.get_all("Authorization") == ['Digest username="a", realm="b", nonce="c"']
    assert m.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert m.get_all("x-list") == ["a", "b"]
    assert m.get_all("Nothing") == [] and m.get("Nothing") is None


def test_leading_crlf_before_the_start_line_is_ignored() -> None:
    assert parse(b"\r\n\r\n" + invite()).method == "INVITE"  # type: ignore[union-attr]


def test_keepalive_datagram_is_dropped() -> None:
    for data in (b"\r\n\r\n", b"\r\n", b""):
        e = error_of(data)
        assert e.drop


def test_bare_lf_message_is_tolerated() -> None:
    head, body = invite().split(b"\r\n\r\n")
    m = parse(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert m.body == SDP == body
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


@pytest.mark.parametrize("junk", [b"X-A: a\rb", b"X-A: a\nb", b"X-A: a\n\rb"])
def test_bare_cr_or_lf_inside_the_header_section_is_400(junk: bytes) -> None:
    data = invite().replace(b"Max-Forwards: 70", junk)
    assert error_of(data).status == 400


def test_datagram_framing() -> None:
    # Trailing octets after Content-Length are ignored (§18.3).
    m = parse(invite() + b"garbage")
    assert m.body == SDP
    # No Content-Length: the rest of the datagram.
    no_cl = invite().replace(b"Content-Length: %d\r\n" % len(SDP), b"")
    assert parse(no_cl).body == SDP
    # A Content-Length beyond the datagram.
    assert error_of(invite(length=len(SDP) + 1)).reason == "Bad Content-Length header"


def test_stream_framing_requires_an_exact_content_length() -> None:
    assert parse(invite(), stream=True).body == SDP
    assert error_of(invite() + b"x", stream=True).status == 400
    no_cl = invite().replace(b"Content-Length: %d\r\n" % len(SDP), b"")
    assert error_of(no_cl, stream=True).reason == "Missing Content-Length header"


def test_equal_duplicate_content_lengths_are_tolerated() -> None:
    assert parse(invite(f"Content-Length: {len(SDP)}")).body == SDP
    assert error_of(invite("Content-Length: 3")).reason == "Multiple Content-Length headers"


@pytest.mark.parametrize(
    ("start_line", "status", "reason"),
    [
        ("INVITE sip:bob@h SIP/2.1", 505, "Version Not Supported"),
        ("INVITE sip:bob@h SIP/20.0", 505, "Version Not Supported"),
        ("INVITE sip:bob@h HTTP/1.1", 400, "Bad Request-Line"),
        ("INVITE sip:bob@h", 400, "Bad Request-Line"),
        ("INVITE  sip:bob@h SIP/2.0", 400, "Bad Request-Line"),
        ("INVITE sip:bob@h SIP/2.0 ", 400, "Bad Request-Line"),
        ("INVITE\tsip:bob@h SIP/2.0", 400, "Bad Request-Line"),
        ("INV(ITE sip:bob@h SIP/2.0", 400, "Bad Request-Line"),
        ("INVITE <sip:bob@h> SIP/2.0", 400, "Bad Request-URI"),
        ("INVITE sip:bob@h?Route=x SIP/2.0", 400, "Bad Request-URI"),
        ("INVITE sip:2001:db8::1 SIP/2.0", 400, "Bad Request-URI"),
        ("INVITE http://h/ SIP/2.0", 416, "Unsupported URI Scheme"),
        ("INVITE mailto:bob@h SIP/2.0", 416, "Unsupported URI Scheme"),
        ("INVITE 9bad:x SIP/2.0", 400, "Bad Request-URI"),
    ],
)
def test_request_line_validation(start_line: str, status: int, reason: str) -> None:
    data = invite().replace(b"INVITE sip:bob@biloxi.example.com SIP/2.0", start_line.encode())
    e = error_of(data)
    assert (e.status, e.reason) == (status, reason)
    assert not e.drop


def test_request_uri_schemes_accepted() -> None:
    for uri in ("sips:bob@h", "tel:+15551234", "SIP:bob@h"):
        data = invite().replace(b"sip:bob@biloxi.example.com SIP", uri.encode() + b" SIP")
        assert parse(data).uri.scheme == uri.split(":")[0].lower()  # type: ignore[union-attr]
    data = invite().replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1)
    assert parse(data).version == "SIP/2.0"


@pytest.mark.parametrize(
    ("replace", "reason"),
    [
        (("CSeq: 314159 INVITE", "CSeq: 4294967296 INVITE"), "Bad CSeq header"),
        (("CSeq: 314159 INVITE", "CSeq: -1 INVITE"), "Bad CSeq header"),
        (("CSeq: 314159 INVITE", "CSeq: 1"), "Bad CSeq header"),
        (("CSeq: 314159 INVITE", "CSeq: 1 BYE"), "Bad CSeq header"),
        (("CSeq: 314159 INVITE", "CSeq: 1 invite"), "Bad CSeq header"),
        (("Max-Forwards: 70", "Max-Forwards: 256"), "Bad Max-Forwards header"),
        (("Max-Forwards: 70", "Max-Forwards: -1"), "Bad Max-Forwards header"),
        (("Max-Forwards: 70", "Max-Forwards: seventy"), "Bad Max-Forwards header"),
        (
            ("Call-ID: a84b4c76e66710@pc33.atlanta.example.com", "Call-ID: a b"),
            "Bad Call-ID header",
        ),
        (("Call-ID: a84b4c76e66710@pc33.atlanta.example.com", "Call-ID:"), "Bad Call-ID header"),
        (("Call-ID: a84b4c76e66710@pc33.atlanta.example.com", "X-No: 1"), "Missing Call-ID header"),
        (
            ("Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds", "X: y"),
            "Missing Via header",
        ),
        (("To: Bob <sip:bob@biloxi.example.com>", "X: y"), "Missing To header"),
        (("CSeq: 314159 INVITE", "X: y"), "Missing CSeq header"),
        (
            ("To: Bob <sip:bob@biloxi.example.com>", "To: <sip:a@b>\r\nTo: <sip:c@d>"),
            "Multiple To headers",
        ),
        (
            ("Max-Forwards: 70", "Max-Forwards: 70\r\nMax-Forwards: 70"),
            "Multiple Max-Forwards headers",
        ),
        (("Max-Forwards: 70", "Bad Header: x"), "Bad header name"),
        (("Max-Forwards: 70", "NoColonHere"), "Bad header line"),
        (("Max-Forwards: 70", ": empty name"), "Bad header name"),
        (
            ("Contact: <sip:alice@pc33.atlanta.example.com>", "Contact: *, <sip:a@b>"),
            "Bad Contact header",
        ),
    ],
)
def test_header_validation(replace: tuple[str, str], reason: str) -> None:
    data = invite().replace(replace[0].encode(), replace[1].encode())
    assert data != invite()
    e = error_of(data)
    assert (e.status, e.reason) == (400, reason)


def test_max_forwards_absent_and_leading_zeros() -> None:
    assert parse(invite().replace(b"Max-Forwards: 70\r\n", b"")).max_forwards is None
    assert parse(invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0068")).max_forwards == 68
    assert parse(invite().replace(b"CSeq: 314159", b"CSeq: 4294967295")).cseq == 2**32 - 1


def test_unknown_method_cseq_mismatch_is_501_known_method_400() -> None:
    data = invite().replace(b"INVITE sip:", b"FOO sip:")
    assert error_of(data).status == 501
    data = invite().replace(b"INVITE sip:", b"BYE sip:")
    assert error_of(data).status == 400


def test_status_line_validation_drops() -> None:
    base = (
        b"Via: SIP/2.0/UDP h\r\nTo: <sip:b@h>\r\nFrom: <sip:a@h>;tag=1\r\n"
        b"Call-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
    )
    assert parse(b"SIP/2.0 200\r\n" + base).reason == ""  # type: ignore[union-attr]
    for line in (
        b"SIP/2.0 700 X",
        b"SIP/2.0 099 X",
        b"SIP/2.0 20 X",
        b"SIP/2.0 2000 X",
        b"SIP/3.0 200 OK",
    ):
        e = error_of(line + b"\r\n" + base)
        assert e.drop and e.status == 400
    e = error_of(b"SIP/2.0 200 OK\r\n" + base.replace(b"CSeq: 1 INVITE\r\n", b""))
    assert e.drop and e.reason == "Missing CSeq header"


def test_limits() -> None:
    assert error_of(invite(body=b"x" * MAX_MESSAGE_SIZE)).status == 513
    many = [f"X-H{i}: {i}" for i in range(MAX_HEADERS)]
    assert error_of(invite(*many)).reason == "Too many headers"
    assert parse(invite(*many[: MAX_HEADERS - 12])).get("X-H0") == "0"
    long = "X-Long: " + "a" * MAX_LINE_LENGTH
    assert error_of(invite(long)).reason == "Header line too long"


def test_contact_star() -> None:
    data = (
        b"REGISTER sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nTo: <sip:a@h>\r\n"
        b"From: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\n"
        b"Contact: *\r\nExpires: 0\r\n\r\n"
    )
    m = parse(data)
    assert m.contact_star and m.contacts == [] and m.expires == 0
    assert b"Contact: *\r\n" in bytes(m)


def test_routes_and_record_routes_in_order() -> None:
    m = parse(
        invite(
            "Route: <sip:p1@h;lr>, <sip:p2@h;lr>",
            "Record-Route: <sip:rr@h;lr>",
            "Route: <sip:p3@h>",
        )
    )
    assert [r.uri.user for r in m.routes] == ["p1", "p2", "p3"]  # type: ignore[union-attr]
    assert m.record_routes[0].uri.params == {"lr": None}  # type: ignore[union-attr]


def test_non_ascii_octets_survive_a_round_trip() -> None:
    data = invite("Subject: caf\xe9 \u263a".encode().decode("latin-1"), body=b"\xff\x00\xfe")
    raw = invite().replace(b"Max-Forwards", b"X-Bin: \xff\xfe\x80\r\nMax-Forwards")
    assert bytes(parse(raw)) == raw
    m = parse(data)
    assert bytes(m) == data


# -- the header API -------------------------------------------------------


def test_set_add_prepend_remove() -> None:
    m = parse(invite("Allow: INVITE", "Allow: BYE"))
    m.set("allow", "OPTIONS")
    assert m.get_all("Allow") == ["OPTIONS"]
    assert [n for n, _ in m.headers].index("Allow") == 8  # where the first one was
    m.add("X-Last", "1")
    assert m.headers[-1] == ["X-Last", "1"]
    m.prepend("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp")
    assert m.headers[0][0] == "Via" and m.via.host == "proxy.example.com"
    assert [v.host for v in m.vias] == ["proxy.example.com", "pc33.atlanta.example.com"]
    m.prepend("X-New", "top")
    assert m.headers[0] == ["X-New", "top"]
    m.remove("v")
    assert m.vias == [] and m.get("Via") is None
    with pytest.raises(SipError):
        _ = m.via
    m.set("X-Absent", "appended")
    assert m.headers[-1] == ["X-Absent", "appended"]


def test_edits_invalidate_cached_values() -> None:
    m = parse(invite())
    assert m.to.tag is None and m.cseq == 314159 and m.max_forwards == 70
    m.set("To", "<sip:carol@h>;tag=new")
    m.set("CSeq", "2 INVITE")
    m.set("Max-Forwards", "69")
    m.set("Content-Type", "Text/Plain; charset=utf-8")
    m.set("Expires", "120")
    assert (m.to.tag, m.cseq, m.max_forwards, m.content_type, m.expires) == (
        "new",
        2,
        69,
        "text/plain",
        120,
    )
    m.set("Call-ID", "other")
    assert m.call_id == "other"
    m.add("Contact", "<sip:second@h>")
    assert len(m.contacts) == 2
    m.remove("Contact")
    assert m.contacts == []


def test_edits_refuse_header_injection() -> None:
    m = parse(invite())
    with pytest.raises(ValueError):
        m.set("Subject", "x\r\nVia: evil")
    with pytest.raises(ValueError):
        m.add("Bad Name", "x")


def test_in_place_edit_then_invalidate() -> None:
    m = parse(invite())
    assert m.call_id.startswith("a84b")
    assert m.headers[4][0] == "Call-ID"
    m.headers[4][1] = "edited"
    m.invalidate()
    assert m.call_id == "edited"


def test_live_via_edit_reaches_the_wire_and_responses() -> None:
    """RFC 3581 §4: the server stamps received/rport on the top Via it got."""
    m = parse(invite().replace(b"branch=z9hG4bK776asdhds", b"rport;branch=z9hG4bK776asdhds"))
    assert isinstance(m, Request)
    m.via.received = "203.0.113.9"
    m.via.rport = 5062
    assert "received" not in (m.get("Via") or "")  # text views wait for flush()
    m.flush()
    assert m.get("Via") == (
        "SIP/2.0/UDP pc33.atlanta.example.com;rport=5062;branch=z9hG4bK776asdhds"
        ";received=203.0.113.9"
    )
    r = make_response(m, 200, to_tag="t1")
    assert parse(bytes(r)).via.rport == 5062
    assert b";received=203.0.113.9" in bytes(m)


def test_live_address_and_via_list_edits() -> None:
    m = parse(invite())
    m.to.tag = "abc"
    m.from_.display = "Alice L."
    m.vias.insert(0, Via("TCP", "edge.example.com", None, {"branch": "z9hG4bKedge"}))
    m.contacts[0].params["expires"] = "60"
    again = parse(bytes(m))
    assert again.to.tag == "abc" and again.from_.display == "Alice L."
    assert [v.host for v in again.vias] == ["edge.example.com", "pc33.atlanta.example.com"]
    assert again.contacts[0].expires == 60
    # A later edit of another header keeps the live changes.
    m2 = parse(invite())
    m2.to.tag = "kept"
    m2.add("X-Other", "1")
    assert parse(bytes(m2)).to.tag == "kept"


def test_a_held_object_changed_after_a_flush_is_still_written() -> None:
    m = parse(invite())
    assert isinstance(m, Request)
    via, to = m.via, m.to
    first = bytes(m)
    assert first == invite()
    assert bytes(make_response(m, 100)) == bytes(make_response(m, 100))  # nothing changed
    via.received = "198.51.100.7"
    to.uri.params["user"] = "phone"  # type: ignore[union-attr]
    data = bytes(m)
    assert b";received=198.51.100.7" in data
    assert b'To: "Bob" <sip:bob@biloxi.example.com;user=phone>' in data
    assert make_response(m, 180).via.received == "198.51.100.7"


def test_untouched_message_serialises_byte_for_byte() -> None:
    data = invite()
    assert bytes(parse(data)) == data
    m = parse(data)
    _ = (m.via.branch, m.from_.tag, m.to, m.call_id, m.cseq, m.contacts)
    assert bytes(m) == data


def test_content_length_follows_the_body() -> None:
    m = parse(invite())
    m.body = b"changed"
    assert b"Content-Length: 7\r\n\r\nchanged" in bytes(m)
    m.remove("Content-Length")
    assert bytes(m).endswith(b"Content-Length: 7\r\n\r\nchanged")


# -- building messages ----------------------------------------------------


def test_request_built_by_code_round_trips() -> None:
    req = Request(
        "OPTIONS",
        "sip:carol@chicago.example.com",
        [
            ("v", "SIP/2.0/UDP h;branch=z9hG4bKx"),
            ("Max-Forwards", "70"),
            ("t", "<sip:carol@chicago.example.com>"),
            ("f", "<sip:alice@h>;tag=1"),
            ("i", "c1@h"),
            ("CSeq", "1 OPTIONS"),
        ],
    )
    assert isinstance(req.uri, SipUri)
    data = bytes(req)
    assert data.startswith(b"OPTIONS sip:carol@chicago.example.com SIP/2.0\r\nVia: ")
    assert data.endswith(b"Content-Length: 0\r\n\r\n")
    back = parse(data)
    assert back.headers[:6] == req.headers


def test_response_default_reason() -> None:
    assert Response(486).reason == "Busy Here"
    assert bytes(Response(200, "Fine")).startswith(b"SIP/2.0 200 Fine\r\n")


def test_make_response_copies_the_dialog_headers() -> None:
    m = parse(
        invite(
            "Via: SIP/2.0/UDP second.example.com;branch=z9hG4bK2", "Timestamp: 54", "X-Not: copied"
        )
    )
    assert isinstance(m, Request)
    r = make_response(m, 180, to_tag="b0b")
    assert (r.status, r.reason) == (180, "Ringing")
    assert [n for n, _ in r.headers] == ["Via", "Via", "To", "From", "Call-ID", "CSeq"]
    assert [v.host for v in r.vias] == ["pc33.atlanta.example.com", "second.example.com"]
    assert r.to.tag == "b0b" and r.from_.tag == "1928301774"
    assert (r.call_id, r.cseq, r.cseq_method) == (m.call_id, 314159, "INVITE")
    assert r.get("X-Not") is None and r.get("Timestamp") is None
    assert parse(bytes(r)).to.tag == "b0b"


def test_make_response_keeps_an_existing_to_tag_and_100_copies_timestamp() -> None:
    m = parse(
        invite("Timestamp: 54").replace(
            b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@h>;tag=dlg"
        )
    )
    assert isinstance(m, Request)
    r = make_response(m, 200, "OK", to_tag="other")
    assert r.to.tag == "dlg"
    trying = make_response(m, 100)
    assert trying.reason == "Trying" and trying.get("Timestamp") == "54"


def test_reason_phrases() -> None:
    assert reason_phrase(404) == "Not Found"
    assert reason_phrase(499) == "Client Error"
    assert reason_phrase(799) == "Unknown"
    assert all(100 <= code < 700 for code in REASON_PHRASES)
    assert len(REASON_PHRASES) > 60


def test_sip_error_text() -> None:
    e = SipError(400, "Bad Via header")
    assert str(e) == "400 Bad Via header" and e.drop is False and e.request is None
    assert "drop=True" in repr(SipError(400, "x", drop=True))
