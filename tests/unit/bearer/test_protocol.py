"""The private control protocol: wire format (softswitch.protocol) and its
reliability layer (softswitch.protocol.endpoint), driven on a fake clock."""

from __future__ import annotations

import os
import random
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softswitch.protocol import (
    HEADER,
    MAGIC,
    MAX_DATAGRAM,
    TAG_LEN,
    Allocate,
    Allocated,
    AllocFlags,
    Delete,
    Deleted,
    Direction,
    Dtmf,
    ErrorCode,
    ErrorReply,
    EventAck,
    Heartbeat,
    HeartbeatReply,
    Join,
    Joined,
    JoinFlags,
    KeyFileError,
    Latched,
    Leave,
    Left,
    LegSpec,
    LegStats,
    MediaTimeout,
    Message,
    MsgType,
    PayloadType,
    ProtocolError,
    Record,
    RecordingDone,
    RecordReply,
    Stats,
    StatsReply,
    Update,
    Updated,
    decode,
    encode,
    load_key,
    needs_transcoding,
)
from softswitch.protocol.endpoint import (
    EventReceived,
    EventSender,
    PeerDown,
    PeerLoad,
    PeerRestarted,
    PeerUp,
    ProtocolClient,
    ReplyCache,
    ReplyReceived,
    RequestReceived,
    RequestTimeout,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
BEARER = ("192.0.2.10", 7000)
CONTROL = ("192.0.2.1", 7100)

PCMU = PayloadType(0, "PCMU", 8000)
PCMA = PayloadType(8, "PCMA", 8000)
TE = PayloadType(101, "telephone-event", 8000)
OPUS = PayloadType(111, "opus", 48000, 2)

PHONE_A = LegSpec("198.51.100.7", 4000, (PCMU, PCMA, TE), 0, 101, Direction.SENDRECV, 20)
PHONE_B6 = LegSpec("2001:db8::42", 16384, (PCMA, OPUS), 8, None, Direction.RECVONLY, 30)

EVERY_MESSAGE: list[Message] = [
    Heartbeat(12, 1000, 37, 51234),
    HeartbeatReply(0xDEADBEEF_12345678, 12, 1000, 100, 0),
    Allocate(1, "a84b4c76e66710@pc33.atlanta.example.com", (PHONE_A, LegSpec())),
    Allocate(2**64 - 1, "", (PHONE_A, PHONE_B6), AllocFlags.RECORD | AllocFlags.REBUILD),
    Allocate(3, "x" * 255, (LegSpec("::", 0),), AllocFlags.CONFERENCE | AllocFlags.IPV6),
    Allocate(4, "Ünïcødé-☎-呼叫@例え.jp", (PHONE_B6, PHONE_A)),
    Allocated(1, "203.0.113.5", (30000, 30002)),
    Allocated(3, "2001:db8:1::5", (30004,)),
    Update(1, 1, PHONE_B6),
    Update(1, 0, LegSpec(extensions=((1, b"\x00srtp-key"), (200, b"")))),
    Updated(1),
    Delete(1),
    Deleted(1, (LegStats(1500, 258000, 1499, 257828, 3, 1250), LegStats())),
    Deleted(3),
    Record(1, True, "/var/spool/softswitch/recordings/2024/ünï.wav"),
    Record(1, False),
    RecordReply(1, True),
    Join("conf-1000@example.com", 3, 0, JoinFlags.MUTED),
    Joined("conf-1000@example.com", 3, 7),
    Leave("conf-1000@example.com", 3),
    Left("conf-1000@example.com", 3, 6),
    Stats(0),
    Stats(5),
    StatsReply(0, {"sessions": 12, "pps": 1234.5, "dropped.bad_hmac": 0}),
    StatsReply(7),
    MediaTimeout(1, 1),
    Dtmf(1, 0, "#", 160),
    Dtmf(1, 1, "D", 0),
    RecordingDone(1, "/var/spool/softswitch/recordings/1.wav", 62.34),
    Latched(1, 0, "198.51.100.7", 4002),
    Latched(1, 1, "2001:db8::42", 16384),
    EventAck(),
    ErrorReply(MsgType.ALLOCATE, ErrorCode.NO_CAPACITY, "1000 sessions"),
    ErrorReply(MsgType.UPDATE, ErrorCode.UNKNOWN_SESSION),
]


# --------------------------------------------------------------------------- wire format


@pytest.mark.parametrize("key", [None, KEY], ids=["unix", "udp+hmac"])
@pytest.mark.parametrize("message", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message, key: bytes | None) -> None:
    data = encode(message, 0xFEDCBA98, 0x0123456789ABCDEF, key)
    packet = decode(data, key)
    assert packet.message == message
    assert type(packet.message) is type(message)
    assert (packet.request_id, packet.epoch) == (0xFEDCBA98, 0x0123456789ABCDEF)
    assert packet.is_reply == message.REPLY
    assert encode(packet.message, packet.request_id, packet.epoch, key) == data


def test_header_is_the_documented_18_bytes_then_body_then_16_byte_tag() -> None:
    data = encode(Delete(5), 0x01020304, 0x1122334455667788, KEY)
    assert HEADER.size == 18
    assert data[:18] == MAGIC + bytes([1, MsgType.DELETE, 0x04, 0]) + bytes.fromhex(
        "010203041122334455667788"
    )
    assert data[18:-TAG_LEN] == struct.pack("!Q", 5)
    assert len(data) == 18 + 8 + 16
    reply = encode(ErrorReply(MsgType.DELETE, ErrorCode.UNKNOWN_SESSION, "gone"), 9, 1)
    assert reply[3:5] == bytes([MsgType.DELETE, 0x01 | 0x02])


def test_ipv6_addresses_come_back_in_canonical_form() -> None:
    data = encode(Allocated(1, "2001:DB8:0:0:0:0:0:1", (30000, 30002)), 1, 1)
    assert decode(data).message == Allocated(1, "2001:db8::1", (30000, 30002))


def test_events_share_one_type_and_carry_their_kind() -> None:
    assert decode(encode(Dtmf(1, 0, "5", 100), 1, 1)).msg_type == MsgType.EVENT
    assert decode(encode(MediaTimeout(1, 0), 1, 1)).msg_type == MsgType.EVENT


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="limit is 255"):
        encode(Allocate(1, "é" * 128, (LegSpec(),)), 1, 1)
    with pytest.raises(ValueError, match="1 or 2 legs"):
        encode(Allocate(1, "", ()), 1, 1)
    with pytest.raises(ValueError, match="leg 2 is neither 0 nor 1"):
        encode(Update(1, 2, LegSpec()), 1, 1)
    with pytest.raises(ValueError, match="not 7-bit"):
        encode(Update(1, 0, LegSpec(selected_pt=128)), 1, 1)
    with pytest.raises(ValueError, match="DTMF digit 'x'"):
        encode(Dtmf(1, 0, "x", 1), 1, 1)
    with pytest.raises(ValueError, match="cannot encode Heartbeat"):
        encode(Heartbeat(-1), 1, 1)


