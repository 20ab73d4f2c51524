"""The two-server layout, in network namespaces: control on one host, media on another.

Three hosts on one bridge (tests/system/netns.py): ``ctl`` runs
softswitch-control, ``media`` runs two softswitch-bearer instances pinned to
cores 0 and 1, ``phones`` runs pjsua2 phones.  Control and bearers talk UDP
with every datagram HMAC-tagged under a shared key file, as a two-server
install does.  The phones must hear each other through the media host, and
the control host must carry no RTP at all.

A bearer holding another key than control's is the classic two-server
misconfiguration: it must refuse control's requests, control must say so
(log and ``softswitchctl bearers``), and a call must fail with 503 at once
instead of being answered into silence.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audio import assert_hears
from tests.system.netns import Topology, as_root, netns_list
from tests.system.netns_switch import (
    BEARER_PORT,
    NetSwitch,
    RtpCounter,
    cpus_allowed,
    netns_inode,
    process_netns_inode,
)
from tests.system.phone import Phone, make_phone

__all__ = ["as_root", "make_phone"]  # fixtures, imported to be found by pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

USERS = {
    "alice": "alice-2srv-pw",
    "bob": "bob-2srv-pw",
    "carol": "carol-2srv-pw",
    "dave": "dave-2srv-pw",
}
TONES = {"alice": 440.0, "bob": 1000.0, "carol": 1700.0, "dave": 700.0}


@pytest.fixture(scope="module")
def net() -> Iterator[Topology]:
    """The three hosts, for the whole module (one Topology per process at a time:
    a second one would take over the namespace names of the first)."""
    with Topology(("ctl", "media", "phones")) as net:
        yield net
    left = [ns for ns in netns_list() if ns.startswith(net.tag)]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def two_servers(net: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetSwitch]:
    """Control on ctl, two bearers on media (UDP+HMAC, cores 0 and 1)."""
    sw = NetSwitch(net, tmp_path_factory.mktemp("two-servers"), users=USERS).start()
    try:
        sw.wait_bearers({0: "up", 1: "up"})
        yield sw
    finally:
        problems = sw.stop()
    assert not problems, f"{problems}\n{sw.logs()}"


def phone_on(sw: NetSwitch, make_phone, user: str, **kw) -> Phone:
    """A pjsua2 phone on the phones host, registered as ``user``."""
    net = sw.net
    p = make_phone(user, tone_hz=TONES[user], netns=net.ns("phones"), bind=net.addr("phones"), **kw)
    code = p.register(sw.registrar, user, USERS[user], sw.domain, expires=300, timeout=8)
    assert code == 200, f"{user} could not register: {code}\n{sw.logs()}"
    return p


def wait_reported_sessions(sw: NetSwitch, n: int, timeout: float = 5.0) -> dict[int, int]:
    """Wait until the bearers' heartbeats report ``n`` sessions in all; by bearer id."""
    deadline = time.monotonic() + timeout
    live: dict[int, int] = {}
    while time.monotonic() < deadline:  # bounded
        live = {r["id"]: r["sessions"] for r in sw.ctl_json("bearers")}
        if sum(live.values()) == n:
            break
        time.sleep(0.1)
    return live


def test_bearers_on_the_media_host_are_up_over_udp_hmac_and_pinned_one_core_each(
    two_servers: NetSwitch,
) -> None:
    sw = two_servers
    rows = sw.wait_bearers({0: "up", 1: "up"})
    assert [r["endpoint"] for r in rows] == [
        f"udp:{sw.media_addr}:{BEARER_PORT}",
        f"udp:{sw.media_addr}:{BEARER_PORT + 1}",
    ], rows
    media_ns, ctl_ns = netns_inode(sw.net.ns("media")), netns_inode(sw.net.ns("ctl"))
    for i, proc in enumerate(sw.bearer_procs):
        assert process_netns_inode(proc.pid) == media_ns, f"bearer {i} is not on the media host"
        assert cpus_allowed(proc.pid) == str(i), f"bearer {i} not pinned to core {i}"
    assert sw.control is not None
    assert process_netns_inode(sw.control.pid) == ctl_ns, "control is not on the ctl host"
    # The link is really UDP between the two hosts: the control host receives
    # the bearers' heartbeats from the media host's address.
    counter = RtpCounter(sw.net, "ctl", [sw.media_addr])
    time.sleep(1.2)  # heartbeat_interval is 0.5 s
    assert counter.read()[sw.media_addr] >= 2, "no heartbeats from the media host"


