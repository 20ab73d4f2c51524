"""StreamFramer: cutting a TCP byte stream into SIP messages (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

import random

import pytest

from softswitch.sip.errors import SipError
from softswitch.sip.framing import KEEPALIVE, MAX_MESSAGE_SIZE, StreamFramer
from softswitch.sip.message import parse


def message(n: int, body: bytes = b"", *, length_header: str = "Content-Length") -> bytes:
    head = (
        f"OPTIONS sip:bob@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{n}\r\n"
        f"To: <sip:bob@h>\r\nFrom: <sip:a@h>;tag={n}\r\nCall-ID: c{n}\r\nCSeq: {n} OPTIONS\r\n"
        f"{length_header}: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


MESSAGES = [
    message(1),
    message(2, b"hello\r\n\r\nworld"),
    message(3, b"\r\n\r\n"),
    message(4, b"x", length_header="l"),
]


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for c in chunks:
        out.extend(framer.feed(c))
    return out


def test_whole_messages_back_to_back() -> None:
    stream = b"".join(MESSAGES)
    assert StreamFramer().feed(stream) == MESSAGES


def test_every_single_split_point() -> None:
    stream = b"".join(MESSAGES)
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        assert feed_all(framer, [stream[:cut], stream[cut:]]) == MESSAGES, cut
        assert framer.buffered == 0


def test_random_chunking_with_keepalives_between_messages() -> None:
    rng = random.Random(5626)
    for _ in range(200):
        parts: list[bytes] = []
        expected: list[bytes] = []
        for m in MESSAGES:
            if rng.random() < 0.5:
                parts.append(KEEPALIVE)
                expected.append(KEEPALIVE)
            parts.append(m)
            expected.append(m)
        stream = b"".join(parts)
        chunks = []
        i = 0
        while i < len(stream):
            n = rng.randint(1, 40)
            chunks.append(stream[i : i + n])
            i += n
        assert feed_all(StreamFramer(), chunks) == expected
    for m in MESSAGES:
        parse(m, stream=True)


def test_keepalive_ping_reported_and_lone_crlf_skipped() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [KEEPALIVE]
    assert framer.feed(b"\r\n") == []  # maybe the start of a ping: wait
    assert framer.feed(b"\r\n") == [KEEPALIVE]
    assert framer.feed(b"\r\n") == []
    assert framer.feed(MESSAGES[0]) == [MESSAGES[0]]  # that CRLF was a pong / stray
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n\r\n") == [KEEPALIVE]
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [KEEPALIVE, KEEPALIVE]
    assert framer.buffered == 0


def test_waits_for_the_body() -> None:
    framer = StreamFramer()
    m = MESSAGES[1]
    assert framer.feed(m[:-3]) == []
    assert framer.buffered == len(m) - 3
    assert framer.feed(m[-3:]) == [m]


@pytest.mark.parametrize(
    ("length_lines", "reason"),
    [
        ("", "Missing Content-Length header"),
        ("Content-Length: -999\r\n", "Bad Content-Length header"),
        ("Content-Length: five\r\n", "Bad Content-Length header"),
        ("Content-Length: 1 2\r\n", "Bad Content-Length header"),
        ("Content-Length: 13\r\nContent-Length: 5\r\n", "Multiple Content-Length headers"),
        ("l: 1\r\nContent-Length: 2\r\n", "Multiple Content-Length headers"),
    ],
)
def test_unrecoverable_framing_raises_and_stays_broken(length_lines: str, reason: str) -> None:
    data = (
        b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n" + length_lines.encode() + b"\r\nabcde"
    )
    framer = StreamFramer()
    with pytest.raises(SipError) as exc:
        framer.feed(data)
    assert (exc.value.status, exc.value.reason) == (400, reason)
    with pytest.raises(SipError):
        framer.feed(MESSAGES[0])


def test_equal_duplicate_content_lengths_frame() -> None:
    data = MESSAGES[0].replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 00\r\n")
    # "0" and "00" differ as text: refused, as a conflicting pair would be.
    with pytest.raises(SipError):
        StreamFramer().feed(data)
    data = MESSAGES[0].replace(
        b"Content-Length: 0\r\n", b"Content-Length: 0\r\nContent-Length: 0\r\n"
    )
    assert StreamFramer().feed(data) == [data]


def test_good_messages_before_a_bad_one_are_delivered_first() -> None:
    bad = b"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: -1\r\n\r\n"
    framer = StreamFramer()
    assert framer.feed(MESSAGES[0] + MESSAGES[1] + bad) == MESSAGES[:2]
    with pytest.raises(SipError):
        framer.feed(b"")


def test_bounded_buffer() -> None:
    framer = StreamFramer()
    with pytest.raises(SipError) as exc:
        for _ in range(100):  # a header section that never ends
            framer.feed(b"X-Junk: " + b"a" * 1000 + b"\r\n")
    assert exc.value.status == 513
    assert framer.buffered == 0
    framer = StreamFramer()
    too_long = f"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: {MAX_MESSAGE_SIZE}\r\n\r\n".encode()
    with pytest.raises(SipError) as exc:
        framer.feed(too_long)
    assert exc.value.status == 513


def test_byte_at_a_time() -> None:
    stream = KEEPALIVE + b"".join(MESSAGES)
    framer = StreamFramer()
    out = feed_all(framer, [stream[i : i + 1] for i in range(len(stream))])
    assert out == [KEEPALIVE, *MESSAGES]