def test_a_single_leg_session_is_a_conference_participant_joined_later() -> None:
    alloc = decode(encode(Allocate(9, "c", (PHONE_A,), AllocFlags.CONFERENCE), 1, 1)).message
    assert isinstance(alloc, Allocate) and len(alloc.legs) == 1
    assert AllocFlags.CONFERENCE in alloc.flags
    reply = decode(encode(Allocated(9, "203.0.113.5", (30010,)), 1, 1)).message
    assert isinstance(reply, Allocated) and reply.ports == (30010,)


def test_transcoding_is_implied_when_selected_codecs_differ() -> None:
    assert needs_transcoding(PHONE_A, PHONE_B6)  # PCMU vs PCMA
    same_codec_other_pt = LegSpec(payload_types=(PayloadType(96, "pcmu", 8000),), selected_pt=96)
    assert not needs_transcoding(PHONE_A, same_codec_other_pt)
    assert not needs_transcoding(PHONE_A, LegSpec())  # answer not known yet


def test_unknown_leg_extensions_are_kept_verbatim() -> None:
    spec = LegSpec(extensions=((42, b"future field"), (43, bytes(300))))
    packet = decode(encode(Update(1, 0, spec), 1, 1))
    assert packet.message == Update(1, 0, spec)


def test_long_error_text_is_cut_on_a_character_boundary() -> None:
    data = encode(ErrorReply(MsgType.RECORD, ErrorCode.INTERNAL, "disk full: " + "é" * 200), 1, 1)
    msg = decode(data).message
    assert isinstance(msg, ErrorReply) and msg.text == "disk full: " + "é" * 122


