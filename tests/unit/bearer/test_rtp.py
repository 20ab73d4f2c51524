"""RTP headers, wrap-around arithmetic, receive statistics, RTCP and DTMF."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bearer.rtp import (
    Bye,
    DtmfDetector,
    ReceiverReport,
    ReceiveStats,
    ReportBlock,
    SenderReport,
    build_rtp,
    extend_seq,
    is_rtcp,
    ntp_short,
    parse_dtmf,
    parse_header,
    parse_rtcp,
    payload_end,
    rewrite_header,
    rtt_seconds,
    seq_delta,
    set_payload_type,
    ts_delta,
)

# ---------------------------------------------------------------- RTP header


class TestHeader:
    def test_build_then_parse_round_trips(self) -> None:
        pkt = build_rtp(8, 65535, 0xFFFFFFF0, 0xDEADBEEF, b"\xd5" * 160, marker=True)
        assert len(pkt) == 172
        assert parse_header(pkt, len(pkt)) == (8, 65535, 0xFFFFFFF0, 0xDEADBEEF, True, 12)

    def test_csrc_and_extension_are_skipped(self) -> None:
        # V=2, X=1, CC=2; two CSRCs; extension profile 0xBEDE with 1 word.
        head = struct.pack("!BBHII", 0x92, 0, 1, 2, 3) + b"\0" * 8
        ext = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\0\0"
        pkt = head + ext + b"PAYLOAD"
        assert parse_header(pkt, len(pkt))[5] == 12 + 8 + 8
        assert pkt[28:] == b"PAYLOAD"

    def test_padding_is_excluded_from_payload(self) -> None:
        pkt = bytearray(build_rtp(0, 1, 2, 3, b"abcd" + b"\0\0\0\4"))
        pkt[0] |= 0x20
        n = len(pkt)
        assert parse_header(pkt, n)[5] == 12
        assert pkt[12 : payload_end(pkt, n)] == b"abcd"

    def test_only_n_bytes_of_a_larger_receive_buffer_count(self) -> None:
        buf = bytearray(2048)
        pkt = build_rtp(0, 7, 160, 9, b"x" * 20)
        buf[: len(pkt)] = pkt
        assert parse_header(memoryview(buf), len(pkt))[:2] == (0, 7)
        assert payload_end(buf, len(pkt)) == 32

    @pytest.mark.parametrize(
        ("packet", "message"),
        [
            (b"\x80\x00\x00", "RTP packet too short: 3 bytes, header needs 12"),
            (b"\x40" + b"\0" * 11, "RTP version 1, expected 2"),
            (b"\x83" + b"\0" * 15, "RTP header is 24 bytes but packet is 16"),
            (b"\x90" + b"\0" * 13, "RTP header extension truncated: 14 bytes"),
            (b"\x90" + b"\0" * 13 + b"\0\2" + b"\0" * 4, "RTP header is 24 bytes but packet is 20"),
            (b"\xa0" + b"\0" * 11 + b"ab\0", "RTP padding of 0 bytes invalid in 15-byte packet"),
            (b"\xa0" + b"\0" * 11 + b"ab\x09", "RTP padding of 9 bytes invalid in 15-byte packet"),
        ],
    )
    def test_malformed_headers_are_rejected_precisely(self, packet: bytes, message: str) -> None:
        with pytest.raises(ValueError) as info:
            parse_header(packet, len(packet))
        assert str(info.value) == message

    @given(st.binary(max_size=64))
    def test_arbitrary_bytes_parse_or_raise_value_error(self, data: bytes) -> None:
        try:
            pt, _seq, _ts, _ssrc, _marker, header_len = parse_header(data, len(data))
        except ValueError:
            return
        assert 0 <= pt < 128
        assert 12 <= header_len <= payload_end(data, len(data)) <= len(data)

    def test_set_payload_type_keeps_marker_bit(self) -> None:
        pkt = bytearray(build_rtp(0, 1, 2, 3, b"", marker=True))
        set_payload_type(pkt, 8)
        assert parse_header(pkt, len(pkt))[0] == 8
        assert parse_header(pkt, len(pkt))[4] is True
        pkt2 = bytearray(build_rtp(101, 1, 2, 3, b""))
        set_payload_type(memoryview(pkt2), 96)
        assert parse_header(pkt2, 12)[:5] == (96, 1, 2, 3, False)

    def test_rewrite_header_sets_own_stream_identity(self) -> None:
        pkt = bytearray(build_rtp(0, 1, 2, 3, b"zz", marker=True))
        rewrite_header(pkt, 70000, 2**32 + 5, 0xCAFE)
        assert parse_header(pkt, len(pkt)) == (0, 70000 - 65536, 5, 0xCAFE, True, 12)
        assert pkt[12:] == b"zz"

    def test_rtcp_demultiplexing_by_second_byte(self) -> None:
        assert is_rtcp(bytes(ReceiverReport(1)))
        assert not is_rtcp(build_rtp(0, 1, 2, 3, b""))
        assert not is_rtcp(build_rtp(0, 1, 2, 3, b"", marker=True))
        assert not is_rtcp(b"\x80")


# ------------------------------------------------------ wrap-around arithmetic


class TestWrapAround:
    def test_seq_delta_across_the_wrap(self) -> None:
        assert seq_delta(0, 65535) == 1
        assert seq_delta(65535, 0) == -1
        assert seq_delta(5, 5) == 0
        assert seq_delta(32767, 0) == 32767
        assert seq_delta(32768, 0) == -32768

    def test_ts_delta_across_the_wrap(self) -> None:
        assert ts_delta(80, 0xFFFFFFB0) == 160
        assert ts_delta(0xFFFFFFB0, 80) == -160

    def test_extend_seq_follows_cycles_both_ways(self) -> None:
        assert extend_seq(2, 65534) == 65538
        assert extend_seq(65534, 65538) == 65534
        assert extend_seq(100, 3 * 65536 + 90) == 3 * 65536 + 100

    @given(st.integers(0, 2**40), st.integers(-32768, 32767))
    def test_extend_seq_inverts_any_offset_within_half_range(self, ref: int, off: int) -> None:
        target = ref + off
        assert extend_seq(target & 0xFFFF, ref) == target
        assert seq_delta(target & 0xFFFF, ref & 0xFFFF) == off


# ------------------------------------------------------ receive statistics


def feed(stats: ReceiveStats, seqs: list[int], start_ts: int = 0, t0: float = 100.0) -> None:
    """Packets sent every 20 ms (160 ts units); arrival on time."""
    for seq in seqs:
        n = seq_delta(seq & 0xFFFF, seqs[0] & 0xFFFF)
        stats.update(seq & 0xFFFF, (start_ts + 160 * n) & 0xFFFFFFFF, t0 + 0.02 * n)


class TestReceiveStats:
    def test_source_is_on_probation_until_two_sequential_packets(self) -> None:
        s = ReceiveStats()
        assert s.update(1000, 0, 0.0) is False
        assert s.update(1001, 160, 0.02) is True
        assert s.update(1002, 320, 0.04) is True
        assert (s.received, s.expected, s.lost) == (2, 2, 0)

    def test_loss_and_extended_seq_across_wrap(self) -> None:
        s = ReceiveStats()
        seqs = [65530 + i for i in range(20) if i not in (8, 9, 15)]  # 3 lost
        feed(s, seqs)
        assert s.extended_max == 65536 + (65530 + 19 - 65536)
        assert s.cycles == 65536
        assert s.expected == 19  # first packet went to probation
        assert s.lost == 3

    def test_report_fraction_is_per_interval(self) -> None:
        s = ReceiveStats()
        feed(s, [10 + i for i in range(11)])  # 10 counted, 0 lost
        assert s.report()[:2] == (0, 0)
        feed(s, [21 + i for i in range(10) if i % 2 == 0], t0=100.22)  # 5 of 9 expected... lost 4
        fraction, cumulative, highest, _jitter = s.report()
        assert cumulative == 4
        assert highest == 29
        assert fraction == (4 << 8) // 9

    def test_duplicates_make_lost_negative_and_fraction_zero(self) -> None:
        s = ReceiveStats()
        feed(s, [1, 2, 3, 3, 3])
        assert s.lost == -2
        assert s.report()[:2] == (0, -2)

    def test_very_large_jump_is_ignored_once_then_resyncs(self) -> None:
        s = ReceiveStats()
        feed(s, [100, 101, 102])
        assert s.update(40000, 9999, 1.0) is False
        assert s.max_seq == 102
        assert s.update(40001, 10159, 1.02) is True  # sequential: sender restarted
        assert (s.base_seq, s.received) == (40001, 1)

    def test_jitter_is_zero_for_perfectly_paced_packets(self) -> None:
        s = ReceiveStats()
        feed(s, list(range(50)), start_ts=0xFFFFFF00)  # timestamp wraps mid-stream
        assert s.jitter == pytest.approx(0.0, abs=1e-6)

    def test_jitter_converges_to_mean_absolute_transit_difference(self) -> None:
        s = ReceiveStats()
        # Arrivals alternate 0 and +5 ms late: |D| = 40 ts units every packet.
        for i in range(400):
            s.update(i, 160 * i, 0.02 * i + (0.005 if i % 2 else 0.0))
        assert s.jitter == pytest.approx(40.0, rel=0.01)
        assert s.jitter_ms == pytest.approx(5.0, rel=0.01)
        assert s.report()[3] in (39, 40)

    def test_cumulative_lost_is_clamped_to_24_bits(self) -> None:
        s = ReceiveStats()
        s.update(0, 0, 0.0)
        s.update(1, 160, 0.02)
        s.received = 1
        s.cycles = 65536 * 200  # pretend 13 M packets expected
        assert s.report()[1] == 0x7FFFFF


# ---------------------------------------------------------------------- RTCP


BLOCK = ReportBlock(0x1234, 25, -3, 70000, 88, 0xB7052000, 0x00054000)


class TestRtcp:
    def test_sr_rr_bye_compound_round_trip(self) -> None:
        sr = SenderReport(0xAAAA, 0xE000_0000, 0x8000_0000, 123456, 50, 8000, (BLOCK,))
        rr = ReceiverReport(0xBBBB, (BLOCK, BLOCK))
        bye = Bye((0xAAAA,), "hangup")
        sdes = struct.pack("!BBHI", 0x81, 202, 2, 0xAAAA) + b"\x01\x00\x00\x00"
        packets = parse_rtcp(bytes(sr) + bytes(rr) + sdes + bytes(bye))
        assert packets == [sr, rr, bye]

    def test_report_block_fields_including_negative_cumulative_loss(self) -> None:
        (rr,) = parse_rtcp(bytes(ReceiverReport(1, (BLOCK,))))
        assert isinstance(rr, ReceiverReport)
        block = rr.reports[0]
        assert (block.fraction_lost, block.cumulative_lost, block.highest_seq) == (25, -3, 70000)
        assert (block.jitter, block.lsr, block.dlsr) == (88, 0xB7052000, 0x00054000)

    def test_rtt_example_from_rfc3550_figure_2(self) -> None:
        # LSR 46853.125 s, DLSR 5.25 s, A 46864.500 s -> RTT 6.125 s.
        assert rtt_seconds(0xB7108000, 0xB7052000, 0x00054000) == 6.125
        assert BLOCK.rtt(0xB7108000) == 6.125

    def test_rtt_unknown_without_sr_or_with_skewed_clock(self) -> None:
        assert rtt_seconds(0xB7108000, 0, 0) is None
        assert rtt_seconds(0xB7000000, 0xB7052000, 0) is None

    def test_lsr_of_an_sr_is_the_middle_of_its_ntp_timestamp(self) -> None:
        sr = SenderReport(1, 0x12345678, 0x9ABCDEF0, 0, 0, 0)
        assert sr.lsr == 0x56789ABC

    def test_ntp_short_of_unix_time(self) -> None:
        assert ntp_short(0.0) == (2208988800 * 65536) & 0xFFFFFFFF
        assert (ntp_short(10.5) - ntp_short(10.0)) & 0xFFFFFFFF == 32768

    def test_rtt_end_to_end_with_ntp_short(self) -> None:
        sent = 1_700_000_000.0
        lsr = ntp_short(sent)
        dlsr = int(0.3 * 65536)
        assert rtt_seconds(ntp_short(sent + 0.35), lsr, dlsr) == pytest.approx(0.05, abs=1e-4)

    def test_unknown_packet_types_are_skipped(self) -> None:
        app = struct.pack("!BBHI4s", 0x80, 204, 2, 7, b"NAME")
        assert parse_rtcp(app + bytes(ReceiverReport(2))) == [ReceiverReport(2)]

    def test_padding_on_last_packet_is_accepted(self) -> None:
        rr = bytearray(bytes(ReceiverReport(5)) + b"\0\0\0\4")
        rr[0] |= 0x20
        rr[2:4] = struct.pack("!H", 2)
        assert parse_rtcp(bytes(rr)) == [ReceiverReport(5)]

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"\x80\xc9", "RTCP packet too short: 2 bytes"),
            (b"\x80\xc9\x00\x01\x00\x00", "RTCP length 6 is not a multiple of 4"),
            (b"\x40\xc9\x00\x01\0\0\0\0", "RTCP version 1 at offset 0, expected 2"),
            (b"\x80\xc9\x00\x05\0\0\0\0", "RTCP packet at offset 0 claims 24 bytes, 8 left"),
            (b"\x81\xc9\x00\x01\0\0\0\0", "RTCP RR with 1 report blocks truncated"),
            (b"\x80\xc8\x00\x01\0\0\0\0", "RTCP SR too short: 8 bytes, needs 28"),
            (b"\x80\xc9\x00\x00", "RTCP RR too short: 4 bytes, needs 8"),
            (b"\x82\xcb\x00\x01\0\0\0\0", "RTCP BYE with 2 sources truncated"),
            (b"\x81\xcb\x00\x02\0\0\0\1\x09ab\0", "RTCP BYE reason of 9 bytes truncated"),
            (
                b"\xa0\xc9\x00\x01\0\0\0\1" + bytes(ReceiverReport(1)),
                "RTCP padding bit set on non-final packet at offset 0",
            ),
            (b"\xa0\xc9\x00\x01\0\0\0\0", "RTCP padding of 0 bytes invalid at offset 0"),
        ],
    )
    def test_malformed_rtcp_is_rejected_precisely(self, data: bytes, message: str) -> None:
        with pytest.raises(ValueError) as info:
            parse_rtcp(data)
        assert str(info.value) == message

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_parse_or_raise_value_error(self, data: bytes) -> None:
        try:
            parse_rtcp(data)
        except ValueError:
            pass


# ---------------------------------------------------------------------- DTMF


def event(code: int, end: bool, duration: int, volume: int = 10) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


class TestDtmf:
    def test_parse_telephone_event(self) -> None:
        assert parse_dtmf(event(11, True, 1600, 7)) == (11, True, 7, 1600)
        assert parse_dtmf(event(5, False, 160)) == (5, False, 10, 160)

    def test_parse_rejects_short_payload(self) -> None:
        with pytest.raises(ValueError, match=r"^telephone-event payload too short: 3 bytes"):
            parse_dtmf(b"\x01\x02\x03")

    def test_each_key_press_is_reported_once_with_its_duration(self) -> None:
        det = DtmfDetector()
        seen: list[tuple[str, float]] = []
        for code, ts in ((1, 8000), (10, 16000), (11, 24000), (15, 32000)):
            for d in (160, 320, 480, 640):
                seen += det.feed(ts, event(code, False, d))
            for _ in range(3):  # end packet sent three times (RFC 4733 §2.5.1.4)
                seen += det.feed(ts, event(code, True, 800))
        assert seen == [("1", 100.0), ("*", 100.0), ("#", 100.0), ("D", 100.0)]

    def test_same_digit_twice_is_two_presses_distinguished_by_timestamp(self) -> None:
        det = DtmfDetector()
        out = det.feed(1000, event(5, True, 400)) + det.feed(1000, event(5, True, 400))
        out += det.feed(5000, event(5, True, 480))
        assert out == [("5", 50.0), ("5", 60.0)]

    def test_lost_end_packets_report_on_next_event_or_flush(self) -> None:
        det = DtmfDetector()
        assert det.feed(100, event(2, False, 320)) == []
        assert det.feed(900, event(3, False, 160)) == [("2", 40.0)]
        assert det.flush() == [("3", 20.0)]
        assert det.flush() == []
        assert det.feed(900, event(3, True, 800)) == []  # late end of a flushed event

    def test_non_dtmf_events_are_not_reported(self) -> None:
        det = DtmfDetector()
        assert det.feed(100, event(16, True, 800)) == []  # flash
