"""Deterministic mutation fuzzing of the SDP parser and the offer/answer functions.

Whatever the bytes, ``SessionDescription.parse`` either returns a description
or raises ``SipError`` 400; whatever it returns, serialising, re-parsing,
answering and rewriting it for the relay raise nothing but ``SipError`` 488
(no acceptable stream) and produce descriptions that parse again.  The seed
is fixed, so a failure reproduces; the failing body is in the message.
"""

from __future__ import annotations

import random
import re
import time

from softswitch.sip.errors import SipError
from softswitch.sip.offeranswer import (
    LegOrigin,
    check_answer,
    codec_names,
    create_answer,
    filter_codecs,
    rewrite_for_relay,
)
from softswitch.sip.sdp import Codec, SessionDescription

from .test_sdp import DEVICE_OFFERS, TORTURE_SDP, sdp, torture_body

ITERATIONS = 100_000
SEED = 4566_3264

ICE_VIDEO_OFFER = sdp(
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=ice-options:trickle",
    "m=audio 9 RTP/AVP 111 0 8 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Zx1d",
    "a=ice-pwd:3wFj4kCvOa3nIFz5fUKk3n9t",
    "a=mid:0",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:126 telephone-event/8000",
    "a=candidate:842163049 1 udp 1677729535 198.51.100.4 61665 typ srflx",
    "a=end-of-candidates",
    "a=sendrecv",
    "m=video 9 RTP/AVP 96 97",
    "c=IN IP6 ::",
    "b=AS:2000",
    "a=rtpmap:96 VP8/90000",
    "a=rtpmap:97 rtx/90000",
    "a=fmtp:97 apt=96",
    "a=rtcp-fb:96 nack pli",
    "a=recvonly",
)

SEEDS = [*DEVICE_OFFERS.values(), ICE_VIDEO_OFFER, *(torture_body(n) for n in TORTURE_SDP)]

INTERESTING = [
    b"0",
    b"1",
    b"127",
    b"128",
    b"65535",
    b"65536",
    b"-1",
    b"1_0",
    b"\xd9\xa4",  # ARABIC-INDIC DIGIT FOUR: int() would take it
    b"99999999999999999999999999999999999999999",
    b"9" * 300,
    b"0.0.0.0",
    b"::",
    b"2001:db8::1",
    b"IP6",
    b"IP4",
    b"IN",
    b"RTP/SAVP",
    b"TCP/MSRP",
    b"*",
    b"/",
    b":",
    b"=",
    b" ",
    b"  ",
    b"\t",
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3\x28",  # invalid UTF-8 continuation
    b"\xed\xa0\x80",  # UTF-8-encoded surrogate
    b"\xe2\x80\xa8",  # LINE SEPARATOR
    b"\xc2\x85",  # NEXT LINE
    b"v=0\r\n",
    b"o=- 1 1 IN IP4 192.0.2.1\r\n",
    b"m=audio 0 RTP/AVP 0\r\n",
    b"m=video 4000/2 RTP/AVP 31\r\n",
    b"c=IN IP4 0.0.0.0\r\n",
    b"c=IN IP6 ::\r\n",
    b"a=sendonly\r\n",
    b"a=inactive\r\n",
    b"a=recvonly\r\n",
    b"a=rtcp:",
    b"a=rtcp:4001 IN IP4\r\n",
    b"a=rtpmap:",
    b"a=rtpmap:96 opus/48000/2\r\n",
    b"a=rtpmap:0 PCMA/8000\r\n",
    b"a=fmtp:",
    b"a=fmtp:101 0-16\r\n",
    b"a=ptime:",
    b"a=ptime:20.5\r\n",
    b"telephone-event/8000",
    b"a=candidate:1 1 UDP 1 192.0.2.9 9 typ host\r\n",
    b"r=7d 1h 0 25h\r\n",
    b"t=0 0\r\n",
    b"b=AS:",
]

_NUMBER = re.compile(rb"[0-9]+")


def _lines(body: bytes) -> list[bytes]:
    return body.split(b"\n")


