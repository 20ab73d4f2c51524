"""Via, name-addr/addr-spec and header names: the structured headers on their own."""

from __future__ import annotations

import pytest

from softswitch.sip.errors import SipError
from softswitch.sip.grammar import parse_uint, split_commas
from softswitch.sip.headers import Address, Via, canonical_name, parse_address, parse_via
from softswitch.sip.uri import AbsoluteUri, SipUri, parse_uri

# -- Via (RFC 3261 §20.42, RFC 3581) ---------------------------------------


def test_via_fields_and_rport_flag() -> None:
    v = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport")
    assert (v.transport, v.host, v.port) == ("UDP", "192.0.2.1", 5060)
    assert v.branch == "z9hG4bK776asdhds"
    assert v.rport is True and v.received is None
    assert v.sent_by == "192.0.2.1:5060"
    assert str(v) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport"


def test_via_rport_absent_or_with_value() -> None:
    assert parse_via("SIP/2.0/TCP h;branch=z9hG4bKx").rport is None
    assert parse_via("SIP/2.0/TCP h;rport=5070").rport == 5070


def test_rfc3581_server_fills_in_received_and_rport() -> None:
    v = parse_via("SIP/2.0/UDP 10.0.0.2:5060;rport;branch=z9hG4bKa")
    v.received = "203.0.113.9"
    v.rport = 40312
    assert str(v) == "SIP/2.0/UDP 10.0.0.2:5060;rport=40312;branch=z9hG4bKa;received=203.0.113.9"
    v.rport = None
    v.received = None
    assert str(v) == "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKa"
    v.rport = True
    assert v.rport is True and str(v).endswith(";rport")


def test_via_is_case_insensitive_and_tolerates_lws() -> None:
    v = parse_via("sip / 2.0 / tcp  Spindle.Example.COM : 5070 ;  Branch = z9hG4bK9ikj8")
    assert (v.transport, v.host, v.port, v.branch) == (
        "TCP",
        "spindle.example.com",
        5070,
        "z9hG4bK9ikj8",
    )


def test_via_ipv6_sent_by_and_received() -> None:
    v = parse_via("SIP/2.0/UDP [2001:DB8::9:1]:5060;received=2001:db8::9:255;branch=z9hG4bKa")
    assert (v.host, v.port) == ("[2001:db8::9:1]", 5060)
    assert v.received == "2001:db8::9:255"
    v = parse_via("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255]")
    assert v.received == "[2001:db8::9:255]"


def test_via_built_by_code() -> None:
    v = Via("TLS", "proxy.example.com", 5061, {"branch": "z9hG4bKabc"})
    assert str(v) == "SIP/2.0/TLS proxy.example.com:5061;branch=z9hG4bKabc"
    assert parse_via(str(v)) == v


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP host",
        "SIP/2.0/UDP host:70000",
        "SIP/2.0/UDP host;;",
        "SIP/2.0/UDP 192.0.2.15;;,;,,",
        "SIP/2.0/UDP host;branch",  # fine: a valueless param ...
        "SIP/3.0/UDP host",
        "HTTP/1.1 host",
        "SIP/2.0/UDP [zz::1]",
        "SIP/2.0/UDP host extra",
    ],
)
def test_malformed_via_is_400(text: str) -> None:
    if text == "SIP/2.0/UDP host;branch":
        assert parse_via(text).branch is None and "branch" in parse_via(text).params
        return
    with pytest.raises(SipError) as exc:
        parse_via(text)
    assert str(exc.value) == "400 Bad Via header"


def test_bad_rport_value_raises_on_access() -> None:
    with pytest.raises(SipError):
        _ = parse_via("SIP/2.0/UDP h;rport=99999").rport


# -- name-addr / addr-spec (RFC 3261 §20.10, §20.20, §20.39) --------------


def test_name_addr_with_quoted_display_and_tag() -> None:
    a = parse_address('"Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774', "From")
    assert a.display == "Alice Liddell"
    assert str(a.uri) == "sip:alice@atlanta.example.com"
    assert a.tag == "1928301774"
    assert str(a) == '"Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774'


def test_quoted_display_escapes_are_removed_and_restored() -> None:
    a = parse_address(r'"A \"quoted\" \\ name" <sip:a@b>', "To")
    assert a.display == 'A "quoted" \\ name'
    assert str(a) == r'"A \"quoted\" \\ name" <sip:a@b>'
    assert parse_address(str(a), "To") == a


def test_control_characters_in_display_are_quoted_pairs() -> None:
    a = Address(parse_uri("sip:a@b"), "BEL:\x07 NUL:\x00 evil\r\nVia: x")
    text = str(a)
    assert "\r" not in text and "\n" not in text
    assert parse_address(text, "To").display == "BEL:\x07 NUL:\x00 evil  Via: x"


def test_token_display_names_with_and_without_lws() -> None:
    assert parse_address("A. Bell <sip:a@b>", "To").display == "A. Bell"
    assert parse_address("caller<sip:caller@example.com>;tag=323", "From").display == "caller"


def test_addr_spec_params_belong_to_the_header() -> None:
    a = parse_address("sip:+19725552222@gw1.example.net;unknownparam;tag=9", "Contact")
    assert isinstance(a.uri, SipUri)
    assert a.uri.params == {} and a.params == {"unknownparam": None, "tag": "9"}
    assert str(a) == "<sip:+19725552222@gw1.example.net>;unknownparam;tag=9"