def test_unknown_error_request_type_is_kept_as_a_number() -> None:
    data = encode(ErrorReply(200, ErrorCode.BAD_REQUEST, "type 200"), 1, 1)
    assert decode(data).message == ErrorReply(200, ErrorCode.BAD_REQUEST, "type 200")


@settings(max_examples=150, deadline=None)
@given(
    session_id=st.integers(0, 2**64 - 1),
    call_ref=st.text(max_size=60),
    port=st.integers(0, 65535),
    pts=st.lists(
        st.builds(
            PayloadType,
            st.integers(0, 127),
            st.text(max_size=20),
            st.integers(0, 2**32 - 1),
            st.integers(0, 255),
        ),
        max_size=6,
    ),
    selected=st.none() | st.integers(0, 127),
    direction=st.sampled_from(Direction),
    v6=st.booleans(),
)
def test_any_allocate_round_trips(
    session_id: int,
    call_ref: str,
    port: int,
    pts: list[PayloadType],
    selected: int | None,
    direction: Direction,
    v6: bool,
) -> None:
    address = "2001:db8::9" if v6 else "10.1.2.3"
    spec = LegSpec(address, port, tuple(pts), selected, None, direction, 20)
    msg = Allocate(session_id, call_ref, (spec, LegSpec()))
    assert decode(encode(msg, 1, 2, KEY), KEY).message == msg


# --------------------------------------------------------------------------- authentication


def reason_of(data: bytes, key: bytes | None) -> str:
    with pytest.raises(ProtocolError) as e:
        decode(data, key)
    return e.value.reason.value


def test_every_flipped_bit_is_refused_and_says_why() -> None:
    data = encode(Allocate(1, "call", (PHONE_A, PHONE_B6)), 77, 88, KEY)
    seen: Counter[str] = Counter()
    for byte in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[byte] ^= 1 << bit
            reason = reason_of(bytes(bad), KEY)
            if byte < 2:
                assert reason == "bad_magic"
            elif byte == 2:
                assert reason == "bad_version"
            elif byte == 4 and bit == 2:  # the TAGGED flag itself
                assert reason == "unauthenticated"
            else:
                assert reason == "bad_hmac"
            seen[reason] += 1
    assert seen["bad_hmac"] > 8 * (len(data) - 4)


def test_wrong_key_is_bad_hmac() -> None:
    assert reason_of(encode(Heartbeat(), 1, 1, OTHER_KEY), KEY) == "bad_hmac"


def test_keyed_receiver_refuses_untagged_datagrams() -> None:
    assert reason_of(encode(Delete(1), 1, 1), KEY) == "unauthenticated"


def test_stripping_the_tag_and_the_flag_does_not_pass() -> None:
    data = bytearray(encode(Delete(1), 1, 1, KEY)[:-TAG_LEN])
    data[4] &= ~0x04
    assert reason_of(bytes(data), KEY) == "unauthenticated"


def test_unkeyed_receiver_refuses_tagged_datagrams_as_misconfiguration() -> None:
    assert reason_of(encode(Delete(1), 1, 1, KEY), None) == "unexpected_tag"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (MAGIC + b"\x01\x04", "short"),
        (b"\x00" * (MAX_DATAGRAM + 1), "too_long"),
        (b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n", "bad_magic"),
        (MAGIC + bytes([2, 4, 0, 0]) + bytes(12) + struct.pack("!Q", 1), "bad_version"),
        (MAGIC + bytes([1, 99, 0, 0]) + bytes(12), "unknown_type"),
        (MAGIC + bytes([1, MsgType.DELETE, 0, 0]) + bytes(12) + bytes(9), "bad_body"),
        (MAGIC + bytes([1, MsgType.DELETE, 0, 0]) + bytes(12) + bytes(7), "bad_body"),
        (MAGIC + bytes([1, MsgType.EVENT, 0, 0]) + bytes(12) + b"\x63", "unknown_type"),
        (MAGIC + bytes([1, MsgType.STATS, 1, 0]) + bytes(20) + b"[1]", "bad_body"),
        (MAGIC + bytes([1, MsgType.STATS, 1, 0]) + bytes(20) + b"[" * 5000, "bad_body"),
        (MAGIC + bytes([1, MsgType.DELETE, 2, 0]) + bytes(12) + b"\x04\x00", "bad_body"),
    ],
)
def test_malformed_datagrams_have_a_counter_name(data: bytes, reason: str) -> None:
    assert reason_of(data, None) == reason


