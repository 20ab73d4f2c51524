"""SIP, SIPS, tel and other URIs: parsing, serialising and §19.1.4 comparison."""

from __future__ import annotations

import pytest

from softswitch.sip.errors import SipError
from softswitch.sip.grammar import unescape
from softswitch.sip.uri import AbsoluteUri, SipUri, TelUri, parse_uri, uri_equal


def sip(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


def test_every_component_of_a_sip_uri() -> None:
    u = sip(
        "sip:alice:secret@Atlanta.EXAMPLE.com:5061;Transport=TCP;lr;maddr=239.255.255.1"
        "?Subject=project%20x&Priority=urgent"
    )
    assert u.scheme == "sip"
    assert (u.user, u.password) == ("alice", "secret")
    assert (u.host, u.port) == ("atlanta.example.com", 5061)
    assert u.params == {"transport": "TCP", "lr": None, "maddr": "239.255.255.1"}
    assert u.headers == {"Subject": "project%20x", "Priority": "urgent"}
    assert u.transport == "tcp"
    assert u.host_port == "atlanta.example.com:5061"


def test_serialises_back_to_the_same_text_with_lower_cased_names() -> None:
    text = "sips:bob@biloxi.example.com;transport=tls;lr?Route=%3Csip:x%3E"
    assert str(sip(text)) == text
    assert str(sip("SIP:Bob@HOST;Transport=UDP")) == "sip:Bob@host;transport=UDP"


def test_defaults() -> None:
    u = sip("sip:example.com")
    assert (u.user, u.password, u.port, u.params, u.headers) == (None, None, None, {}, {})
    assert u.transport == "udp"
    assert str(SipUri(host="h", user="u", port=5060, params={"lr": None})) == "sip:u@h:5060;lr"


def test_user_part_may_hold_semicolons_and_question_marks() -> None:
    u = sip("sip:user;par=u%40example.net@example.com")
    assert u.user == "user;par=u%40example.net" and u.params == {}


def test_ipv6_references_keep_brackets_and_are_lower_cased() -> None:
    u = sip("sip:alice@[2001:DB8::A]:5070;transport=udp")
    assert (u.host, u.port) == ("[2001:db8::a]", 5070)
    assert str(u) == "sip:alice@[2001:db8::a]:5070;transport=udp"
    assert sip("sip:[::ffff:192.0.2.1]").host == "[::ffff:192.0.2.1]"


def test_ipv6_three_colon_abnf_bug_is_repaired() -> None:
    assert sip("sip:[2001:db8:::192.0.2.1]").host == "[2001:db8::192.0.2.1]"


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # IPv6 without brackets (RFC 5118 §4.2)
        "sip:[2001:db8::zz]",
        "sip:[1:2:3:4:5:6:7:8:9]",
        "sip:host:65536",
        "sip:host:123456",
        "sip:us er@host",
        "sip:user@",
        "sip:",
        "sip:@host",
        "sip:host;=x",
        "sip:host;a=",
        "sip:host;;",
        "sip:a@b%4",  # broken escape
        "sip:a%zz@b",
        "sip:host?",
        "sip:host?=v",
        "sip:<host>",
        "sip:-host",
        "1sip:host",
        "nocolon",
        ":empty-scheme",
        "http:with space",
        "tel:",
        "tel:+1 234",
        "tel:+123;=x",
    ],
)
def test_malformed_uris_are_400(text: str) -> None:
    with pytest.raises(SipError) as exc:
        parse_uri(text, "Request-URI")
    assert exc.value.status == 400 and exc.value.reason == "Bad Request-URI"


def test_tel_uri() -> None:
    u = parse_uri("tel:+1-201-555-0123;Phone-Context=example.com;ext=22")
    assert isinstance(u, TelUri) and u.scheme == "tel"
    assert u.number == "+1-201-555-0123"
    assert u.params == {"phone-context": "example.com", "ext": "22"}
    assert str(u) == "tel:+1-201-555-0123;phone-context=example.com;ext=22"
    assert uri_equal(u, parse_uri("tel:+1(201)5550123;ext=22;phone-context=EXAMPLE.com"))
    assert not uri_equal(u, parse_uri("tel:+1-201-555-0124;phone-context=example.com;ext=22"))


def test_other_schemes_are_kept_opaque() -> None:
    u = parse_uri("HTTP://www.example.com/a?b=c")
    assert isinstance(u, AbsoluteUri)
    assert u.scheme == "http" and str(u) == "HTTP://www.example.com/a?b=c"
    assert uri_equal(u, parse_uri("http://www.example.com/a?b=c"))
    assert not uri_equal(u, parse_uri("http://www.example.com/a"))
    assert not uri_equal(u, parse_uri("sip:www.example.com"))


# RFC 3261 §19.1.4, the examples it gives.
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:a@[2001:db8::1]", "sip:a@[2001:DB8::1]"),
]
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
    ("sip:alice:pw@atlanta.com", "sip:alice@atlanta.com"),
    ("sip:alice@atlanta.com", "sip:atlanta.com"),
    # Unescaping happens once: %2541 is "%41", not "A" (RFC 4475 §3.1.1.3).
    ("sip:a@h;name=value%2541", "sip:a@h;name=valueA"),
    # An escaped NUL does not truncate the user (RFC 4475 §3.1.1.4).
    ("sip:null-%00-null@example.com", "sip:null-@example.com"),
    ("sip:%00@h", "sip:%00%00@h"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_rfc3261_equal_uris(a: str, b: str) -> None:
    assert uri_equal(parse_uri(a), parse_uri(b))
    assert uri_equal(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_rfc3261_unequal_uris(a: str, b: str) -> None:
    assert not uri_equal(parse_uri(a), parse_uri(b))
    assert not uri_equal(parse_uri(b), parse_uri(a))


def test_escapes_are_compared_decoded_but_kept_encoded() -> None:
    u = sip("sip:%75se%72@example.com")
    assert u.user == "%75se%72" and unescape(u.user) == "user"
    assert uri_equal(u, parse_uri("sip:user@example.com"))
    assert unescape("a%2541") == "a%41"
    assert unescape("%00x") == "\x00x"
    assert unescape("no escapes") == "no escapes"