def test_phones_call_each_other_with_media_through_the_media_host_not_ctl(
    two_servers: NetSwitch, make_phone
) -> None:
    sw = two_servers
    net = sw.net
    alice = phone_on(sw, make_phone, "alice")
    bob = phone_on(sw, make_phone, "bob", auto_answer=0.3)
    on_ctl = RtpCounter(net, "ctl", [net.addr("phones")])
    on_media = RtpCounter(net, "media", [net.addr("phones")])
    on_phones = RtpCounter(net, "phones", [sw.media_addr, sw.addr])
    mark = sw.cdr_mark()

    ca = alice.call(sw.uri("bob"))
    info = alice.wait_state("CONFIRMED", 10, call=ca)
    assert info["state"] == "CONFIRMED", f"{info}\n{sw.logs()}"
    cb = bob.incoming(2)
    alice.pump(3.0)
    sa, sb = alice.stats(ca), bob.stats(cb)
    alice.hangup(ca)
    assert bob.wait_state("DISCONNECTED", 5, call=cb)["state"] == "DISCONNECTED"

    # The SDP each phone got points at the media host (pjsua's remote RTP
    # address comes from the SDP), and RTP flowed both ways.
    for who, s in (("alice", sa), ("bob", sb)):
        assert s["remote_rtp"].startswith(sw.media_addr + ":"), f"{who}: {s}"
        assert s["rx_packets"] >= 100, f"{who} received too little RTP: {s}"
    assert_hears(bob.recording(cb), TONES["alice"], not_hz=[TONES["bob"]])
    assert_hears(alice.recording(ca), TONES["bob"], not_hz=[TONES["alice"]])

    # The kernel's view: the media host got the phones' RTP, the control host
    # got nothing but SIP from them, and the phones' RTP came from the media host.
    from_phones_on_ctl = on_ctl.read()[net.addr("phones")]
    assert from_phones_on_ctl == 0, (
        f"{from_phones_on_ctl} non-SIP packets reached ctl: {on_ctl.flows()}"
    )
    assert on_media.read()[net.addr("phones")] >= 200, "the phones' RTP missed the media host"
    got = on_phones.read()
    assert got[sw.media_addr] >= 200 and got[sw.addr] == 0, got

    row = sw.wait_cdr(mark, caller="alice@")
    assert (row["disposition"], row["sip_code"]) == ("answered", 200), row
    assert row["a_packets"] > 0 and row["b_packets"] > 0, row
    assert row["bearer"].startswith(f"udp:{sw.media_addr}:"), row


def test_two_calls_at_once_are_spread_over_both_bearers_and_each_pair_hears_the_other(
    two_servers: NetSwitch, make_phone
) -> None:
    """Bob calls Alice back, then Dave calls Carol while the first call is up:
    the least-loaded choice puts the second call on the other bearer of the
    media host, and both carry audio.

    The second call waits until a heartbeat has reported the first one: the
    bearers compute the load they report once a second, so a heartbeat sent
    just after an ALLOCATE still says 0 sessions and wipes out control's own
    count (two calls within about a second both land on one bearer; reported).
    """
    sw = two_servers
    alice = phone_on(sw, make_phone, "alice", auto_answer=0.3)
    bob = phone_on(sw, make_phone, "bob")
    carol = phone_on(sw, make_phone, "carol", auto_answer=0.3)
    dave = phone_on(sw, make_phone, "dave")
    mark = sw.cdr_mark()
    pairs = [(bob, alice), (dave, carol)]
    calls = []
    for caller, callee in pairs:
        c = caller.call(sw.uri(callee.name))
        info = caller.wait_state("CONFIRMED", 10, call=c)
        assert info["state"] == "CONFIRMED", f"{caller.name}: {info}\n{sw.logs()}"
        calls.append((c, callee.incoming(2)))
        live = wait_reported_sessions(sw, len(calls))
    bob.pump(2.5)
    for (caller, callee), (c, d) in zip(pairs, calls, strict=True):
        caller.hangup(c)
        callee.wait_state("DISCONNECTED", 5, call=d)
    for (caller, callee), (c, d) in zip(pairs, calls, strict=True):
        assert_hears(callee.recording(d), caller.tone_hz, not_hz=[callee.tone_hz])
        assert_hears(caller.recording(c), callee.tone_hz, not_hz=[caller.tone_hz])

    rows = [sw.wait_cdr(mark, caller=f"{who}@") for who in ("bob", "dave")]
    for row in rows:
        assert (row["disposition"], row["a_packets"] > 0, row["b_packets"] > 0) == (
            "answered",
            True,
            True,
        ), row
    used = sorted(row["bearer"] for row in rows)
    assert used == [sw.bearer_endpoint(0), sw.bearer_endpoint(1)], (
        f"both calls on one bearer: {used} (sessions while up: {live})"
    )