def test_authentic_header_with_a_bad_body_is_kept_for_an_error_reply() -> None:
    data = encode(Delete(1), 4242, 1, KEY)
    body_truncated = data[: -TAG_LEN - 1]
    retagged = encode(Delete(1), 4242, 1, None)[:-1]  # same, unkeyed
    with pytest.raises(ProtocolError) as e:
        decode(retagged, None)
    assert e.value.reason.value == "bad_body"
    assert e.value.header is not None and e.value.header.request_id == 4242
    with pytest.raises(ProtocolError) as e:
        decode(body_truncated, KEY)
    assert e.value.header is None  # not authentic: nothing to answer


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(7)
    if op == 0:  # flip a few bits
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b)) :]
    elif op == 2:  # insert random bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 8))
    elif op == 3:  # overwrite a run with one value (lengths of 0, 255 ...)
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 4)] = bytes([rng.choice((0, 1, 2, 127, 128, 255))]) * 4
    elif op == 4:  # delete a run
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 6)]
    elif op == 5:  # keep the header, random body
        b = b[:18] + bytearray(rng.randbytes(rng.randint(0, 80)))
    else:  # pure garbage, sometimes with our magic
        b = bytearray(rng.randbytes(rng.randint(0, 64)))
        if rng.random() < 0.5 and len(b) >= 3:
            b[0:3] = MAGIC + b"\x01"
    return bytes(b)


def test_fifty_thousand_mutated_datagrams_raise_only_protocol_error() -> None:
    rng = random.Random(20240607)
    seeds: list[tuple[bytes, bytes | None]] = [(encode(m, 1, 2), None) for m in EVERY_MESSAGE]
    seeds += [(encode(m, 1, 2, KEY), KEY) for m in EVERY_MESSAGE[:6]]
    reasons: Counter[str] = Counter()
    for _ in range(50_000):
        data, key = rng.choice(seeds)
        bad = mutate(rng, data)
        try:
            packet = decode(bad, key)
        except ProtocolError as e:
            reasons[e.reason.value] += 1
        else:
            reasons["decoded"] += 1
            encode(packet.message, packet.request_id, packet.epoch, key)  # still encodable
    assert sum(reasons.values()) == 50_000
    # the fuzz reached the body decoders, not just the header checks
    assert reasons["bad_body"] > 5_000
    assert reasons["decoded"] > 1_000
    assert reasons["bad_hmac"] > 1_000


# --------------------------------------------------------------------------- key file


def test_load_key_reads_hex_as_written_at_install(tmp_path) -> None:
    path = tmp_path / "control.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o640)
    assert load_key(path) == KEY


def test_load_key_reads_a_raw_binary_key(tmp_path) -> None:
    path = tmp_path / "control.key"
    path.write_bytes(b"\xff" * 32)
    path.chmod(0o600)
    assert load_key(path) == b"\xff" * 32


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (None, 0o640, "cannot read the control key"),
        ("abcd\n", 0o640, "is 2 bytes; at least 16"),
        (KEY.hex(), 0o644, "accessible to every user (mode 0644)"),
    ],
)
def test_load_key_refusals_name_the_file(tmp_path, content, mode, message) -> None:
    path = tmp_path / "control.key"
    if content is not None:
        path.write_text(content)
        os.chmod(path, mode)
    with pytest.raises(KeyFileError) as e:
        load_key(path)
    assert str(path) in str(e.value) and message in str(e.value)


# --------------------------------------------------------------------------- reply cache


