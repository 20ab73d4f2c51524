"""SIPp (Debian's sip-tester) against the real switch, with RTP, and behind a NAT.

SIPp is a second, independent SIP implementation: if the switch only worked
with pjsua it would show here.  The switch (control + two bearers on UNIX
sockets) runs on host ``ctl``; SIPp runs on hosts ``alice`` and ``bob``, and
on ``home``, a private host behind a NAT namespace that masquerades it onto
the bridge with random source ports (tests/system/netns.py).

* A SIPp UAC answers the switch's digest challenge as a user added with
  ``softswitchctl user add`` and calls a user whose "phone" is a SIPp UAS
  (registered first by a SIPp REGISTER from the same port); both stream a
  G.711 tone (``rtp_stream``) through the bearer.  Both SIPp runs must exit 0
  and the CDR must say answered with packets on both legs; nftables counters
  on each SIPp host show the RTP that came back from the switch.
* Behind the NAT, the REGISTER's Via carries ``rport``: the switch must
  answer to, and later send the INVITE to, the NAT's public address and port
  (RFC 3581), not to the private Contact; and the bearer must send the
  callee's media to where its RTP came from (symmetric RTP), since the SDP
  names an address nobody can reach.
* Digest: SIPp 3.6.1 answers only an MD5 first challenge.  The module's
  switch runs the shipped default (``[sip] digest_algorithms = ["MD5"]``, not
  overridden); the last test shows SIPp registering with it, and refusing a
  switch configured SHA-256 first with its own message, which the switch
  explains in its log after two unanswered challenges.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.netns import Topology, netns_list
from tests.system.netns_switch import NetSwitch, RtpCounter
from tests.system.sipp import Sipp, SippResult, uac, uas, wait_listening, write_tone_file

pytestmark = [pytest.mark.root, pytest.mark.slow]

USERS = {"alice": "alice-sipp-pw", "bob": "bob-sipp-pw", "carol": "carol-sipp-pw"}
TONES = {"alice": 440.0, "bob": 1000.0, "carol": 1700.0}
TALK_MS = 2000
#: RTP packets a host must receive from the switch in a TALK_MS call (50/s,
#: less set-up): well above anything but a real stream.
MIN_RTP = 50


@pytest.fixture(scope="module")
def net() -> Iterator[Topology]:
    with Topology(("ctl", "alice", "bob"), nat_hosts=("home",)) as net:
        yield net
    left = [ns for ns in netns_list() if ns.startswith(net.tag)]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def switch(net: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetSwitch]:
    """Control and two bearers on host ctl (one server: UNIX sockets)."""
    sw = NetSwitch(net, tmp_path_factory.mktemp("sipp-switch"), users=USERS, media_host="ctl")
    sw.start()
    try:
        sw.wait_bearers({0: "up", 1: "up"})
        yield sw
    finally:
        problems = sw.stop()
    assert not problems, f"{problems}\n{sw.logs()}"


# ------------------------------------------------------------------------------ SIPp roles


def register(sw: NetSwitch, host: str, user: str, port: int, workdir: Path) -> SippResult:
    """A SIPp REGISTER (with digest auth) of ``user`` from ``host``:``port``."""
    return try_register(sw, host, user, port, workdir).check(calls=1)


def try_register(sw: NetSwitch, host: str, user: str, port: int, workdir: Path) -> SippResult:
    """``register`` without the check: how SIPp's REGISTER went."""
    net = sw.net
    reg = uac(
        f"{sw.addr}:{sw.sip_port}",
        "interop_register.xml",
        name=f"register-{user}",
        local_ip=net.addr(host),
        local_port=port,
        netns=net.ns(host),
        keys={"user": user, "domain": sw.domain, "expires": 300},
        auth=(user, USERS[user]),
        timeout=15,
        workdir=workdir,
    )
    with reg:
        return reg.wait()


def answering(sw: NetSwitch, host: str, user: str, port: int, workdir: Path) -> Sipp:
    """A SIPp UAS on ``host``:``port`` that answers one call with SDP and
    streams ``user``'s tone (PCMU) until the BYE; started, and listening."""
    net = sw.net
    workdir.mkdir(parents=True, exist_ok=True)
    tone = write_tone_file(workdir / f"{user}.ulaw", TONES[user])
    server = uas(
        "uas_answer.xml",
        name=f"uas-{user}",
        local_ip=net.addr(host),
        local_port=port,
        netns=net.ns(host),
        keys={"pt": 0, "codec": "PCMU", "rtp_stream": f"{tone},-1,0"},
        service=user,
        timeout=30,
        workdir=workdir,
    ).start()
    assert wait_listening(port, netns=net.ns(host)), f"SIPp UAS not listening on {host}:{port}"
    return server