def test_name_addr_params_inside_brackets_belong_to_the_uri() -> None:
    a = parse_address("<sip:a@b;tag=9;lr>", "Route")
    assert a.tag is None and a.uri.params == {"tag": "9", "lr": None}  # type: ignore[union-attr]


def test_params_with_lws_quoted_values_and_case() -> None:
    a = parse_address(
        '<sip:a@b> ;  Expires = 3600 ; Q=0.5;+sip.instance="<urn:uuid:1;2>"', "Contact"
    )
    assert a.params == {"expires": "3600", "q": "0.5", "+sip.instance": '"<urn:uuid:1;2>"'}
    assert a.expires == 3600


def test_tag_can_be_set_and_removed() -> None:
    a = parse_address("<sip:bob@biloxi.example.com>", "To")
    a.tag = "a6c85cf"
    assert str(a) == "<sip:bob@biloxi.example.com>;tag=a6c85cf"
    a.tag = None
    assert a.params == {}


def test_other_schemes_in_addresses() -> None:
    a = parse_address("isbn:2983792873", "To")
    assert isinstance(a.uri, AbsoluteUri) and str(a) == "<isbn:2983792873>"
    a = parse_address("<http://www.example.com>;tag=3234233", "From")
    assert a.uri.scheme == "http" and a.tag == "3234233"
    a = parse_address('"Ted" <tel:+1-201-555-0123>', "From")
    assert a.uri.scheme == "tel"


def test_contact_expires_clamped_and_validated() -> None:
    assert parse_address("<sip:a@b>;expires=280297596632815", "Contact").expires == 2**32 - 1
    assert parse_address("<sip:a@b>", "Contact").expires is None
    with pytest.raises(SipError):
        _ = parse_address("<sip:a@b>;expires=soon", "Contact").expires


@pytest.mark.parametrize(
    "text",
    [
        '"Mr. J. User <sip:j.user@example.com>',  # unterminated quote
        "<sip:a@b",  # no closing >
        "Bell, Alexander <sip:a@b>",  # non-token display name
        "< sip:t.watson@example.org >",  # spaces inside the brackets
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E",  # addr-spec with ?
        "sip:a@b, sip:c@d",
        "<sip:a@b>;;;;",
        "<sip:a@b>;tag",
        "<sip:a@b> junk",
        "<sip:a@b>;tag=a b",
        "",
        '"x"',
        "<>",
        '"unterminated <sip:a@b>',
    ],
)
def test_malformed_addresses_are_400_naming_the_header(text: str) -> None:
    if text == "<sip:a@b>;tag":  # valueless parameters are legal generic-params
        assert parse_address(text, "To").params == {"tag": None}
        return
    with pytest.raises(SipError) as exc:
        parse_address(text, "To")
    assert str(exc.value) == "400 Bad To header"


# -- names and lists --------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("v", "Via"),
        ("V", "Via"),
        ("VIA", "Via"),
        ("i", "Call-ID"),
        ("call-id", "Call-ID"),
        ("CALL-ID", "Call-ID"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("f", "From"),
        ("t", "To"),
        ("s", "Subject"),
        ("k", "Supported"),
        ("e", "Content-Encoding"),
        ("o", "Event"),
        ("cseq", "CSeq"),
        ("max-forwards", "Max-Forwards"),
        ("www-authenticate", "WWW-Authenticate"),
        ("record-route", "Record-Route"),
    ],
)
def test_canonical_names(spelling: str, canonical: str) -> None:
    assert canonical_name(spelling) == canonical


def test_unknown_names_are_not_canonicalised() -> None:
    assert canonical_name("X-Custom") is None
    assert canonical_name("C%6Fntact") is None


def test_split_commas_respects_quotes_and_brackets() -> None:
    assert split_commas('"Doe, J" <sip:a@b>;q=1, <sip:c,d@e>, sip:f@g') == [
        '"Doe, J" <sip:a@b>;q=1',
        "<sip:c,d@e>",
        "sip:f@g",
    ]
    assert split_commas('"a \\" , b" <sip:x@y>') == ['"a \\" , b" <sip:x@y>']
    assert split_commas("a,,b") == ["a", "", "b"]
    assert split_commas("single") == ["single"]


@pytest.mark.parametrize(
    ("text", "maximum", "value"),
    [
        ("0068", 255, 68),
        ("255", 255, 255),
        ("256", 255, None),
        ("", 255, None),
        ("-1", 255, None),
        ("+1", 255, None),
        (" 1", 255, None),
        ("²", 255, None),  # str.isdigit() is true for it; int() is not
        ("٣", 255, None),  # Arabic-Indic digit
        ("0" * 5000 + "7", 255, 7),
        ("9" * 5000, 2**32 - 1, None),  # beyond int()'s digit limit: no ValueError
        ("4294967295", 2**32 - 1, 2**32 - 1),
        ("4294967296", 2**32 - 1, None),
    ],
)
def test_parse_uint_never_raises(text: str, maximum: int, value: int | None) -> None:
    assert parse_uint(text, maximum) == value