def test_reply_cache_repeats_identical_bytes_and_runs_the_handler_once() -> None:
    cache = ReplyCache(ttl=32.0)
    runs = []

    def handler(packet):
        runs.append(packet.request_id)
        return encode(Allocated(1, "203.0.113.5", (30000 + len(runs), 30002)), 7, 99)

    request = decode(encode(Allocate(1, "c", (PHONE_A, LegSpec())), 7, 5))
    first, ran1 = cache.handle(CONTROL, request, 0.0, handler)
    again, ran2 = cache.handle(CONTROL, request, 1.0, handler)
    assert (ran1, ran2) == (True, False)
    assert again == first and runs == [7]
    # the same request id from a restarted control (new epoch) is a new request
    restarted = decode(encode(Allocate(1, "c", (PHONE_A, LegSpec())), 7, 6))
    assert cache.handle(CONTROL, restarted, 2.0, handler)[1] is True
    # forgotten after ttl
    assert cache.get(CONTROL, 5, 7, 31.9) == first
    assert cache.get(CONTROL, 5, 7, 32.0) is None


def test_reply_cache_is_bounded() -> None:
    cache = ReplyCache(ttl=32.0, max_entries=100)
    for i in range(1000):
        cache.put(CONTROL, 1, i, b"r%d" % i, float(i) / 1000)
    assert len(cache) == 100
    assert cache.get(CONTROL, 1, 999, 1.0) == b"r999"
    assert cache.get(CONTROL, 1, 0, 1.0) is None


# --------------------------------------------------------------------------- client on a fake clock


def test_client_retransmits_on_the_exact_schedule_then_times_out() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    rid = client.request(Delete(5), BEARER, 0.0)
    [(first, peer)] = client.datagrams_to_send()
    assert peer == BEARER and decode(first, KEY).request_id == rid
    fired = []
    for _ in range(20):  # bounded; the loop ends on the timeout
        t = client.get_timer()
        if t is None:
            break
        events = client.handle_timer(t)
        sent = client.datagrams_to_send()
        assert all(d == first for d, _ in sent)  # same bytes, same request id
        fired.append((round(t, 9), len(sent), [type(e).__name__ for e in events]))
    assert fired == [
        (0.02, 1, []),
        (0.06, 1, []),
        (0.14, 1, []),
        (0.30, 1, []),
        (0.62, 1, []),
        (1.26, 1, []),
        (2.0, 0, ["RequestTimeout"]),
    ]
    assert client.get_timer() is None
    assert client.counters["retransmitted"] == 6


def test_client_stops_retransmitting_when_the_reply_arrives() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    rid = client.request(Delete(5), BEARER, 0.0)
    client.datagrams_to_send()
    client.handle_timer(0.02)
    client.handle_timer(0.06)
    assert len(client.datagrams_to_send()) == 2
    reply = encode(Deleted(5, (LegStats(10), LegStats(12))), rid, 500, KEY)
    events = client.receive(reply, BEARER, 0.07)
    assert events == [
        PeerUp(BEARER, 500),
        ReplyReceived(rid, BEARER, Deleted(5, (LegStats(10), LegStats(12)))),
    ]
    assert client.get_timer() is None
    assert client.handle_timer(5.0) == [] and client.datagrams_to_send() == []
    assert client.receive(reply, BEARER, 0.08) == []  # a late duplicate
    assert client.counters["late_reply"] == 1


def test_a_reply_from_the_wrong_peer_does_not_complete_a_request() -> None:
    client = ProtocolClient(None, epoch=1, now=0.0)
    rid = client.request(Delete(5), BEARER, 0.0)
    events = client.receive(encode(Deleted(5), rid, 9), ("192.0.2.99", 7000), 0.01)
    assert not any(isinstance(e, ReplyReceived) for e in events)
    assert client.pending() == 1


def test_peer_restarted_when_the_epoch_in_a_reply_changes() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    r1 = client.request(Stats(), BEARER, 0.0)
    client.receive(encode(StatsReply(0), r1, 1000, KEY), BEARER, 0.001)
    r2 = client.request(Stats(), BEARER, 1.0)
    events = client.receive(encode(StatsReply(0), r2, 2000, KEY), BEARER, 1.001)
    assert events[0] == PeerRestarted(BEARER, 1000, 2000)
    assert isinstance(events[1], ReplyReceived)
    assert client.peer_epoch(BEARER) == 2000


