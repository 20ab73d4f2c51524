"""The RFC 4475 / RFC 5118 torture messages, driven by tests/data/sip-torture/INDEX.tsv.

Every VALID message parses and survives a round trip (parse → bytes → parse
gives the same structured values).  Every INVALID one raises ``SipError`` with
the status the INDEX oracle names, or ``drop=True`` for responses.  Where the
oracle is an *application* refusal of a valid message (415, 420, 501 ...), the
test checks the parsed fact the application will refuse on.

Decisions recorded here (the INDEX allows either):
- unkscm, novelsc: parse() itself refuses an R-URI scheme other than
  sip/sips/tel with 416, and attaches the request so a 416 can be sent.
- baddate: accepted; the switch never reads Date (RFC 4475 §3.1.2.12 says
  an element shouldn't reject unless Date matters).
- lwsstart, trws: rejected with 400 (the strict choice the INDEX allows).
- inv2543: accepted (RFC 2543 backward compatibility).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from softswitch.sip.errors import SipError
from softswitch.sip.framing import StreamFramer
from softswitch.sip.grammar import unescape
from softswitch.sip.message import KNOWN_METHODS, Request, Response, make_response, parse
from softswitch.sip.uri import AbsoluteUri, SipUri, parse_uri, uri_equal

DATA = Path(__file__).resolve().parents[2] / "data" / "sip-torture"
ROWS = list(csv.DictReader((DATA / "INDEX.tsv").open(encoding="utf-8"), delimiter="\t"))
VALID = [r for r in ROWS if r["validity"] == "valid"]
INVALID = [r for r in ROWS if r["validity"] == "invalid"]

# Valid messages whose refusal the parser itself makes (see module docstring).
REFUSED_BY_PARSER = {"unkscm": 416, "novelsc": 416}
# Invalid messages the INDEX lets us accept, and we do.
ACCEPTED_INVALID = {"baddate"}


def load(row_or_name: dict | str) -> bytes:
    if isinstance(row_or_name, dict):
        return (DATA / Path(row_or_name["file"]).name).read_bytes()
    return (DATA / row_or_name).read_bytes()


def expected_error(row: dict) -> tuple[int | None, bool]:
    """(status, drop) the oracle column asks for an invalid message."""
    oracle = row["oracle_for_registrar_b2bua"]
    if oracle.startswith("DROP"):
        return None, True
    return int(oracle[:3]), False


STRUCTURED = ("Via", "From", "To", "Contact")


def structure(m: Request | Response) -> dict[str, object]:
    """The structured values a round trip must preserve."""
    s: dict[str, object] = {
        "vias": [(v.transport, v.host, v.port, v.params) for v in m.vias],
        "from": (m.from_.display, str(m.from_.uri), m.from_.params, m.from_.tag),
        "to": (m.to.display, str(m.to.uri), m.to.params, m.to.tag),
        "call_id": m.call_id,
        "cseq": (m.cseq, m.cseq_method),
        "max_forwards": m.max_forwards,
        "contacts": [(c.display, str(c.uri), c.params) for c in m.contacts],
        "contact_star": m.contact_star,
        "body": m.body,
        # Every header by canonical name, values as text (Content-Length aside:
        # it is recomputed from the body, which is compared above).
        "headers": sorted(
            (n, v)
            for n, v in m.headers
            if n not in ("Content-Length", "Via", "From", "To", "Contact")
        ),
    }
    if isinstance(m, Request):
        s["start"] = (m.method, str(m.uri))
    else:
        s["start"] = (m.status, m.reason)
    return s


@pytest.mark.parametrize("row", VALID, ids=lambda r: r["name"])
def test_valid_message_parses_and_round_trips(row: dict) -> None:
    data = load(row)
    if row["name"] in REFUSED_BY_PARSER:
        with pytest.raises(SipError) as exc:
            parse(data)
        assert exc.value.status == REFUSED_BY_PARSER[row["name"]]
        assert not exc.value.drop
        return
    m = parse(data)
    again = parse(bytes(m))
    assert structure(again) == structure(m)
    # And the serialised form is stable from the first round trip on.
    assert bytes(parse(bytes(again))) == bytes(again)


@pytest.mark.parametrize("row", INVALID, ids=lambda r: r["name"])
def test_invalid_message_is_refused_as_the_oracle_says(row: dict) -> None:
    data = load(row)
    if row["name"] in ACCEPTED_INVALID:
        parse(data)
        return
    status, drop = expected_error(row)
    with pytest.raises(SipError) as exc:
        parse(data)
    e = exc.value
    assert e.drop is drop
    if status is not None:
        assert e.status == status


def test_every_index_file_exists_and_is_tested() -> None:
    names = {r["name"] for r in ROWS}
    assert len(names) == len(ROWS) == 61
    for r in ROWS:
        assert (DATA / Path(r["file"]).name).is_file()
    assert REFUSED_BY_PARSER.keys() <= names
    assert names >= ACCEPTED_INVALID


# -- the facts behind application-level refusals of valid messages ---------


def test_wsinv_folding_compact_forms_and_odd_whitespace() -> None:
    m = parse(load("wsinv.dat"))
    assert m.max_forwards == 68 and m.cseq == 9 and m.cseq_method == "INVITE"
    assert [(v.transport, v.host) for v in m.vias] == [
        ("UDP", "192.0.2.2"),
        ("TCP", "spindle.example.com"),
        ("UDP", "192.168.255.111"),
    ]
    assert [v.branch for v in m.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert m.to.tag == "1918181833n" and m.from_.tag == "98asjd8"
    assert m.from_.display == 'J Rosenberg \\"'
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    # Opaque unknown header kept exactly.
    assert m.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.get("Subject") == "" and m.get("s") == ""
    (c,) = m.contacts
    assert c.display == 'Quoted string ""'
    assert c.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert m.routes[0].uri.params == {  # type: ignore[union-attr]
        "lr": None,
        "unknownwith": "value",
        "unknown-no-value": None,
    }
    assert len(m.body) == 150


def test_intmeth_unknown_method_is_kept_for_a_501() -> None:
    m = parse(load("intmeth.dat"))
    assert isinstance(m, Request)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.method not in KNOWN_METHODS
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"  # type: ignore[union-attr]
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"  # type: ignore[union-attr]
    assert m.to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.via.branch == "z9hG4bK-.!%66*_+`'~"


def test_esc01_uri_comparison_after_unescaping() -> None:
    m = parse(load("esc01.dat"))
    assert isinstance(m, Request)
    assert uri_equal(m.to.uri, parse_uri("sip:user@example.com"))
    assert unescape(m.uri.user or "") == "sips:user@example.com"  # type: ignore[union-attr]
    (c,) = m.contacts
    assert uri_equal(c.uri, parse_uri("sip:caller@host5.example.net;lr;name=value%2541"))
    assert not uri_equal(c.uri, parse_uri("sip:caller@host5.example.net;lr;name=valueA"))


def test_escnull_keeps_the_nul_and_two_distinct_contacts() -> None:
    m = parse(load("escnull.dat"))
    assert isinstance(m.to.uri, SipUri) and m.to.uri.user is not None
    assert unescape(m.to.uri.user) == "null-\x00-null"
    a, b = m.contacts
    assert not uri_equal(a.uri, b.uri)
    assert not uri_equal(m.to.uri, parse_uri("sip:null-@example.com"))


def test_esc02_is_not_register_and_has_two_contacts() -> None:
    m = parse(load("esc02.dat"))
    assert isinstance(m, Request)
    assert m.method == "RE%47IST%45R" and m.method not in KNOWN_METHODS
    assert m.to.display == "%Z%45"
    assert [c.uri.host for c in m.contacts] == ["host1.example.com", "host3.example.com"]  # type: ignore[union-attr]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_token_display_name_without_space() -> None:
    assert parse(load("lwsdisp.dat")).from_.display == "caller"


def test_longreq_long_values_and_many_vias() -> None:
    m = parse(load("longreq.dat"))
    assert len(m.vias) == 34
    assert m.vias[-1].received == "192.0.2.5"
    assert len(m.from_.tag or "") > 100


def test_dblreq_only_the_register_is_seen() -> None:
    m = parse(load("dblreq.dat"))
    assert isinstance(m, Request)
    assert m.method == "REGISTER" and m.body == b""
    assert b"INVITE" not in bytes(m)


def test_semiuri_user_part_holds_the_semicolon() -> None:
    m = parse(load("semiuri.dat"))
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.user == "user;par=u%40example.net"
    assert unescape(m.uri.user) == "user;par=u@example.net"
    assert m.uri.host == "example.com" and m.uri.params == {}


def test_transports_unknown_transport_accepted() -> None:
    m = parse(load("transports.dat"))
    assert [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body_framed_by_content_length() -> None:
    m = parse(load("mpart01.dat"))
    assert len(m.body) == 553 and b"\x00" in m.body
    assert m.content_type == "multipart/mixed"


def test_unreason_and_noreason_reason_phrases() -> None:
    r = parse(load("unreason.dat"))
    assert isinstance(r, Response) and r.status == 200
    assert r.reason.startswith("= 2**3 * 5**2 ") and "\u043d" in r.reason
    r = parse(load("noreason.dat"))
    assert isinstance(r, Response) and (r.status, r.reason) == (100, "")


def test_badbranch_bare_magic_cookie_parses() -> None:
    assert parse(load("badbranch.dat")).via.branch == "z9hG4bK"


def test_unkscm_416_carries_a_request_that_can_be_answered() -> None:
    with pytest.raises(SipError) as exc:
        parse(load("unkscm.dat"))
    req = exc.value.request
    assert isinstance(req, Request) and isinstance(req.uri, AbsoluteUri)
    assert req.uri.scheme == "nobodyknowsthisscheme"
    resp = make_response(req, exc.value.status, to_tag="x")
    assert parse(bytes(resp)).status == 416  # type: ignore[union-attr]


def test_novelsc_atypical_scheme_is_416() -> None:
    with pytest.raises(SipError) as exc:
        parse(load("novelsc.dat"))
    assert exc.value.status == 416
    assert exc.value.request.uri.scheme == "soap.beep"


def test_unksm2_non_sip_uris_in_headers_parse_for_the_registrar_to_refuse() -> None:
    m = parse(load("unksm2.dat"))
    assert isinstance(m.to.uri, AbsoluteUri) and m.to.uri.scheme == "isbn"
    assert isinstance(m.from_.uri, AbsoluteUri) and str(m.from_.uri) == "http://www.example.com"
    assert [str(c.uri) for c in m.contacts] == ["name:John_Smith"]


def test_bext01_option_tags_listed() -> None:
    m = parse(load("bext01.dat"))
    assert m.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.get_all("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def test_invut_unknown_content_type_visible() -> None:
    assert parse(load("invut.dat")).content_type == "application/unknownformat"


def test_regaut01_unknown_auth_scheme_kept_whole() -> None:
    m = parse(load("regaut01.dat"))
    assert m.get_all("Authorization") == ["NoOneKnowsThisScheme opaque-data=here"]


def test_sdp01_accept_lacks_sdp() -> None:
    assert parse(load("sdp01.dat")).get_all("Accept") == ["text/nobodyKnowsThis"]


def test_zeromf_max_forwards_zero() -> None:
    assert parse(load("zeromf.dat")).max_forwards == 0


def test_bcast_second_via_is_broadcast() -> None:
    assert parse(load("bcast.dat")).vias[1].host == "255.255.255.255"


def test_cparam01_addr_spec_param_belongs_to_the_header() -> None:
    (c,) = parse(load("cparam01.dat")).contacts
    assert isinstance(c.uri, SipUri)
    assert c.uri.params == {} and c.params == {"unknownparam": None}
    assert str(c.uri) == "sip:+19725552222@gw1.example.net"


def test_cparam02_name_addr_param_belongs_to_the_uri() -> None:
    (c,) = parse(load("cparam02.dat")).contacts
    assert isinstance(c.uri, SipUri)
    assert c.uri.params == {"unknownparam": None} and c.params == {}


def test_regescrt_escaped_uri_header_kept_verbatim() -> None:
    (c,) = parse(load("regescrt.dat")).contacts
    assert isinstance(c.uri, SipUri)
    assert c.uri.headers == {"Route": "%3Csip:sip.example.com%3E"}
    assert str(c.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_inv2543_rfc2543_request_accepted() -> None:
    data = load("inv2543.dat")
    m = parse(data)
    assert m.get("Content-Length") is None and m.max_forwards is None
    assert m.from_.tag is None and m.via.branch is None
    assert m.body == data[data.index(b"\r\n\r\n") + 4 :] and m.body.startswith(b"v=0")
    # Over a stream, a missing Content-Length cannot frame the message.
    with pytest.raises(SipError) as exc:
        parse(data, stream=True)
    assert exc.value.status == 400


# -- RFC 5118 IPv6 --------------------------------------------------------


def test_ipv6_references_in_uri_via_and_contact() -> None:
    m = parse(load("ipv6-good.dat"))
    assert isinstance(m, Request) and isinstance(m.uri, SipUri)
    assert m.uri.host == "[2001:db8::10]" and m.uri.port is None
    assert m.via.host == "[2001:db8::9:1]"
    assert m.contacts[0].uri.host == "[2001:db8::1]"  # type: ignore[union-attr]


def test_ipv6_without_brackets_in_request_uri_is_400() -> None:
    with pytest.raises(SipError) as exc:
        parse(load("ipv6-bad.dat"))
    assert exc.value.status == 400 and "Request-URI" in exc.value.reason


def test_port_ambiguous_host_has_no_port() -> None:
    m = parse(load("port-ambiguous.dat"))
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10:5070]", None)  # type: ignore[union-attr]


def test_port_unambiguous() -> None:
    m = parse(load("port-unambiguous.dat"))
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10]", 5070)  # type: ignore[union-attr]


def test_via_received_with_and_without_brackets() -> None:
    m = parse(load("via-received-param-with-delim.dat"))
    assert m.via.received == "[2001:db8::9:255]" and m.via.branch == "z9hG4bKas3-111"
    m = parse(load("via-received-param-no-delim.dat"))
    assert m.via.received == "2001:db8::9:255" and m.via.branch == "z9hG4bKas3"


def test_mult_ip_in_header() -> None:
    vias = parse(load("mult-ip-in-header.dat")).vias
    assert [(v.host, v.port) for v in vias] == [
        ("[2001:db8::9:1]", 6050),
        ("192.0.2.1", None),
        ("[2001:db8::9:255]", None),
    ]
    assert vias[2].received == "192.0.2.200"


def test_ipv4_mapped_ipv6() -> None:
    m = parse(load("ipv4-mapped-ipv6.dat"))
    assert m.vias[0].host == "[::ffff:192.0.2.10]" and m.vias[0].port == 19823
    assert m.contacts[0].uri.host == "[::ffff:192.0.2.2]"  # type: ignore[union-attr]


def test_ipv6_abnf_bug_three_colons_tolerated_as_two() -> None:
    m = parse(load("ipv6-bug-abnf-3-colons.dat"))
    assert m.uri.host == "[2001:db8::192.0.2.1]"  # type: ignore[union-attr]
    assert m.to.uri.host == "[2001:db8::192.0.2.1]"  # type: ignore[union-attr]
    good = parse(load("ipv6-correct-abnf-2-colons.dat"))
    assert uri_equal(m.uri, good.uri)  # type: ignore[union-attr]


def test_rfc5118_bare_lf_archive_parses_like_the_wire_copies() -> None:
    """The archive as published (bare LF) is tolerated where its framing is sound."""
    for path in sorted((DATA / "rfc5118-archive-lf").iterdir()):
        wire = load(path.name + ".dat")
        try:
            wire_msg = parse(wire)
        except SipError as wire_error:
            with pytest.raises(SipError) as exc:
                parse(path.read_bytes())
            assert exc.value.status == wire_error.status
            continue
        try:
            lf_msg = parse(path.read_bytes())
        except SipError as e:
            # Only framing faults the README documents (wrong Content-Length,
            # no blank line after the headers) may separate the two copies.
            assert e.status == 400 and (
                "Content-Length" in e.reason or "end of header" in e.reason
            ), (path.name, e)
            continue
        s_lf, s_wire = structure(lf_msg), structure(wire_msg)
        s_lf.pop("body"), s_wire.pop("body")
        assert s_lf == s_wire, path.name


# -- invalid messages: the reasons, and UDP vs TCP framing ---------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("badinv01.dat", "Bad Via header"),
        ("quotbal.dat", "Bad To header"),
        ("badaspec.dat", "Bad To header"),
        ("variants/baddn-with-terminating-crlf.dat", "Bad From header"),
        ("regbadct.dat", "Bad Contact header"),
        ("scalar02.dat", "Bad CSeq header"),
        ("mismatch01.dat", "Bad CSeq header"),
        ("multi01.dat", "Multiple CSeq headers"),
        ("mcl01.dat", "Multiple Content-Length headers"),
        ("insuf.dat", "Missing From header"),
        ("escruri.dat", "Bad Request-URI"),
        ("ltgtruri.dat", "Bad Request-URI"),
        ("lwsruri.dat", "Bad Request-Line"),
        ("lwsstart.dat", "Bad Request-Line"),
        ("trws.dat", "Bad Request-Line"),
        ("clerr.dat", "Bad Content-Length header"),
        ("ncl.dat", "Bad Content-Length header"),
        ("extra/test.dat", "Bad Request-Line"),
    ],
)
def test_refusal_reasons_name_the_fault(name: str, reason: str) -> None:
    with pytest.raises(SipError) as exc:
        parse(load(name))
    assert exc.value.status == 400 and exc.value.reason == reason


def test_baddn_archive_copy_and_variant_both_400_with_the_request() -> None:
    """The archive copy never ends its header section; as a datagram it is
    still read to its end, so the 400 names the real fault and can be sent."""
    for name in ("baddn.dat", "variants/baddn-with-terminating-crlf.dat"):
        with pytest.raises(SipError) as exc:
            parse(load(name))
        assert str(exc.value) == "400 Bad From header"
        assert exc.value.request.call_id == "baddn.31415@c.example.com"
    with pytest.raises(SipError) as exc:
        parse(load("baddn.dat"), stream=True)
    assert exc.value.reason == "Missing end of header section"


def test_mismatch02_unknown_method_is_501_and_badvers_505() -> None:
    with pytest.raises(SipError) as exc:
        parse(load("mismatch02.dat"))
    assert exc.value.status == 501
    with pytest.raises(SipError) as exc:
        parse(load("badvers.dat"))
    assert exc.value.status == 505
    # The headers a 505 needs come with it.
    req = exc.value.request
    assert isinstance(req, Request) and req.method == "OPTIONS"
    assert req.call_id == "badvers.31417@c.example.com" and req.cseq == 1
    assert make_response(req, 505).get("Call-ID") == "badvers.31417@c.example.com"


def test_malformed_responses_are_dropped_not_answered() -> None:
    for name in ("bigcode.dat", "scalarlg.dat"):
        with pytest.raises(SipError) as exc:
            parse(load(name))
        assert exc.value.drop and exc.value.request is None


def test_errors_after_the_headers_carry_the_request() -> None:
    with pytest.raises(SipError) as exc:
        parse(load("mismatch01.dat"))
    req = exc.value.request
    assert isinstance(req, Request) and req.call_id == "mismatch01.dj0234sxdfl3"
    assert make_response(req, 400).status == 400


@pytest.mark.parametrize("name", ["clerr.dat", "ncl.dat", "mcl01.dat"])
def test_bad_content_length_udp_400_and_tcp_unrecoverable(name: str) -> None:
    data = load(name)
    with pytest.raises(SipError) as exc:
        parse(data)
    assert exc.value.status == 400 and not exc.value.drop
    with pytest.raises(SipError):
        parse(data, stream=True)
    framer = StreamFramer()
    if name == "clerr.dat":
        # Over TCP the framer waits for the 9,999 octets that never come;
        # the connection's idle timeout (the caller's) closes it.
        assert framer.feed(data) == []
        assert framer.buffered == len(data)
    else:
        with pytest.raises(SipError):
            framer.feed(data)
        with pytest.raises(SipError):  # and it stays broken
            framer.feed(b"OPTIONS sip:x SIP/2.0\r\n")


def test_valid_torture_messages_frame_over_tcp_in_any_chunking() -> None:
    """Every valid message with a Content-Length, concatenated, cut into 7-byte chunks."""
    messages = []
    for row in VALID:
        m = load(row)
        if row["name"] in REFUSED_BY_PARSER or row["name"] in ("inv2543", "dblreq"):
            continue
        messages.append(bytes(parse(m)))
    stream = b"\r\n\r\n".join(messages)
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out.extend(framer.feed(stream[i : i + 7]))
    got = [x for x in out if x != b"\r\n\r\n"]
    assert got == messages
    assert out.count(b"\r\n\r\n") == len(messages) - 1
    for raw in got:
        parse(raw, stream=True)