def mutate(rng: random.Random, body: bytes) -> bytes:
    """Apply one to four random mutations (byte-, line- and token-level), mostly one."""
    data = bytearray(body)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.randrange(12)
        size = len(data)
        at = rng.randrange(size + 1)
        if op == 0 and size:  # flip a bit
            data[at % size] ^= 1 << rng.randrange(8)
        elif op == 1 and size:  # overwrite a byte with anything
            data[at % size] = rng.randrange(256)
        elif op == 2:  # insert an interesting token
            data[at:at] = rng.choice(INTERESTING)
        elif op == 3:  # delete a span
            del data[at : at + rng.randint(1, 16)]
        elif op == 4:  # truncate
            del data[at:]
        elif op in (5, 6, 7, 8):  # line-level: duplicate, swap, remove, splice from a seed
            lines = _lines(bytes(data))
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op == 5:
                lines.insert(j, lines[i])
            elif op == 6:
                lines[i], lines[j] = lines[j], lines[i]
            elif op == 7 and len(lines) > 1:
                del lines[i]
            else:
                lines.insert(j, rng.choice(_lines(rng.choice(SEEDS))))
            data = bytearray(b"\n".join(lines))
        elif op == 9:  # a number becomes huge, zero, negative or out of range
            numbers = list(_NUMBER.finditer(data))
            if numbers:
                m = rng.choice(numbers)
                data[m.start() : m.end()] = rng.choice(
                    [b"0", b"128", b"65536", b"-5", b"9" * rng.randint(10, 60), b"", b"1.5"]
                )
        elif op == 10:  # non-UTF-8 bytes
            data[at:at] = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randint(1, 4)))
        elif op == 11:  # whole-token replacement
            tokens = re.split(rb"( |\r\n|\n|:|/)", bytes(data))
            k = rng.randrange(len(tokens))
            tokens[k] = rng.choice(INTERESTING)
            data = bytearray(b"".join(tokens))
    return bytes(data)


SUPPORTED = ["PCMU", "PCMA", "G722/8000", "opus/48000/2", "telephone-event", "H263-1998"]


def exercise(body: bytes, deep: bool = True) -> bool:
    """Run one body through everything; True if it parsed.  Only SipError may escape.

    ``deep`` also re-parses every description we produce and compares: the
    costly half, so the long run does it for one parsed body in eight.
    """
    try:
        sd = SessionDescription.parse(body)
    except SipError as error:
        assert error.status == 400, error
        assert error.reason.isascii() and error.reason.isprintable(), error.reason
        return False
    wire = bytes(sd)
    if deep:
        again = SessionDescription.parse(wire)  # our own output must always parse...
        assert bytes(again) == wire  # ...to the same thing
    ports = [20000 + 2 * i for i in range(len(sd.media))]
    for md in sd.media:
        md.direction, md.is_hold, md.ptime, md.rtcp  # noqa: B018
        unique: dict[int, Codec] = {}
        for codec in md.codecs:
            unique.setdefault(codec.pt, codec)
        filtered = filter_codecs(md, [*unique.values()][::-1])
        if deep:
            assert md.telephone_event is None or md.telephone_event in md.codecs
            assert [c.pt for c in filtered.codecs] == [*unique][::-1]
            assert codec_names(filtered) == [c.encoding for c in [*unique.values()][::-1]]
    try:
        answer = create_answer(
            sd,
            address="192.0.2.200",
            ports=ports,
            supported=SUPPORTED,
            origin=LegOrigin("192.0.2.200", sess_id=1),
        )
    except SipError as error:
        assert error.status == 488, error
    else:
        check_answer(sd, answer)
        if deep:
            assert SessionDescription.parse(bytes(answer)) == answer
    relayed = rewrite_for_relay(
        sd, "2001:db8::200", ports, origin=LegOrigin("2001:db8::200", sess_id=2)
    )
    wire = bytes(relayed)
    if deep:
        assert SessionDescription.parse(wire) == relayed
        assert all(md.port == 0 or md.effective_address == "2001:db8::200" for md in relayed.media)
    return True


def test_seeds_all_parse() -> None:
    assert all(exercise(seed) for seed in SEEDS)


def test_100k_mutated_sdp_bodies_raise_nothing_but_sip_error() -> None:
    rng = random.Random(SEED)
    parsed = 0
    started = time.perf_counter()
    for iteration in range(ITERATIONS):
        body = mutate(rng, rng.choice(SEEDS))
        try:
            parsed += exercise(body, deep=parsed % 8 == 0)
        except SipError:
            raise
        except BaseException as error:
            raise AssertionError(
                f"iteration {iteration}: {type(error).__name__}: {error}\nbody={body!r}"
            ) from error
    elapsed = time.perf_counter() - started
    # Both outcomes must be well represented, or the mutations test nothing.
    assert ITERATIONS // 5 < parsed < ITERATIONS * 19 // 20, parsed
    print(f"{ITERATIONS} bodies, {parsed} parsed, {elapsed:.1f} s")