def answer_heartbeats(client: ProtocolClient, epoch: int, now: float) -> list:
    """A bearer that answers every heartbeat the client has queued."""
    events = []
    for data, peer in client.datagrams_to_send():
        packet = decode(data, KEY)
        assert isinstance(packet.message, Heartbeat)
        reply = HeartbeatReply(packet.epoch, 3, 500, 20, 300)
        events += client.receive(encode(reply, packet.request_id, epoch, KEY), peer, now)
    return events


def test_heartbeats_every_second_and_peer_down_after_three_missed() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    client.add_peer(BEARER, 0.0)
    assert client.get_timer() == 0.0
    assert client.handle_timer(0.0) == []
    events = answer_heartbeats(client, 500, 0.001)
    assert events == [PeerUp(BEARER, 500), PeerLoad(BEARER, 3, 500, 20, 300)]
    assert client.get_timer() == 1.0
    down_at = None
    for tick in range(1, 10):
        events = client.handle_timer(float(tick))
        assert len(client.datagrams_to_send()) == 1  # one heartbeat per second, unanswered
        if PeerDown(BEARER) in events:
            down_at = tick
            break
    assert down_at == 4  # heartbeats at 1, 2 and 3 s went unanswered
    assert client.handle_timer(5.0) == []  # reported once
    client.datagrams_to_send()
    assert client.handle_timer(6.0) == []
    events = answer_heartbeats(client, 500, 6.001)
    assert PeerUp(BEARER, 500) in events


def test_a_peer_never_heard_from_is_reported_down() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    client.add_peer(BEARER, 0.0)
    events = []
    for tick in range(4):
        events += client.handle_timer(float(tick))
    assert events == [PeerDown(BEARER)]


def test_peer_restarted_when_the_epoch_in_a_heartbeat_changes() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    client.add_peer(BEARER, 0.0)
    client.handle_timer(0.0)
    answer_heartbeats(client, 500, 0.001)
    client.handle_timer(1.0)
    events = answer_heartbeats(client, 501, 1.001)
    assert events[0] == PeerRestarted(BEARER, 500, 501)


def test_control_answers_a_bearer_heartbeat_echoing_both_epochs() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    events = client.receive(encode(Heartbeat(5, 500, 10, 100), 33, 700, KEY), BEARER, 0.0)
    assert events == [PeerUp(BEARER, 700), PeerLoad(BEARER, 5, 500, 10, 100)]
    [(data, peer)] = client.datagrams_to_send()
    packet = decode(data, KEY)
    assert peer == BEARER and packet.request_id == 33 and packet.epoch == 1
    assert isinstance(packet.message, HeartbeatReply) and packet.message.seen_epoch == 700


def test_control_refuses_requests_it_does_not_serve() -> None:
    client = ProtocolClient(None, epoch=1, now=0.0)
    client.receive(encode(Delete(1), 3, 700), BEARER, 0.0)
    [(data, _)] = client.datagrams_to_send()
    msg = decode(data).message
    assert msg == ErrorReply(MsgType.DELETE, ErrorCode.BAD_REQUEST, "Delete is not served here")


# --------------------------------------------------------------------------- events, bearer side


def test_an_event_is_acked_and_a_retransmitted_event_acked_again_but_reported_once() -> None:
    bearer = EventSender(KEY, epoch=700, now=0.0)
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    rid = bearer.send_event(Dtmf(9, 0, "5", 120), CONTROL, 0.0)
    [(event, _)] = bearer.datagrams_to_send()
    bearer.handle_timer(0.02)  # the ack was lost: the bearer sends it again
    [(again, _)] = bearer.datagrams_to_send()
    assert again == event

    first = client.receive(event, BEARER, 0.001)
    assert first == [PeerUp(BEARER, 700), EventReceived(BEARER, rid, Dtmf(9, 0, "5", 120))]
    [(ack1, _)] = client.datagrams_to_send()
    assert client.receive(again, BEARER, 0.021) == []
    [(ack2, _)] = client.datagrams_to_send()
    assert ack1 == ack2 and isinstance(decode(ack1, KEY).message, EventAck)
    assert client.counters["duplicate_event"] == 1

    events = bearer.receive(ack2, CONTROL, 0.022)
    assert ReplyReceived(rid, CONTROL, EventAck()) in events
    assert bearer.pending() == 0 and bearer.get_timer() is None