def calling(sw: NetSwitch, host: str, user: str, callee: str, workdir: Path) -> Sipp:
    """A SIPp UAC on ``host`` that calls ``callee`` as ``user`` (digest auth),
    streams ``user``'s tone for TALK_MS and hangs up; not started."""
    net = sw.net
    workdir.mkdir(parents=True, exist_ok=True)
    tone = write_tone_file(workdir / f"{user}.ulaw", TONES[user])
    return uac(
        f"{sw.addr}:{sw.sip_port}",
        "uac_call.xml",
        name=f"uac-{user}",
        local_ip=net.addr(host),
        netns=net.ns(host),
        keys={"user": user, "domain": sw.domain, "pt": 0, "codec": "PCMU",
              "rtp_stream": f"{tone},-1,0"},
        service=callee,
        auth=(user, USERS[user]),
        duration_ms=TALK_MS,
        timeout=30,
        workdir=workdir,
    )  # fmt: skip


def call(sw: NetSwitch, server: Sipp, client: Sipp) -> tuple[SippResult, SippResult]:
    """Run the UAC to the end, then collect the UAS; both must exit 0 with one call."""
    try:
        with client:
            rc = client.wait()
        rs = server.wait(15)
    finally:
        server.kill()
    for r in (rc, rs):
        if r.returncode != 0 or r.successful != 1:
            raise AssertionError(f"{r.explain()}\n--- switch ---\n{sw.logs()}")
    return rc, rs


def offered_media(messages: str) -> list[str]:
    """The c= addresses of the SDP in every message SIPp received."""
    received = [m for m in messages.split("-" * 20) if "message received" in m]
    return [a for m in received for a in re.findall(r"^c=IN IP4 (\S+)", m, re.M)]


def assert_answered_with_media(row: dict, caller: str, callee: str) -> None:
    assert row["caller"].startswith(f"{caller}@") and row["callee"].startswith(callee), row
    assert (row["disposition"], row["sip_code"]) == ("answered", 200), row
    assert row["a_packets"] >= MIN_RTP, f"leg A ({caller}) carried too little RTP: {row}"
    assert row["b_packets"] >= MIN_RTP, f"leg B ({callee}) carried too little RTP: {row}"


# ------------------------------------------------------------------------------ scenarios


def test_sipp_uac_with_digest_auth_calls_registered_sipp_uas_and_rtp_flows_both_ways(
    switch: NetSwitch, tmp_path: Path
) -> None:
    sw = switch
    net = sw.net
    register(sw, "bob", "bob", 5060, tmp_path / "reg")
    at_alice = RtpCounter(net, "alice", [sw.addr])
    at_bob = RtpCounter(net, "bob", [sw.addr])
    mark = sw.cdr_mark()

    server = answering(sw, "bob", "bob", 5060, tmp_path / "uas")
    rc, rs = call(sw, server, calling(sw, "alice", "alice", "bob", tmp_path / "uac"))

    # The challenge was met: the INVITE was sent again with credentials.
    assert len(re.findall(r"^Proxy-Authorization: Digest|^Authorization: Digest", rc.messages,
                          re.M)) == 1, rc.messages[-3000:]  # fmt: skip
    # Both sides were given the bearer's address, never the other's.
    assert offered_media(rc.messages) == [sw.media_addr], rc.messages[-3000:]
    assert offered_media(rs.messages) == [sw.media_addr], rs.messages[-3000:]
    assert_answered_with_media(sw.wait_cdr(mark, caller="alice@"), "alice", "bob")
    got_alice, got_bob = at_alice.read()[sw.addr], at_bob.read()[sw.addr]
    assert got_alice >= MIN_RTP, f"alice got {got_alice} RTP packets: {at_alice.flows()}"
    assert got_bob >= MIN_RTP, f"bob got {got_bob} RTP packets: {at_bob.flows()}"


def registered_behind_nat(sw: NetSwitch, user: str, port: int, workdir: Path) -> int:
    """Register ``user`` from host home:``port`` through the NAT; returns the
    NAT's public port, checked against what the switch says it saw."""
    result = register(sw, "home", user, port, workdir)
    m = re.search(r"registered received=(\S+) rport=(\d+)", result.logs)
    assert m, f"no received/rport in the 200 to the REGISTER:\n{result.logs}\n{result.messages}"
    assert m.group(1) == Topology.NAT_PUBLIC, f"switch saw {m.group(1)}, not the NAT"
    public_port = int(m.group(2))
    assert public_port != port, "the NAT kept the private port: rport would go untested"
    rows = [r for r in sw.ctl_json("registrations") if r["aor"].startswith(f"{user}@")]
    assert [r["source"] for r in rows] == [f"udp:{Topology.NAT_PUBLIC}:{public_port}"], rows
    return public_port


