"""SDP parsing/serialising (RFC 4566) and offer/answer for the relaying B2BUA (RFC 3264).

The fixtures are shaped after what real devices send; the RFC 4475/5118
torture bodies are read from the shared test data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from softswitch.sip.errors import SipError
from softswitch.sip.offeranswer import (
    LegOrigin,
    check_answer,
    codec_names,
    create_answer,
    filter_codecs,
    free_payload_type,
    intersect_codecs,
    map_payload_types,
    media_changed,
    rewrite_for_relay,
)
from softswitch.sip.sdp import (
    MAX_LINE_LENGTH,
    MAX_LINES,
    MAX_MEDIA,
    MAX_SDP_BYTES,
    Codec,
    Connection,
    Origin,
    SdpError,
    SessionDescription,
)

TORTURE = Path("/work/shared/testdata/sip-torture")


def sdp(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode()


YEALINK_OFFER = sdp(
    "v=0",
    "o=- 20010 20010 IN IP4 192.168.1.50",
    "s=SDP data",
    "c=IN IP4 192.168.1.50",
    "t=0 0",
    "m=audio 11780 RTP/AVP 0 8 9 18 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=fmtp:101 0-15",
    "a=rtpmap:101 telephone-event/8000",
    "a=ptime:20",
    "a=sendrecv",
)

POLYCOM_OFFER = sdp(
    "v=0",
    "o=- 1700000000 1700000000 IN IP4 10.0.0.21",
    "s=Polycom IP Phone",
    "c=IN IP4 10.0.0.21",
    "t=0 0",
    "a=sendrecv",
    "m=audio 2222 RTP/AVP 9 0 8 18 127",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:127 telephone-event/8000",
)

GRANDSTREAM_OFFER = sdp(
    "v=0",
    "o=1001 8000 8000 IN IP4 192.168.1.60",
    "s=SIP Call",
    "c=IN IP4 192.168.1.60",
    "t=0 0",
    "m=audio 5004 RTP/AVP 0 8 9 18 101",
    "a=sendrecv",
    "a=rtpmap:0 PCMU/8000",
    "a=ptime:20",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
)

PJSUA_OFFER = sdp(
    "v=0",
    "o=- 3794918337 3794918337 IN IP4 192.168.1.70",
    "s=pjmedia",
    "b=AS:84",
    "t=0 0",
    "a=X-nat:0",
    "m=audio 4000 RTP/AVP 96 97 98 99 3 0 8 9 120 121 122",
    "c=IN IP4 192.168.1.70",
    "b=TIAS:64000",
    "a=rtcp:4001 IN IP4 192.168.1.70",
    "a=sendrecv",
    "a=rtpmap:96 speex/16000",
    "a=rtpmap:97 speex/8000",
    "a=rtpmap:98 speex/32000",
    "a=rtpmap:99 iLBC/8000",
    "a=fmtp:99 mode=30",
    "a=rtpmap:3 GSM/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:120 telephone-event/16000",
    "a=fmtp:120 0-16",
    "a=rtpmap:121 telephone-event/32000",
    "a=fmtp:121 0-16",
    "a=rtpmap:122 telephone-event/8000",
    "a=fmtp:122 0-16",
    "a=ssrc:1370137402 cname:5ad9f3a6354a6d60",
)

LINPHONE_OFFER = sdp(
    "v=0",
    "o=alice 1234 5678 IN IP4 192.168.1.80",
    "s=Talk",
    "c=IN IP4 192.168.1.80",
    "t=0 0",
    "a=ice-pwd:31ec21eb38b2ec6d36e8dc7b",
    "a=ice-ufrag:8f2f5a4c",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "a=record:off",
    "m=audio 7078 RTP/AVP 96 97 98 0 8 101 99 100",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:97 speex/16000",
    "a=fmtp:97 vbr=on",
    "a=rtpmap:98 speex/8000",
    "a=fmtp:98 vbr=on",
    "a=rtpmap:101 telephone-event/48000",
    "a=rtpmap:99 telephone-event/16000",
    "a=rtpmap:100 telephone-event/8000",
    "a=rtcp:7079",
    "a=candidate:1 1 UDP 2130706431 192.168.1.80 7078 typ host",
    "a=candidate:1 2 UDP 2130706430 192.168.1.80 7079 typ host",
    "a=candidate:2 1 UDP 1694498815 203.0.113.7 40000 typ srflx raddr 192.168.1.80 rport 7078",
    "a=end-of-candidates",
    "a=rtcp-fb:* trr-int 1000",
    "a=rtcp-fb:96 nack",
    "a=rtcp-fb:97 nack",
)

YEALINK_HOLD = sdp(
    "v=0",
    "o=- 20010 20011 IN IP4 192.168.1.50",
    "s=SDP data",
    "c=IN IP4 192.168.1.50",
    "t=0 0",
    "m=audio 11780 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=sendonly",
)

LEGACY_HOLD = sdp(  # RFC 2543 style, still sent by old gateways
    "v=0",
    "o=GW 1 2 IN IP4 198.51.100.9",
    "s=session",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 16384 RTP/AVP 0 101",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
)

PJSUA_IPV6_OFFER = sdp(
    "v=0",
    "o=- 3794918400 3794918400 IN IP6 2001:db8::50",
    "s=pjmedia",
    "t=0 0",
    "m=audio 4000 RTP/AVP 0 8 101",
    "c=IN IP6 2001:db8::50",
    "a=rtcp:4001 IN IP6 2001:db8::50",
    "a=sendrecv",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
)

DEVICE_OFFERS = {
    "yealink": YEALINK_OFFER,
    "polycom": POLYCOM_OFFER,
    "grandstream": GRANDSTREAM_OFFER,
    "pjsua": PJSUA_OFFER,
    "linphone": LINPHONE_OFFER,
    "yealink-hold": YEALINK_HOLD,
    "legacy-hold": LEGACY_HOLD,
    "pjsua-ipv6": PJSUA_IPV6_OFFER,
}


def torture_body(name: str) -> bytes:
    return (TORTURE / f"{name}.dat").read_bytes().split(b"\r\n\r\n", 1)[1]


TORTURE_SDP = ["ipv6-in-sdp", "mult-ip-in-sdp", "sdp01", "ipv4-mapped-ipv6"]

BEARER = "203.0.113.10"


def leg(sess_id: int = 5000) -> LegOrigin:
    return LegOrigin(BEARER, sess_id=sess_id)


# ---------------------------------------------------------------------------
# Parsing and serialising.


@pytest.mark.parametrize("name", sorted(DEVICE_OFFERS))
def test_device_sdp_round_trips_byte_exact(name: str) -> None:
    body = DEVICE_OFFERS[name]
    sd = SessionDescription.parse(body)
    assert bytes(sd) == body
    assert SessionDescription.parse(bytes(sd)) == sd


@pytest.mark.parametrize("name", TORTURE_SDP)
def test_torture_sdp_round_trips_byte_exact(name: str) -> None:
    body = torture_body(name)
    assert bytes(SessionDescription.parse(body)) == body


def test_yealink_offer_fields() -> None:
    sd = SessionDescription.parse(YEALINK_OFFER)
    assert sd.version == 0
    assert sd.origin == Origin("-", "20010", 20010, "IN", "IP4", "192.168.1.50")
    assert sd.name == "SDP data"
    assert sd.connection == Connection("IN", "IP4", "192.168.1.50")
    [md] = sd.media
    assert (md.media, md.port, md.proto) == ("audio", 11780, "RTP/AVP")
    assert md.formats == ["0", "8", "9", "18", "101"]
    assert md.codecs == [
        Codec(0, "PCMU", 8000),
        Codec(8, "PCMA", 8000),
        Codec(9, "G722", 8000),
        Codec(18, "G729", 8000, fmtp="annexb=no"),
        Codec(101, "telephone-event", 8000, fmtp="0-15"),
    ]
    assert md.telephone_event == Codec(101, "telephone-event", 8000, fmtp="0-15")
    assert md.ptime == 20
    assert md.direction == "sendrecv"
    assert not md.is_hold
    assert (md.effective_address, md.effective_port) == ("192.168.1.50", 11780)
    assert md.rtcp is None


def test_bare_lf_input_is_accepted_and_written_with_crlf() -> None:
    lf = YEALINK_OFFER.replace(b"\r\n", b"\n")
    sd = SessionDescription.parse(lf)
    assert bytes(sd) == YEALINK_OFFER
    assert sd == SessionDescription.parse(YEALINK_OFFER)


def test_str_input_parses_like_bytes() -> None:
    sd = SessionDescription.parse(YEALINK_OFFER.decode())
    assert str(sd) == YEALINK_OFFER.decode()


def test_body_without_trailing_crlf_and_with_extra_blank_lines() -> None:
    assert bytes(SessionDescription.parse(YEALINK_OFFER.rstrip())) == YEALINK_OFFER
    assert bytes(SessionDescription.parse(YEALINK_OFFER + b"\r\n\r\n")) == YEALINK_OFFER


def test_static_payload_types_without_rtpmap_come_from_rfc3551() -> None:
    md = SessionDescription.parse(LINPHONE_OFFER).media[0]
    assert [(c.pt, c.encoding, c.fmtp) for c in md.codecs] == [
        (96, "opus/48000/2", "useinbandfec=1"),
        (97, "speex/16000", "vbr=on"),
        (98, "speex/8000", "vbr=on"),
        (0, "PCMU/8000", None),
        (8, "PCMA/8000", None),
        (101, "telephone-event/48000", None),
        (99, "telephone-event/16000", None),
        (100, "telephone-event/8000", None),
    ]
    assert md.telephone_event is not None and md.telephone_event.pt == 100  # 8000 preferred


def test_sdp01_malformed_rtpmap_falls_back_to_static_type_and_is_kept() -> None:
    sd = SessionDescription.parse(torture_body("sdp01"))
    audio, video = sd.media
    assert codec_names(audio) == ["PCMU/8000", "QCELP/8000"]
    assert video.codecs == [Codec(31, "H261", 90000)]
    assert video.attributes == [("rtpmap", "31 LPC")]


def test_rtpmap_overrides_static_table() -> None:
    sd = SessionDescription.parse(torture_body("ipv6-in-sdp"))  # PT 2 as G726-32
    assert sd.media[0].codecs == [Codec(2, "G726-32", 8000)]


def test_ipv6_connection_without_brackets() -> None:
    sd = SessionDescription.parse(torture_body("ipv6-in-sdp"))
    assert sd.connection == Connection("IN", "IP6", "2001:db8::20")
    assert [md.effective_address for md in sd.media] == ["2001:db8::20"] * 2
    mapped = SessionDescription.parse(torture_body("ipv4-mapped-ipv6"))
    assert mapped.media[0].effective_address == "::ffff:192.0.2.2"


def test_mult_ip_in_sdp_media_level_connection_wins() -> None:
    sd = SessionDescription.parse(torture_body("mult-ip-in-sdp"))
    assert sd.connection is None
    assert sd.name == ""
    audio, video = sd.media
    assert audio.effective_connection == Connection("IN", "IP4", "192.0.2.1")
    assert video.effective_connection == Connection("IN", "IP6", "2001:db8::1")


def test_media_connection_overrides_session_connection() -> None:
    body = PJSUA_IPV6_OFFER.replace(b"t=0 0", b"c=IN IP6 2001:db8::1\r\nt=0 0")
    sd = SessionDescription.parse(body)
    assert sd.connection is not None and sd.connection.host == "2001:db8::1"
    assert sd.media[0].effective_address == "2001:db8::50"


def test_pjsua_rtcp_attribute_and_bandwidths() -> None:
    sd = SessionDescription.parse(PJSUA_OFFER)
    md = sd.media[0]
    assert md.rtcp == (4001, "192.168.1.70")
    assert [str(b) for b in sd.bandwidths] == ["AS:84"]
    assert [str(b) for b in md.bandwidths] == ["TIAS:64000"]
    assert sd.attributes == [("X-nat", "0")]
    assert SessionDescription.parse(LINPHONE_OFFER).media[0].rtcp == (7079, None)


def test_session_level_direction_is_inherited() -> None:
    assert SessionDescription.parse(POLYCOM_OFFER).media[0].direction == "sendrecv"
    held = SessionDescription.parse(POLYCOM_OFFER.replace(b"a=sendrecv", b"a=sendonly"))
    assert held.media[0].direction == "sendonly"
    assert held.media[0].is_hold


@pytest.mark.parametrize(
    ("body", "hold"),
    [
        (YEALINK_OFFER, False),
        (YEALINK_HOLD, True),
        (YEALINK_HOLD.replace(b"a=sendonly", b"a=inactive"), True),
        (YEALINK_HOLD.replace(b"a=sendonly", b"a=recvonly"), False),
        (LEGACY_HOLD, True),
    ],
    ids=["sendrecv", "sendonly", "inactive", "recvonly", "legacy-0.0.0.0"],
)
def test_is_hold(body: bytes, hold: bool) -> None:
    assert SessionDescription.parse(body).media[0].is_hold is hold


def test_unknown_lines_and_attributes_keep_their_order() -> None:
    body = sdp(
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "i=session info",
        "u=http://example.com/",
        "e=ops@example.com",
        "p=+1 555 0100",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "r=604800 3600 0 90000",
        "z=2882844526 -1h",
        "k=prompt",
        "y=unknown session line",
        "a=zzz-first",
        "a=group:BUNDLE 0",
        "m=audio 4000 RTP/AVP 0",
        "i=media info",
        "c=IN IP4 192.0.2.2",
        "c=IN IP4 192.0.2.3",
        "b=AS:64",
        "k=clear:secret",
        "x=unknown media line",
        "a=mid:0",
        "a=X-vendor: odd value with spaces ",
        "a=",
        "a=ptime:20",
    )
    sd = SessionDescription.parse(body)
    assert bytes(sd) == body
    assert sd.timing[0].repeats == ("604800 3600 0 90000",)
    md = sd.media[0]
    assert md.attributes == [
        ("mid", "0"),
        ("X-vendor", " odd value with spaces "),
        ("", None),
        ("ptime", "20"),
    ]
    assert md.extra_lines == [
        ("i", "media info"),
        ("k", "clear:secret"),
        ("x", "unknown media line"),
    ]
    assert md.effective_address == "192.0.2.2"


def test_non_utf8_bytes_survive_a_round_trip() -> None:
    body = YEALINK_OFFER.replace(b"s=SDP data", b"s=Caf\xe9 \xff\xfe")  # ISO-8859-1 name
    sd = SessionDescription.parse(body)
    assert bytes(sd) == body


def test_out_of_order_fields_come_back_in_rfc_order() -> None:
    body = sdp("v=0", "t=0 0", "s=-", "c=IN IP4 192.0.2.1", "o=- 1 1 IN IP4 192.0.2.1")
    assert bytes(SessionDescription.parse(body)) == sdp(
        "v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0"
    )


def _session(*tail: str) -> bytes:
    return sdp("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", *tail)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "Bad SDP: line 1: expected v=0: ''"),
        (b"\r\n\r\n", "Bad SDP: line 1: expected v=0: ''"),
        (b"INVITE sip:a@b SIP/2.0\r\n", "Bad SDP: line 1: expected v=0: 'INVITE sip:a@b SIP/2.0'"),
        (b"v=1\r\no=- 1 1 IN IP4 a\r\n", "Bad SDP: line 1: expected v=0: 'v=1'"),
        (sdp("v=0", "s=-"), "Bad SDP: no o= line"),
        (sdp("v=0", "o=- 1 IN IP4 a"), "Bad SDP: line 2: o= needs 6 fields: 'o=- 1 IN IP4 a'"),
        (
            sdp("v=0", "o=- 1 x IN IP4 a"),
            "Bad SDP: line 2: o= sess-id and sess-version must be digits: 'o=- 1 x IN IP4 a'",
        ),
        (
            sdp("v=0", "o=- 1 1 IN IP4 a", "o=- 1 1 IN IP4 a"),
            "Bad SDP: line 3: second o= line: 'o=- 1 1 IN IP4 a'",
        ),
        (_session("v=0"), "Bad SDP: line 5: second v= line: 'v=0'"),
        (_session("s=again"), "Bad SDP: line 5: second s= line: 's=again'"),
        (_session("m=audio 70000 RTP/AVP 0"), "Bad SDP: line 5: bad m= port"),
        (_session("m=audio 4000/0 RTP/AVP 0"), "Bad SDP: line 5: bad m= port"),
        (_session("m=audio 1_0 RTP/AVP 0"), "Bad SDP: line 5: bad m= port"),
        (_session("m=audio \u0664\u0660\u0660\u0660 RTP/AVP 0"), "Bad SDP: line 5: m= needs"),
        (_session("m=audio 4000 RTP/AVP 128"), "is not a payload type 0-127"),
        (_session("m=audio 4000 RTP/AVP PCMU"), "is not a payload type 0-127"),
        (_session("m=audio 4000"), "m= needs <media> <port> <proto> <fmt>"),
        (_session("c=IN IP4"), "c= needs <nettype> <addrtype> <address>"),
        (
            sdp("v=0", "o=- 1 1 IN IP4 a", "c=IN IP4 a", "c=IN IP4 b"),
            "Bad SDP: line 4: second session-level c= line: 'c=IN IP4 b'",
        ),
        (_session("b=AS64"), "b= needs <bwtype>:<bandwidth>"),
        (_session("b=AS:-1"), "b= needs <bwtype>:<bandwidth>"),
        (sdp("v=0", "o=- 1 1 IN IP4 a", "t=0 x"), "t= needs <start> <stop>"),
        (sdp("v=0", "o=- 1 1 IN IP4 a", "r=1 2 3"), "r= line without t="),
        (_session("m=audio 4000 RTP/AVP 0", "t=0 0"), "t= line inside a media section"),
        (_session("hello"), "Bad SDP: line 5: not <type>=<value>: 'hello'"),
        (_session("A=sendrecv"), "not <type>=<value>"),
        (_session("a=x\x00y"), "Bad SDP: line 5: CR or NUL inside a line: 'a=x\\x00y'"),
        (_session("a=x\ry"), "CR or NUL inside a line: 'a=x\\ry'"),
        (_session("a=" + "x" * MAX_LINE_LENGTH), "Bad SDP: line 5: line too long: 'a=xxxxx"),
        (_session(*["a=x"] * MAX_LINES), f"Bad SDP: more than {MAX_LINES} lines"),
        (
            _session(*["m=audio 0 RTP/AVP 0"] * (MAX_MEDIA + 1)),
            f"more than {MAX_MEDIA} m= lines",
        ),
        (
            _session("m=audio 4000 RTP/AVP " + " ".join(["0"] * 129)),
            "more than 128 formats",
        ),
        (b"v=0\r\n" + b"s=" + b"x" * MAX_SDP_BYTES, f"body longer than {MAX_SDP_BYTES} bytes"),
    ],
)
def test_malformed_sdp_is_400_with_the_line(body: bytes | str, reason: str) -> None:
    with pytest.raises(SdpError) as caught:
        SessionDescription.parse(body)
    error = caught.value
    assert isinstance(error, SipError)
    assert error.status == 400
    assert reason in error.reason
    assert error.reason.isascii() and error.reason.isprintable()
    assert len(error.reason) < 150


def test_str_with_a_lone_surrogate_is_400_not_unicode_error() -> None:
    with pytest.raises(SdpError) as caught:
        SessionDescription.parse("v=0\r\ns=\ud800\r\n")
    assert caught.value.status == 400


def test_non_ascii_in_a_structural_field_is_400() -> None:
    with pytest.raises(SdpError, match="c= needs"):
        SessionDescription.parse(_session("c=IN IP4 192.0.2.X").replace(b"X", b"\xb9"))


# ---------------------------------------------------------------------------
# Codec intersection (RFC 3264 §6.1).


def test_intersection_keeps_offerer_order_and_numbers() -> None:
    offered = SessionDescription.parse(YEALINK_OFFER).media[0].codecs
    common = intersect_codecs(offered, ["PCMA", "PCMU", "telephone-event"])
    assert [(c.pt, c.name) for c in common] == [(0, "PCMU"), (8, "PCMA"), (101, "telephone-event")]
    assert common[2].fmtp == "0-15"


def test_same_codec_with_different_payload_type_numbers_matches() -> None:
    offered = SessionDescription.parse(LINPHONE_OFFER).media[0].codecs
    ours = [Codec(111, "OPUS", 48000, 2), Codec(102, "telephone-event", 48000)]
    common = intersect_codecs(offered, ours)
    assert common == [
        Codec(96, "opus", 48000, 2, "useinbandfec=1"),
        Codec(101, "telephone-event", 48000),
    ]


def test_rate_and_channels_must_match_when_given() -> None:
    offered = SessionDescription.parse(LINPHONE_OFFER).media[0].codecs
    assert [c.pt for c in intersect_codecs(offered, ["speex/8000"])] == [98]
    assert [c.pt for c in intersect_codecs(offered, ["speex"])] == [97, 98]
    assert intersect_codecs(offered, ["opus/48000/1"]) == []
    assert intersect_codecs(offered, [Codec(0, "opus", 48000, 1)]) == []


def test_telephone_event_only_rides_with_a_codec_of_its_rate() -> None:
    offered = SessionDescription.parse(PJSUA_OFFER).media[0].codecs
    common = intersect_codecs(offered, ["PCMU", "PCMA", "telephone-event"])
    assert [c.pt for c in common] == [0, 8, 122]  # not 120 (16 kHz) nor 121 (32 kHz)
    assert intersect_codecs(offered, ["telephone-event"]) == []


def test_no_common_codec_is_empty() -> None:
    offered = SessionDescription.parse(YEALINK_OFFER).media[0].codecs
    assert intersect_codecs(offered, ["opus", "AMR-WB"]) == []
    assert intersect_codecs([], ["PCMU"]) == []


def test_bad_codec_spec_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="bad codec spec"):
        intersect_codecs([], ["PCMU/eight"])


# ---------------------------------------------------------------------------
# Answers (RFC 3264 §6).


def test_answer_has_one_m_line_per_offered_in_order_and_rejects_with_port_0() -> None:
    offer = SessionDescription.parse(torture_body("ipv6-in-sdp"))  # audio G726-32, video H263
    answer = create_answer(
        offer,
        address="2001:db8::99",
        ports=[30000, 30002],
        supported=["G726-32/8000", "PCMU"],
        origin=LegOrigin("2001:db8::99", sess_id=77),
    )
    assert [md.media for md in answer.media] == ["audio", "video"]
    audio, video = answer.media
    assert (audio.port, audio.formats) == (30000, ["2"])
    assert audio.attributes == [("rtpmap", "2 G726-32/8000"), ("sendrecv", None)]
    assert (video.port, video.formats, video.attributes) == (0, ["107"], [])
    assert answer.connection == Connection("IN", "IP6", "2001:db8::99")
    assert answer.origin == Origin("-", "77", 77, "IN", "IP6", "2001:db8::99")
    assert answer.timing == offer.timing  # §6: t= as in the offer
    check_answer(offer, answer)
    assert SessionDescription.parse(bytes(answer)) == answer


def test_answer_to_a_yealink_offer_byte_for_byte() -> None:
    offer = SessionDescription.parse(YEALINK_OFFER)
    answer = create_answer(
        offer,
        address=BEARER,
        ports=[40000],
        supported=["PCMA", "PCMU", "telephone-event"],
        origin=leg(),
        ptime=20,
    )
    assert bytes(answer) == sdp(
        "v=0",
        f"o=- 5000 5000 IN IP4 {BEARER}",
        "s=-",
        f"c=IN IP4 {BEARER}",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
        "a=ptime:20",
        "a=sendrecv",
    )


def test_stream_disabled_in_offer_stays_disabled_and_missing_port_rejects() -> None:
    offer = SessionDescription.parse(
        _session("m=video 0 RTP/AVP 31", "m=audio 4000 RTP/AVP 0", "m=audio 4002 RTP/AVP 8")
    )
    answer = create_answer(
        offer, address=BEARER, ports={0: 10, 1: 20}, supported=["PCMU", "PCMA"], origin=leg()
    )
    assert [md.port for md in answer.media] == [0, 20, 0]


def test_no_acceptable_stream_is_488() -> None:
    offer = SessionDescription.parse(LINPHONE_OFFER)
    with pytest.raises(SdpError) as caught:
        create_answer(offer, address=BEARER, ports=[4000], supported=["G729"], origin=leg())
    assert caught.value.status == 488
    assert caught.value.reason == "Not Acceptable Here: m=audio: no common codec or transport"


def test_srtp_offer_is_rejected_unless_allowed() -> None:
    offer = SessionDescription.parse(YEALINK_OFFER.replace(b"RTP/AVP", b"RTP/SAVP"))
    with pytest.raises(SdpError):
        create_answer(offer, address=BEARER, ports=[4000], supported=["PCMU"], origin=leg())
    answer = create_answer(
        offer,
        address=BEARER,
        ports=[4000],
        supported=["PCMU"],
        origin=leg(),
        protos=["RTP/AVP", "RTP/SAVP"],
    )
    assert answer.media[0].proto == "RTP/SAVP"


def test_offer_with_no_streams_gets_an_answer_with_none() -> None:
    offer = SessionDescription.parse(_session())
    answer = create_answer(offer, address=BEARER, ports=[], supported=["PCMU"], origin=leg())
    assert answer.media == []


@pytest.mark.parametrize(
    ("offered", "local", "answered"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "sendonly", "sendonly"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
        ("sendrecv", "inactive", "inactive"),
    ],
)
def test_answer_direction_mirrors_the_offer(offered: str, local: str, answered: str) -> None:
    offer = SessionDescription.parse(YEALINK_OFFER.replace(b"a=sendrecv", f"a={offered}".encode()))
    answer = create_answer(
        offer, address=BEARER, ports=[4000], supported=["PCMU"], origin=leg(), direction=local
    )
    assert answer.media[0].direction == answered


def test_answer_to_legacy_hold_is_recvonly() -> None:
    offer = SessionDescription.parse(LEGACY_HOLD)
    answer = create_answer(offer, address=BEARER, ports=[4000], supported=["PCMU"], origin=leg())
    assert answer.media[0].direction == "recvonly"


def test_check_answer_refuses_misaligned_answers() -> None:
    offer = SessionDescription.parse(_session("m=audio 4000 RTP/AVP 0", "m=video 0 RTP/AVP 31"))
    short = SessionDescription.parse(_session("m=audio 5000 RTP/AVP 0"))
    revived = SessionDescription.parse(
        _session("m=audio 5000 RTP/AVP 0", "m=video 5002 RTP/AVP 31")
    )
    swapped = SessionDescription.parse(_session("m=video 0 RTP/AVP 31", "m=audio 5000 RTP/AVP 0"))
    for answer, reason in [
        (short, "Bad SDP answer: 1 m= lines for 2 offered"),
        (revived, "Bad SDP answer: m-line 1 was rejected in the offer"),
        (swapped, "Bad SDP answer: m-line 0 is not 'audio'"),
    ]:
        with pytest.raises(SdpError) as caught:
            check_answer(offer, answer)
        assert (caught.value.status, caught.value.reason) == (488, reason)


# ---------------------------------------------------------------------------
# Relaying through the bearer.


def test_rewrite_replaces_every_address_port_and_rtcp() -> None:
    sd = SessionDescription.parse(PJSUA_OFFER.replace(b"t=0 0", b"c=IN IP4 192.168.1.70\r\nt=0 0"))
    out = rewrite_for_relay(sd, BEARER, [31000], origin=leg())
    assert b"192.168.1.70" not in bytes(out)
    assert out.connection == Connection("IN", "IP4", BEARER)
    md = out.media[0]
    assert md.connections == [Connection("IN", "IP4", BEARER)]
    assert md.port == 31000
    assert md.rtcp == (31001, BEARER)
    assert ("rtcp", f"31001 IN IP4 {BEARER}") in md.attributes
    assert md.codecs == sd.media[0].codecs
    assert SessionDescription.parse(bytes(out)) == out


def test_rewrite_drops_ice_and_keeps_other_attributes_in_order() -> None:
    sd = SessionDescription.parse(LINPHONE_OFFER)
    out = rewrite_for_relay(sd, BEARER, [31000], origin=leg())
    names = [k for k, _ in out.attributes] + [k for k, _ in out.media[0].attributes]
    assert not any(n.startswith("ice-") or n in ("candidate", "end-of-candidates") for n in names)
    assert [k for k, _ in out.attributes] == ["rtcp-xr", "record"]
    assert out.media[0].rtcp == (31001, None)
    assert ("rtcp-fb", "96 nack") in out.media[0].attributes
    assert b"203.0.113.7" not in bytes(out) and b"192.168.1.80" not in bytes(out)


def test_rewrite_keeps_disabled_streams_at_port_0_and_disables_unported_ones() -> None:
    sd = SessionDescription.parse(
        _session(
            "c=IN IP4 192.0.2.5",
            "m=audio 4000 RTP/AVP 0",
            "a=rtcp:4001",
            "m=video 0 RTP/AVP 31",
            "m=audio 4002 RTP/AVP 0",
            "a=rtcp:4003",
        )
    )
    out = rewrite_for_relay(sd, BEARER, {0: 50000, 1: 50002}, origin=leg())
    assert [md.port for md in out.media] == [50000, 0, 0]
    assert out.media[0].rtcp == (50001, None)
    assert out.media[2].rtcp is None  # no RTCP port for a disabled stream


def test_rewrite_to_an_ipv6_bearer_and_from_an_ipv6_phone() -> None:
    sd = SessionDescription.parse(PJSUA_IPV6_OFFER)
    out = rewrite_for_relay(sd, BEARER, [31000], origin=leg())
    assert out.media[0].connections == [Connection("IN", "IP4", BEARER)]
    assert out.media[0].rtcp == (31001, BEARER)
    back = rewrite_for_relay(
        SessionDescription.parse(YEALINK_OFFER),
        "2001:db8::99",
        [31000],
        origin=LegOrigin("2001:db8::99", sess_id=1),
    )
    assert back.connection == Connection("IN", "IP6", "2001:db8::99")
    assert back.origin.addrtype == "IP6"
    assert b"\r\nc=IN IP6 2001:db8::99\r\n" in bytes(back)


def test_rewrite_of_a_multicast_layered_port_count_drops_the_count() -> None:
    sd = SessionDescription.parse(_session("c=IN IP4 192.0.2.5", "m=video 49170/2 RTP/AVP 31"))
    out = rewrite_for_relay(sd, BEARER, [60000], origin=leg())
    assert (out.media[0].port, out.media[0].port_count) == (60000, None)
    assert b"m=video 60000 RTP/AVP 31" in bytes(out)


def test_rtcp_mux_port_stays_equal_to_rtp_port() -> None:
    sd = SessionDescription.parse(
        _session("c=IN IP4 192.0.2.5", "m=audio 4000 RTP/AVP 0", "a=rtcp:4000", "a=rtcp-mux")
    )
    out = rewrite_for_relay(sd, BEARER, [31000], origin=leg())
    assert out.media[0].rtcp == (31000, None)


def test_legacy_hold_stays_a_hold_on_the_bearer_address() -> None:
    sd = SessionDescription.parse(LEGACY_HOLD)
    out = rewrite_for_relay(sd, BEARER, [31000], origin=leg())
    md = out.media[0]
    assert md.effective_address == BEARER
    assert md.direction == "sendonly"
    assert md.is_hold
    assert b"0.0.0.0" not in bytes(out)
    recvonly = SessionDescription.parse(LEGACY_HOLD + b"a=recvonly\r\n")
    assert rewrite_for_relay(recvonly, BEARER, [1], origin=leg()).media[0].direction == "inactive"


def test_sendonly_hold_stays_sendonly() -> None:
    out = rewrite_for_relay(SessionDescription.parse(YEALINK_HOLD), BEARER, [31000], origin=leg())
    assert out.media[0].direction == "sendonly"
    assert out.media[0].attributes[-1] == ("sendonly", None)


def test_rewrite_leaves_its_input_untouched() -> None:
    sd = SessionDescription.parse(LINPHONE_OFFER)
    rewrite_for_relay(sd, BEARER, [31000], origin=leg())
    filter_codecs(sd.media[0], sd.media[0].codecs[:1])
    create_answer(sd, address=BEARER, ports=[1], supported=["PCMU"], origin=leg())
    assert bytes(sd) == LINPHONE_OFFER


def test_bad_bearer_address_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        rewrite_for_relay(
            SessionDescription.parse(YEALINK_OFFER), "bearer.local", [1], origin=leg()
        )


# ---------------------------------------------------------------------------
# The B2BUA's own o= line per leg (RFC 3264 §8).


def test_leg_origin_bumps_version_only_when_the_description_changes() -> None:
    origin = leg(sess_id=900)
    first = rewrite_for_relay(SessionDescription.parse(YEALINK_OFFER), BEARER, [1], origin=origin)
    assert first.origin == Origin("-", "900", 900, "IN", "IP4", BEARER)
    same = rewrite_for_relay(SessionDescription.parse(YEALINK_OFFER), BEARER, [1], origin=origin)
    assert same.origin.sess_version == 900  # a refresh: identical SDP, same version
    held = rewrite_for_relay(SessionDescription.parse(YEALINK_HOLD), BEARER, [1], origin=origin)
    assert held.origin.sess_version == 901
    held_again = rewrite_for_relay(
        SessionDescription.parse(YEALINK_HOLD), BEARER, [1], origin=origin
    )
    assert held_again.origin.sess_version == 901  # regression: used to bump after a bump
    moved = rewrite_for_relay(SessionDescription.parse(YEALINK_HOLD), BEARER, [2], origin=origin)
    assert moved.origin.sess_version == 902  # new bearer port
    assert {o.origin.sess_id for o in (first, same, held, moved)} == {"900"}


def test_each_leg_has_its_own_origin() -> None:
    a_leg, b_leg = leg(sess_id=1), LegOrigin(BEARER, sess_id=2, version=10, username="softswitch")
    offer = SessionDescription.parse(YEALINK_OFFER)
    to_b = rewrite_for_relay(offer, BEARER, [1], origin=b_leg)
    hold = SessionDescription.parse(YEALINK_HOLD)
    to_b_again = rewrite_for_relay(hold, BEARER, [1], origin=b_leg)
    to_a = create_answer(offer, address=BEARER, ports=[3], supported=["PCMU"], origin=a_leg)
    assert str(to_b.origin) == f"softswitch 2 10 IN IP4 {BEARER}"
    assert to_b_again.origin.sess_version == 11
    assert str(to_a.origin) == f"- 1 1 IN IP4 {BEARER}"


def test_leg_origin_stamp_returns_a_copy() -> None:
    sd = SessionDescription.parse(YEALINK_OFFER)
    stamped = leg(sess_id=3).stamp(sd)
    assert stamped.origin.sess_id == "3"
    assert sd.origin.sess_id == "20010"


def test_media_changed_ignores_the_version() -> None:
    offer = SessionDescription.parse(YEALINK_OFFER)
    bumped = SessionDescription.parse(YEALINK_OFFER.replace(b"20010 20010", b"20010 20012"))
    moved = SessionDescription.parse(YEALINK_OFFER.replace(b"11780", b"11782"))
    assert media_changed(None, offer)
    assert not media_changed(offer, bumped)
    assert media_changed(offer, moved)
    assert media_changed(offer, SessionDescription.parse(YEALINK_HOLD))


# ---------------------------------------------------------------------------
# Restricting codecs (transcoding decisions).


def test_filter_codecs_keeps_only_the_chosen_formats_and_their_lines() -> None:
    md = SessionDescription.parse(YEALINK_OFFER).media[0]
    keep = [c for c in md.codecs if c.name in ("PCMU", "telephone-event")]
    out = filter_codecs(md, keep)
    assert out.formats == ["0", "101"]
    assert out.attributes == [
        ("rtpmap", "0 PCMU/8000"),
        ("fmtp", "101 0-15"),
        ("rtpmap", "101 telephone-event/8000"),
        ("ptime", "20"),
        ("sendrecv", None),
    ]
    assert out.codecs == keep


def test_filter_codecs_adds_a_transcodable_alternative() -> None:
    caller = SessionDescription.parse(
        _session(
            "c=IN IP4 192.0.2.5",
            "m=audio 4000 RTP/AVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=sendrecv",
        )
    )
    md = caller.media[0]
    pcmu, te = md.codecs
    assert codec_names(md) == ["PCMU/8000", "telephone-event/8000"]
    out = filter_codecs(md, [pcmu, Codec(8, "PCMA", 8000), te])
    assert out.formats == ["0", "8", "101"]
    assert out.attributes == [
        ("rtpmap", "0 PCMU/8000"),
        ("rtpmap", "101 telephone-event/8000"),
        ("fmtp", "101 0-16"),
        ("rtpmap", "8 PCMA/8000"),
        ("sendrecv", None),
    ]
    assert out.codecs == [pcmu, Codec(8, "PCMA", 8000), te]


def test_filter_codecs_renumbers_and_drops_rtcp_fb_of_removed_types() -> None:
    md = SessionDescription.parse(LINPHONE_OFFER).media[0]
    opus = md.codecs[0]
    out = filter_codecs(md, [Codec(111, opus.name, opus.rate, opus.channels, opus.fmtp)])
    assert out.formats == ["111"]
    assert out.codecs == [Codec(111, "opus", 48000, 2, "useinbandfec=1")]
    fb = [v for k, v in out.attributes if k == "rtcp-fb"]
    assert fb == ["* trr-int 1000"]


def test_filter_codecs_adds_no_rtpmap_for_an_unmapped_static_type() -> None:
    md = SessionDescription.parse(LINPHONE_OFFER).media[0]
    out = filter_codecs(md, [c for c in md.codecs if c.pt in (0, 8)])
    assert [k for k, _ in out.attributes if k in ("rtpmap", "fmtp")] == []
    assert out.codecs == [Codec(0, "PCMU", 8000), Codec(8, "PCMA", 8000)]


def test_filter_codecs_refuses_duplicate_payload_types() -> None:
    md = SessionDescription.parse(YEALINK_OFFER).media[0]
    with pytest.raises(ValueError, match="distinct"):
        filter_codecs(md, [Codec(0, "PCMU", 8000), Codec(0, "PCMA", 8000)])


def test_transcoding_offer_maps_payload_types_between_legs() -> None:
    """Caller offers PCMU + telephone-event 101; callee is offered PCMA too, renumbered."""
    caller = SessionDescription.parse(YEALINK_OFFER).media[0]
    pcmu = caller.codecs[0]
    te = caller.telephone_event
    assert te is not None
    callee_te = Codec(free_payload_type([pcmu, te]) or 0, te.name, te.rate, te.channels, te.fmtp)
    assert callee_te.pt == 96
    offered = filter_codecs(caller, [pcmu, Codec(8, "PCMA", 8000), callee_te])
    assert offered.formats == ["0", "8", "96"]
    assert map_payload_types(caller.codecs, offered.codecs) == {0: 0, 8: 8, 101: 96}
    assert map_payload_types([Codec(9, "G722", 8000)], offered.codecs) == {}


def test_free_payload_type_skips_used_dynamic_numbers() -> None:
    assert free_payload_type([]) == 96
    assert free_payload_type([96, 97, 0]) == 98
    assert free_payload_type(list(range(96, 128))) is None


def test_parse_refuses_non_bytes_as_a_programming_error() -> None:
    with pytest.raises(TypeError):
        SessionDescription.parse(5)  # type: ignore[arg-type]
    assert SessionDescription.parse(memoryview(YEALINK_OFFER)) == SessionDescription.parse(
        bytearray(YEALINK_OFFER)
    )