def test_events_are_retransmitted_for_the_event_timeout() -> None:
    bearer = EventSender(None, epoch=700, now=0.0, event_timeout=30.0)
    bearer.send_event(MediaTimeout(9, 1), CONTROL, 0.0)
    t = bearer.get_timer()
    sends = 0
    timeout = None
    for _ in range(100):  # bounded
        if t is None:
            break
        for e in bearer.handle_timer(t):
            if isinstance(e, RequestTimeout):
                timeout = t
        sends += len(bearer.datagrams_to_send())
        t = bearer.get_timer()
    assert timeout == 30.0
    assert 30 < sends < 40  # 20 ms doubling to 1 s, then once a second


def test_bearer_hands_new_requests_up_once_and_repeats_its_reply() -> None:
    bearer = EventSender(KEY, epoch=700, now=0.0)
    request = encode(Allocate(1, "c", (PHONE_A, LegSpec())), 5, 1, KEY)
    [up, received] = bearer.receive(request, CONTROL, 0.0)
    assert up == PeerUp(CONTROL, 1) and isinstance(received, RequestReceived)
    assert bearer.receive(request, CONTROL, 0.01) == []  # in progress: dropped
    sent = bearer.reply(CONTROL, received.packet, Allocated(1, "203.0.113.5", (30000, 30002)), 0.0)
    assert bearer.datagrams_to_send() == [(sent, CONTROL)]
    assert bearer.receive(request, CONTROL, 0.03) == []
    assert bearer.datagrams_to_send() == [(sent, CONTROL)]  # identical bytes


def test_a_datagram_under_another_key_gets_an_empty_rate_limited_refusal() -> None:
    """A control holding another key learns that the bearer is there (it cannot
    verify the answer either), and nothing else; a flood gets one answer per
    second per source, never more bytes than it sent, and replies get none."""
    bearer = EventSender(KEY, epoch=700, now=0.0)
    other = b"o" * 32
    hb = encode(Heartbeat(0, 0, 0, 0), 5, 1, other)
    for t in (0.0, 0.1, 0.5):
        with pytest.raises(ProtocolError, match="bad_hmac"):
            bearer.receive(hb, CONTROL, t)
    [(data, peer)] = bearer.datagrams_to_send()  # one, however many came
    assert peer == CONTROL and len(data) <= len(hb)
    with pytest.raises(ProtocolError, match="bad_hmac"):
        decode(data, other)  # control cannot verify it: "wrong key?"
    packet = decode(data, KEY)
    assert packet.request_id == 0 and packet.epoch == 700
    assert packet.message == ErrorReply(MsgType.HEARTBEAT, ErrorCode.BAD_REQUEST, "")
    with pytest.raises(ProtocolError):
        bearer.receive(hb, CONTROL, 1.0)  # a second later: once more
    assert len(bearer.datagrams_to_send()) == 1
    assert bearer.counters["auth_refused"] == 2
    assert bearer.counters["auth_refusal_limited"] == 2
    # Never to a datagram flagged as a reply, or shorter than the refusal.
    reply = encode(HeartbeatReply(1, 0, 0, 0, 0), 6, 1, other)
    short = bytearray(hb[: HEADER.size] + b"x" * TAG_LEN)
    short[4] |= 0x04
    for t, data in ((5.0, reply), (7.0, bytes(short))):
        with pytest.raises(ProtocolError, match="bad_hmac"):
            bearer.receive(data, CONTROL, t)
    assert bearer.datagrams_to_send() == []
    # Spoofed sources: at most REFUSALS_PER_SECOND answers a second in all.
    for i in range(100):
        with pytest.raises(ProtocolError):
            bearer.receive(hb, ("198.51.100.7", 1000 + i), 10.5)
    assert len(bearer.datagrams_to_send()) == EventSender.REFUSALS_PER_SECOND
    # An untagged datagram, and a bearer without a key, are never answered.
    with pytest.raises(ProtocolError, match="unauthenticated"):
        bearer.receive(encode(Heartbeat(0, 0, 0, 0), 7, 1), CONTROL, 20.0)
    unkeyed = EventSender(None, epoch=700, now=0.0)
    with pytest.raises(ProtocolError):
        unkeyed.receive(hb, CONTROL, 0.0)
    assert bearer.datagrams_to_send() == [] and unkeyed.datagrams_to_send() == []