def test_sipp_behind_nat_registers_with_rport_and_is_called_through_the_nat_with_latched_rtp(
    switch: NetSwitch, tmp_path: Path
) -> None:
    sw = switch
    net = sw.net
    registered_behind_nat(sw, "carol", 5070, tmp_path / "reg")
    at_home = RtpCounter(net, "home", [sw.addr])
    at_alice = RtpCounter(net, "alice", [sw.addr])
    mark = sw.cdr_mark()

    # Carol's UAS takes the same private port; the only way in is the NAT
    # mapping her REGISTER opened, and her SDP names her private address.
    server = answering(sw, "home", "carol", 5070, tmp_path / "uas")
    call(sw, server, calling(sw, "alice", "alice", "carol", tmp_path / "uac"))

    assert_answered_with_media(sw.wait_cdr(mark, caller="alice@"), "alice", "carol")
    # Carol's private address (her SDP) is unreachable from ctl, and the NAT
    # gives her RTP socket a random public port, not the one in her SDP: RTP
    # reached her only because the bearer latched onto the NAT's address and
    # port her own packets came from (symmetric RTP).
    got_home = at_home.read()[sw.addr]
    assert got_home >= MIN_RTP, f"carol (behind NAT) got {got_home} RTP packets"
    got_alice = at_alice.read()[sw.addr]
    assert got_alice >= MIN_RTP, f"alice got {got_alice} RTP packets from carol's side"


def test_sipp_behind_nat_calls_out_and_responses_and_rtp_come_back_through_the_nat(
    switch: NetSwitch, tmp_path: Path
) -> None:
    sw = switch
    net = sw.net
    register(sw, "bob", "bob", 5060, tmp_path / "reg")
    at_home = RtpCounter(net, "home", [sw.addr])
    at_bob = RtpCounter(net, "bob", [sw.addr])
    mark = sw.cdr_mark()

    server = answering(sw, "bob", "bob", 5060, tmp_path / "uas")
    rc, _ = call(sw, server, calling(sw, "home", "carol", "bob", tmp_path / "uac"))

    # Every response came back through the NAT, marked with where it came from.
    vias = re.findall(r"^Via: .*received=([^;\s]+).*$", rc.messages, re.M)
    assert vias and set(vias) == {Topology.NAT_PUBLIC}, rc.messages[-3000:]
    assert_answered_with_media(sw.wait_cdr(mark, caller="carol@"), "carol", "bob")
    got_home, got_bob = at_home.read()[sw.addr], at_bob.read()[sw.addr]
    assert got_home >= MIN_RTP, f"carol (behind NAT) got {got_home} RTP packets"
    assert got_bob >= MIN_RTP, f"bob got {got_bob} RTP packets from carol"


# ------------------------------------------------------------------------------ digest algorithms

#: What SIPp 3.6.1 says when the first algorithm= it reads is not MD5.
SIPP_MD5_ONLY = "authentication must use MD5"


def test_sipp_3_6_registers_with_the_default_digest_and_gives_up_on_sha256_first(
    net: Topology, switch: NetSwitch, tmp_path: Path
) -> None:
    """The shipped default challenges MD5 alone, which SIPp 3.6.1 answers.  A
    switch configured ``["SHA-256", "MD5"]`` loses SIPp, which reads only the
    first algorithm=; after two such unanswered challenges from one source
    and AOR the switch logs why, naming the algorithms it offered."""
    assert "digest_algorithms" not in (switch.etc / "softswitch.conf").read_text()
    register(switch, "alice", "alice", 5064, tmp_path / "default")

    sw = NetSwitch(
        net, tmp_path / "switch", users=USERS, media_host="ctl", bearers=1,
        sip_port=5062, rtp_port_min=36000, digest_algorithms=("SHA-256", "MD5"),
    ).start()  # fmt: skip
    try:
        results = [
            try_register(sw, "alice", "alice", 5062, tmp_path / f"sha256-first-{i}")
            for i in range(2)
        ]
        logged = wait_for_log(sw, "cannot succeed", timeout=5)
    finally:
        problems = sw.stop()
        assert not problems, f"{problems}\n{sw.logs()}"
    for result in results:
        said = "\n".join((result.errors, result.screen, result.logs))
        assert result.returncode != 0 and SIPP_MD5_ONLY in said, result.explain()
    challenge = re.search(
        r"^Proxy-Authenticate: .*$|^WWW-Authenticate: .*$", results[0].messages, re.M
    )
    assert challenge and "SHA-256" in challenge.group(0), results[0].messages[-3000:]
    assert f'digest auth from {net.addr("alice")} (user "alice")' in logged, logged
    assert "it may support none of the offered algorithms: SHA-256, MD5" in logged, logged


def wait_for_log(sw: NetSwitch, text: str, timeout: float) -> str:
    """The first line of the control log containing ``text``, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        found = [ln for ln in sw.control_log.read_text().splitlines() if text in ln]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line with {text!r}:\n{sw.logs()}")
        time.sleep(0.1)
