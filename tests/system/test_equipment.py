"""The end-to-end test equipment, proven without the switch.

Before a system test may blame the switch, the phones, SIPp, the audio
oracle and the namespaces must be shown to work on their own: phones call
each other directly, SIPp talks to SIPp and to phones, namespaces come up
and go away.  Root-only tests fail (not skip) without root.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.audio import (
    FRAME,
    MARKER_PERIOD,
    RATE,
    Recording,
    alaw_decode,
    alaw_encode,
    assert_hears,
    dominant_frequency,
    marked_tone,
    measure_delay,
    snr_db,
    sound_fraction,
    tone,
    ulaw_decode,
    ulaw_encode,
)
from tests.system.netns import Topology, as_root, netns_list
from tests.system.phone import Phone, PhoneError, make_phone
from tests.system.sipp import (
    rport_responder,
    uac,
    uas,
    wait_listening,
    write_tone_file,
)

__all__ = ["as_root", "make_phone"]  # fixtures, imported to be found by pytest

A_HZ, B_HZ, SIPP_HZ = 440.0, 1000.0, 1700.0
AUTH = {"user": "alice", "password": "secret", "domain": "test.example"}


# --------------------------------------------------------------------------
# Fixtures: nothing outlives a test


@pytest.fixture
def topology(as_root: None) -> Iterator[Topology]:
    with Topology(("ctl", "media", "phones"), nat_hosts=("home",), ipv6=True) as net:
        yield net
    left = [ns for ns in netns_list() if ns.startswith(net.tag)]
    assert not left, f"namespaces left behind: {left}"


def direct_call(a: Phone, b: Phone, seconds: float) -> tuple[int, int]:
    """A calls B directly, B answers (auto), talk for ``seconds``; returns call ids."""
    ca = a.call(b.uri())
    info = a.wait_state("CONFIRMED", 5, call=ca)
    assert info["state"] == "CONFIRMED", info
    cb = b.incoming(1)
    a.pump(seconds)
    return ca, cb


# --------------------------------------------------------------------------
# The audio oracle


def test_g711_codecs_round_trip_within_one_quantisation_step() -> None:
    x = tone(1000, 0.1, amplitude=0.9)
    for enc, dec in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        y = dec(enc(x))
        err = np.abs(y.astype(int) - x.astype(int))
        # G.711 steps are 1/16 of a segment: relative error stays under ~6 %.
        assert np.all(err <= np.maximum(np.abs(x) * 0.07, 16)), enc.__name__
        assert snr_db(y, RATE, 1000) > 30
    # Reference points from the G.711 tables: silence and full scale.
    assert ulaw_encode(np.array([0, 32767, -32768])) == bytes([0xFF, 0x80, 0x00])
    assert alaw_encode(np.array([0, 32767, -32768])) == bytes([0xD5, 0xAA, 0x2A])


def test_oracle_tells_tones_apart_and_explains_what_it_heard() -> None:
    mixed = tone(440, 1.0) // 2 + tone(1000, 1.0) // 2
    assert abs(dominant_frequency(tone(1700, 1.0)) - 1700) < 1
    assert_hears(tone(440, 1.0), 440, not_hz=[1000])
    with pytest.raises(AssertionError, match=r"1000 Hz present .*spectrum peaks: (440|1000) Hz"):
        assert_hears(mixed, 440, not_hz=[1000])
    gappy = tone(440, 1.0)
    gappy[: RATE // 5] = 0
    assert sound_fraction(gappy) == pytest.approx(0.8, abs=0.03)
    with pytest.raises(AssertionError, match=r"sound in only 80\.0% of the answered time"):
        assert_hears(gappy, 440)


def test_delay_measurement_recovers_a_known_shift_to_a_fraction_of_a_ms() -> None:
    signal, starts = marked_tone(440, seconds=4 * MARKER_PERIOD)
    shift = 0.0375  # 37.5 ms: 300 samples
    t_send = 1000.0
    sent = [t_send + s / RATE for s in starts]
    received = np.concatenate([np.zeros(300, np.int16), signal])
    rec = Recording(received, RATE, t0=t_send, frame_period=FRAME / RATE)
    d = measure_delay(sent, rec)
    assert len(d.delays_ms) == len(starts)
    assert d.median_ms == pytest.approx(shift * 1000, abs=0.2)
    assert d.spread_ms < 0.2


# --------------------------------------------------------------------------
# Phones calling each other directly


def test_direct_call_each_phone_hears_the_other_and_not_itself(make_phone) -> None:
    a = make_phone("a", tone_hz=A_HZ)
    b = make_phone("b", tone_hz=B_HZ, auto_answer=0.2)
    ca, cb = direct_call(a, b, 3.0)
    sa, sb = a.stats(ca), b.stats(cb)
    a.hangup(ca)
    assert a.wait_state("DISCONNECTED", 5, call=ca)["state"] == "DISCONNECTED"
    assert b.wait_state("DISCONNECTED", 5, call=cb)["state"] == "DISCONNECTED"

    assert sa["codec"] == sb["codec"] == "PCMU", (sa, sb)
    assert sa["rx_packets"] >= 140 and sb["rx_packets"] >= 140, (sa, sb)
    heard_by_b, heard_by_a = b.recording(cb), a.recording(ca)
    assert_hears(heard_by_b, A_HZ, not_hz=[B_HZ])
    assert_hears(heard_by_a, B_HZ, not_hz=[A_HZ])

    # Baseline for the switch tests: the same measurement through a relay
    # should add well under a frame to these numbers.
    a_to_b = measure_delay(a.sent_markers(ca), heard_by_b)
    b_to_a = measure_delay(b.sent_markers(cb), heard_by_a)
    print(f"\nbaseline one-way delay A->B: {a_to_b}\nbaseline one-way delay B->A: {b_to_a}")
    for d in (a_to_b, b_to_a):
        assert len(d.delays_ms) >= 2, d
        assert 0 < d.median_ms < 200, d
        # pjsua's adaptive jitter buffer steps by whole frames, more under load
        # (40 ms seen on a busy 2-core box); a broken clock would scatter widely.
        assert d.spread_ms <= 100, d


def test_direct_call_dtmf_digits_sent_by_a_arrive_at_b_in_order(make_phone) -> None:
    a = make_phone("a", tone_hz=A_HZ)
    b = make_phone("b", tone_hz=B_HZ, auto_answer=0.1)
    ca, cb = direct_call(a, b, 0.3)
    a.send_dtmf("159#*0", call=ca)
    assert b.wait_dtmf(6, 5, call=cb) == "159#*0"
    assert a.received_dtmf(ca) == ""


def test_pcmu_only_phone_calling_pcma_only_phone_is_refused_with_488(make_phone) -> None:
    u = make_phone("ulaw", tone_hz=A_HZ, codecs=("PCMU",))
    al = make_phone("alaw", tone_hz=B_HZ, codecs=("PCMA",), auto_answer=0.1)
    cu = u.call(al.uri())
    info = u.wait_state("DISCONNECTED", 5, call=cu)
    assert (info["state"], info["last_status"]) == ("DISCONNECTED", 488), info
    assert "CONFIRMED" not in info["states"]


def test_pcma_only_phones_talk_pcma(make_phone) -> None:
    a = make_phone("a", tone_hz=A_HZ, codecs=("PCMA",))
    b = make_phone("b", tone_hz=B_HZ, codecs=("PCMA", "PCMU"), auto_answer=0.1)
    ca, cb = direct_call(a, b, 1.5)
    assert a.stats(ca)["codec"] == b.stats(cb)["codec"] == "PCMA"
    assert_hears(b.recording(cb), A_HZ, not_hz=[B_HZ])


def test_hold_stops_media_towards_the_holder_and_unhold_resumes_it(make_phone) -> None:
    a = make_phone("a", tone_hz=A_HZ)
    b = make_phone("b", tone_hz=B_HZ, auto_answer=0.1)
    ca, cb = direct_call(a, b, 0.5)

    def flow(seconds: float) -> tuple[dict, dict, int, int]:
        a0, b0 = a.stats(ca), b.stats(cb)
        a.pump(seconds)
        a1, b1 = a.stats(ca), b.stats(cb)
        return a1, b1, a1["rx_packets"] - a0["rx_packets"], b1["rx_packets"] - b0["rx_packets"]

    a.hold(ca)
    a.pump(0.5)  # the re-INVITE transaction
    sa, sb, a_rx, b_rx = flow(1.0)
    assert (sa["direction"], sb["direction"]) == ("sendonly", "recvonly"), (sa, sb)
    assert a_rx == 0, f"holder still receives {a_rx} packets/s"
    assert b_rx >= 40, f"held phone receives only {b_rx} packets/s"

    a.unhold(ca)
    a.pump(0.5)
    sa, sb, a_rx, b_rx = flow(1.0)
    assert (sa["direction"], sb["direction"]) == ("sendrecv", "sendrecv"), (sa, sb)
    assert a_rx >= 40 and b_rx >= 40, (a_rx, b_rx)


def test_phone_process_is_killed_when_the_test_fails(tmp_path: Path) -> None:
    p = Phone("doomed", tone_hz=A_HZ, workdir=tmp_path)
    with pytest.raises(RuntimeError), p:
        pid = p.pid
        raise RuntimeError("a test failure inside the with block")
    assert not p.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(PhoneError, match="not running"):
        p.stats()


# --------------------------------------------------------------------------
# SIPp


def test_sipp_uac_registers_and_calls_sipp_uas_with_digest_auth_and_rtp(tmp_path: Path) -> None:
    keys = {**AUTH, "expires": 300, "pt": 0, "codec": "PCMU"}
    tone_a = write_tone_file(tmp_path / "a.ulaw", A_HZ)
    tone_b = write_tone_file(tmp_path / "b.ulaw", B_HZ)
    server = uas(
        "uas_auth.xml",
        keys={**keys, "rtp_stream": f"{tone_b},-1,0"},
        service="bob",
        timeout=20,
        workdir=tmp_path / "uas",
    )
    with server:
        assert wait_listening(server.local_port)
        client = uac(
            f"127.0.0.1:{server.local_port}",
            "uac_register_call.xml",
            keys={**keys, "rtp_stream": f"{tone_a},-1,0"},
            service="bob",
            auth=(AUTH["user"], AUTH["password"]),
            duration_ms=1000,
            timeout=20,
            workdir=tmp_path / "uac",
        )
        with client:
            rc = client.wait()
        rs = server.wait()
    rc.check(calls=1)
    rs.check(calls=1)
    msgs = rc.messages
    # Both challenges were met: a second REGISTER and a second INVITE, with credentials.
    assert len(re.findall(r"^Authorization: Digest", msgs, re.M)) == 2, msgs[-3000:]
    assert "CSeq: 2 ACK" in msgs and "CSeq: 3 BYE" in msgs


def test_sipp_uac_tone_is_heard_by_a_phone(make_phone, tmp_path: Path) -> None:
    """Proves the SIPp RTP stream and our G.711 encoder carry a real tone."""
    b = make_phone("b", tone_hz=B_HZ, auto_answer=0.1)
    tone_file = write_tone_file(tmp_path / "sipp.ulaw", SIPP_HZ)
    client = uac(
        b.hostport,
        "uac_call.xml",
        keys={"user": "sipp", "domain": b.hostport, "pt": 0, "codec": "PCMU",
              "rtp_stream": f"{tone_file},-1,0"},
        service="b",
        duration_ms=2000,
        timeout=15,
        workdir=tmp_path / "uac",
    )  # fmt: skip
    with client:
        cb = b.incoming(5)
        rc = client.wait()
    rc.check(calls=1)
    b.wait_state("DISCONNECTED", 3, call=cb)
    assert b.stats(cb)["codec"] == "PCMU"
    assert_hears(b.recording(cb), SIPP_HZ, not_hz=[B_HZ])


def test_phone_hears_the_tone_of_a_sipp_uas(make_phone, tmp_path: Path) -> None:
    a = make_phone("a", tone_hz=A_HZ, codecs=("PCMA",))
    tone_file = write_tone_file(tmp_path / "sipp.alaw", SIPP_HZ, codec="PCMA")
    server = uas(
        "uas_answer.xml",
        keys={"pt": 8, "codec": "PCMA", "rtp_stream": f"{tone_file},-1,8"},
        service="bob",
        timeout=15,
        workdir=tmp_path / "uas",
    )
    with server:
        assert wait_listening(server.local_port)
        ca = a.call(f"sip:bob@127.0.0.1:{server.local_port}")
        assert a.wait_state("CONFIRMED", 5, call=ca)["state"] == "CONFIRMED"
        a.pump(2.0)
        a.hangup(ca)
        a.wait_state("DISCONNECTED", 5, call=ca)
        rs = server.wait()
    rs.check(calls=1)
    assert_hears(a.recording(ca), SIPP_HZ, not_hz=[A_HZ])


def test_phone_registers_and_unregisters_with_digest_auth(make_phone, tmp_path: Path) -> None:
    registrar = uas("uas_registrar.xml", calls=5, keys=AUTH, timeout=20, workdir=tmp_path / "r")
    with registrar:
        assert wait_listening(registrar.local_port)
        where = f"sip:127.0.0.1:{registrar.local_port}"
        good = make_phone("alice", tone_hz=A_HZ)
        assert good.register(where, "alice", "secret", "test.example", expires=120) == 200
        assert good.unregister() == 200
        bad = make_phone("mallory", tone_hz=A_HZ)
        assert bad.register(where, "alice", "wrong", "test.example") == 403
        result = registrar.stop()
    msgs = result.messages
    assert re.search(r"^Expires: 120", msgs, re.M) and re.search(r"^Expires: 0", msgs, re.M)


# --------------------------------------------------------------------------
# Namespaces (root)


@pytest.mark.root
def test_topology_hosts_ping_each_other_and_all_is_removed_afterwards(as_root: None) -> None:
    with Topology(("ctl", "media", "phones"), ipv6=True) as net:
        names = net.namespaces
        assert set(names) <= set(netns_list())
        for src, dst in (("ctl", "media"), ("media", "phones"), ("phones", "ctl")):
            assert net.ping(src, net.addr(dst)), f"{src} cannot ping {dst} {net.addr(dst)}"
            assert net.ping(src, net.addr6(dst)), f"{src} cannot ping {dst} {net.addr6(dst)}"
        sleeper = net.popen("media", ["sleep", "60"])
    assert sleeper.poll() is not None, "a process started in the topology survived it"
    assert not set(names) & set(netns_list())


@pytest.mark.root
def test_stale_namespaces_of_a_dead_run_are_removed(as_root: None) -> None:
    # A pid that cannot be alive (above pid_max) stands for a crashed run.
    stale = "sst4999999-ctl"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Topology(("ctl",)):
            assert stale not in netns_list()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


@pytest.mark.root
def test_nat_masquerades_the_home_phone_and_answers_come_back_via_rport(
    topology: Topology, tmp_path: Path
) -> None:
    net = topology
    assert net.ping("home", net.addr("ctl"))
    assert not net.ping("ctl", net.addr("home"), timeout=0.5), "NAT must not route inwards"
    responder = rport_responder(net.addr("ctl"), 5060, netns=net.ns("ctl"))
    try:
        assert wait_listening(5060, netns=net.ns("ctl"))
        client = uac(
            f"{net.addr('ctl')}:5060",
            "uac_rport.xml",
            local_ip=net.addr("home"),
            local_port=5070,
            netns=net.ns("home"),
            keys={"user": "alice", "domain": "test.example"},
            service="bob",
            timeout=10,
            workdir=tmp_path,
        )
        with client:
            rc = client.wait()
        out, _ = responder.communicate(timeout=5)
    finally:
        responder.kill()
    rc.check(calls=1)
    seen = out.strip()
    host, port = seen.rsplit(":", 1)
    assert host == Topology.NAT_PUBLIC, seen
    assert int(port) != 5070, "the NAT kept the private port; rport would go untested"
    assert f"received={Topology.NAT_PUBLIC} rport={port}" in rc.logs, rc.logs


@pytest.mark.root
def test_sipp_uac_and_uas_in_namespaces_exchange_rtp_both_ways(
    topology: Topology, tmp_path: Path
) -> None:
    """RTP counted by nftables in each namespace: SIPp itself cannot tell."""
    net = topology
    keys = {**AUTH, "expires": 300, "pt": 0, "codec": "PCMU"}
    tone_file = write_tone_file(tmp_path / "t.ulaw", A_HZ)
    for host, peer in (("ctl", "phones"), ("phones", "ctl")):
        rules = (
            "table inet sstcount {\n  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {net.addr(peer)} udp sport != 5060 udp dport != 5060 counter\n"
            "  }\n}\n"
        )
        net.run(host, ["nft", "-f", "-"], input=rules)
    server = uas("uas_auth.xml", local_ip=net.addr("ctl"), local_port=5060,
                 keys={**keys, "rtp_stream": f"{tone_file},-1,0"}, service="bob",
                 netns=net.ns("ctl"), timeout=20, workdir=tmp_path / "uas")  # fmt: skip
    with server:
        assert wait_listening(5060, netns=net.ns("ctl"))
        client = uac(f"{net.addr('ctl')}:5060", "uac_register_call.xml",
                     local_ip=net.addr("phones"), local_port=5060,
                     keys={**keys, "rtp_stream": f"{tone_file},-1,0"}, service="bob",
                     auth=("alice", "secret"), duration_ms=2000, netns=net.ns("phones"),
                     timeout=20, workdir=tmp_path / "uac")  # fmt: skip
        with client:
            rc = client.wait()
        rs = server.wait()
    rc.check(calls=1)
    rs.check(calls=1)
    for host in ("ctl", "phones"):
        listing = net.run(host, ["nft", "list", "table", "inet", "sstcount"]).stdout
        counter = re.search(r"counter packets (\d+)", listing)
        assert counter is not None, f"{host} has no packet counter:\n{listing}"
        packets = int(counter.group(1))
        # 2 s at 50 packets/s, less start-up: anything near 100 means RTP flowed.
        assert packets >= 80, f"{host} received {packets} RTP packets:\n{listing}"


@pytest.mark.root
def test_phones_in_namespaces_call_each_other_across_the_bridge(
    topology: Topology, make_phone
) -> None:
    net = topology
    a = make_phone("a", tone_hz=A_HZ, netns=net.ns("phones"), bind=net.addr("phones"))
    b = make_phone("b", tone_hz=B_HZ, netns=net.ns("media"), bind=net.addr("media"),
                   auto_answer=0.1)  # fmt: skip
    assert a.host == net.addr("phones") and b.host == net.addr("media")
    ca, cb = direct_call(a, b, 1.5)
    sa = a.stats(ca)
    assert sa["remote_rtp"].startswith(net.addr("media")), sa
    a.hangup(ca)
    b.wait_state("DISCONNECTED", 5, call=cb)
    assert_hears(b.recording(cb), A_HZ, not_hz=[B_HZ])
    assert_hears(a.recording(ca), B_HZ, not_hz=[A_HZ])