def test_control_never_answers_a_datagram_it_cannot_verify() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    with pytest.raises(ProtocolError, match="bad_hmac"):
        client.receive(encode(Heartbeat(0, 0, 0, 0), 5, 700, b"o" * 32), BEARER, 0.0)
    assert client.datagrams_to_send() == []


def test_an_authentic_request_with_a_bad_body_is_answered_bad_request() -> None:
    bearer = EventSender(None, epoch=700, now=0.0)
    with pytest.raises(ProtocolError):
        bearer.receive(encode(Delete(1), 5, 1) + b"\x00", CONTROL, 0.0)
    [(data, peer)] = bearer.datagrams_to_send()
    msg = decode(data).message
    assert peer == CONTROL and isinstance(msg, ErrorReply)
    assert (msg.request_type, msg.code) == (MsgType.DELETE, ErrorCode.BAD_REQUEST)


# --------------------------------------------------------------------------- lossy wire


class LossyWire:
    """Carries datagrams between a client and a server loop, dropping some."""

    def __init__(self, drop: set[int] | None = None, loss: float = 0.0, seed: int = 1) -> None:
        self.drop = drop or set()
        self.loss = loss
        self.rng = random.Random(seed)
        self.count = 0

    def passes(self) -> bool:
        self.count += 1
        if self.count in self.drop:
            return False
        return self.rng.random() >= self.loss


class AllocatingServer:
    """A minimal bearer: answers ALLOCATE through a ReplyCache."""

    def __init__(self) -> None:
        self.cache = ReplyCache()
        self.allocations: Counter[int] = Counter()

    def serve(self, data: bytes, peer, now: float) -> bytes:
        packet = decode(data, KEY)

        def handler(p):
            self.allocations[p.message.session_id] += 1
            port = 30000 + 2 * len(self.allocations)
            reply = Allocated(p.message.session_id, "203.0.113.5", (port, port + 2))
            return encode(reply, p.request_id, 900, KEY)

        return self.cache.handle(peer, packet, now, handler)[0]


def run(client: ProtocolClient, server: AllocatingServer, up: LossyWire, down: LossyWire):
    """Drive both ends on a fake clock until nothing is pending."""
    now = 0.0
    replies, timeouts = {}, []
    for _ in range(100_000):  # bounded
        for data, peer in client.datagrams_to_send():
            if up.passes():
                reply = server.serve(data, CONTROL, now + 0.0005)
                if down.passes():
                    for e in client.receive(reply, peer, now + 0.001):
                        if isinstance(e, ReplyReceived):
                            replies[e.request_id] = e.message
        t = client.get_timer()
        if t is None:
            break
        now = t
        timeouts += [e for e in client.handle_timer(now) if isinstance(e, RequestTimeout)]
    return replies, timeouts, now


def test_allocate_completes_over_a_wire_that_drops_the_first_datagrams() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    server = AllocatingServer()
    rid = client.request(Allocate(77, "c", (PHONE_A, LegSpec())), BEARER, 0.0)
    # the request is lost once, then the reply is lost twice
    replies, timeouts, now = run(client, server, LossyWire(drop={1}), LossyWire(drop={1, 2}))
    assert timeouts == []
    assert replies == {rid: Allocated(77, "203.0.113.5", (30002, 30004))}
    assert server.allocations == {77: 1}  # allocated exactly once
    assert client.counters["retransmitted"] == 3
    assert now == pytest.approx(0.14)


def test_two_hundred_allocations_over_a_lossy_wire_each_allocate_once() -> None:
    client = ProtocolClient(KEY, epoch=1, now=0.0)
    server = AllocatingServer()
    rids = {
        client.request(Allocate(s, f"call-{s}", (PHONE_A, LegSpec())), BEARER, 0.0): s
        for s in range(1, 201)
    }
    replies, timeouts, _ = run(
        client, server, LossyWire(loss=0.2, seed=7), LossyWire(loss=0.2, seed=8)
    )
    assert len(replies) + len(timeouts) == 200
    assert len(replies) >= 195
    assert all(replies[r].session_id == s for r, s in rids.items() if r in replies)
    assert set(server.allocations.values()) == {1}