# ------------------------------------------------------------------------------ wrong key


@pytest.fixture
def wrong_key_switch(net: Topology, two_servers: NetSwitch, tmp_path: Path) -> Iterator[NetSwitch]:
    """A second install on the same hosts (its own ports), whose only bearer
    holds a key of its own instead of control's."""
    sw = NetSwitch(
        net, tmp_path / "switch", users=USERS, bearers=1, wrong_key={0},
        sip_port=5062, bearer_port=7010, control_bearer_port=7110, rtp_port_min=34000,
    )  # fmt: skip
    sw.start()
    try:
        yield sw
    finally:
        problems = sw.stop()
    assert not problems, f"{problems}\n{sw.logs()}"


def test_bearer_with_the_wrong_key_is_reported_and_calls_fail_with_503_not_silence(
    wrong_key_switch: NetSwitch, make_phone
) -> None:
    sw = wrong_key_switch
    endpoint = sw.bearer_endpoint(0)

    # Control says which bearer and that its key is wrong (not merely "never
    # answered": the bearer answers control's datagrams with a refusal under
    # its own key), in the log and in `softswitchctl bearers`; never up.
    wrong_key = "refuses our requests: wrong key?"
    deadline = time.monotonic() + 10
    rows: list[dict] = []
    while time.monotonic() < deadline:  # bounded
        rows = sw.ctl_json("bearers")
        if rows[0]["state"] == "auth-failed":
            break
        time.sleep(0.2)
    assert (rows[0]["endpoint"], rows[0]["state"], rows[0]["reason"]) == (
        endpoint,
        "auth-failed",
        wrong_key,
    ), f"{rows}\n{sw.logs()}"
    said = f"bearer {endpoint} {wrong_key} (bad_hmac)"
    lines = [line for line in sw.log("control").splitlines() if said in line]
    assert len(lines) == 1, f"not said once in the control log: {said!r}\n{sw.logs()}"
    # The human-readable table says it too.
    table = sw.ctl("bearers").stdout
    assert endpoint in table and "wrong key?" in table, table
    # And the bearer really did refuse them: its own counters (asked with its
    # own key) show control's datagrams dropped for a bad HMAC and refusals
    # sent back, and its log names control's address.
    counters = sw.bearer_counters(0)
    assert counters.get("control_drop_bad_hmac", 0) > 0, counters
    assert counters.get("control_auth_refused", 0) > 0, counters
    assert counters["sessions"] == 0, counters
    source = f"udp:{sw.addr}:{sw.control_bearer_port}"
    assert f"control datagram from {source} failed HMAC: different key?" in sw.log("bearer-0"), (
        sw.logs()
    )

    # A call is refused with 503 at once; the callee never rings.
    alice = phone_on(sw, make_phone, "alice")
    bob = phone_on(sw, make_phone, "bob", auto_answer=0.1)
    mark = sw.cdr_mark()
    t0 = time.monotonic()
    ca = alice.call(sw.uri("bob"))
    info = alice.wait_state("DISCONNECTED", 10, call=ca)
    took = time.monotonic() - t0
    assert (info["state"], info["last_status"]) == ("DISCONNECTED", 503), f"{info}\n{sw.logs()}"
    assert "CONFIRMED" not in info["states"], info
    assert took < 5, f"the 503 took {took:.1f} s"
    assert bob.calls() == [], "the callee rang although no bearer could carry the call"
    row = sw.wait_cdr(mark, caller="alice@")
    assert (row["disposition"], row["sip_code"]) == ("failed", 503), row
