"""A bearer killed under a live call between two real phones (softswitch/calls/failover.py).

Alice (pjsua2) calls Bob (pjsua2) through the real switch; both hear each
other through bearer X. X gets SIGKILL: no goodbye, its sessions and ports
gone. After three missed heartbeats (``[bearers] heartbeat_interval``, the
default 1 s, kept so the gap measured is the one a default install has)
control ALLOCATEs the call on bearer Y and re-INVITEs both phones to Y's
ports; pjsua accepts, and each phone hears the other again, through Y.

The switch is this module's own, one per test: a switch with a dead bearer
is of no use to anyone after, and the killed bearer's exit status (-9) is
the one problem its teardown forgives.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.audio import FRAME, SILENCE_DB, Recording, assert_hears, band_energy_db, level_db
from tests.system.loopback_switch import E2eSwitch, assert_cdr

TALK = 2.0  # seconds of conversation before the kill and after the move
HEARTBEAT = 1.0  # [bearers] heartbeat_interval (the default); three missed = down
MOVE_WITHIN = 3 * HEARTBEAT + 3.0  # down, ALLOCATE, both re-INVITEs; slack for a busy host


class FailoverSwitch(E2eSwitch):
    """The e2e switch, whose bearers a test may SIGKILL (and whose teardown allows it)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.killed: set[int] = set()

    def kill_bearer(self, i: int) -> float:
        """SIGKILL bearer ``i``; returns the monotonic time of the kill."""
        proc = self.bearers[i].proc
        self.killed.add(i)
        at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(5) == -signal.SIGKILL
        return at

    def stop(self) -> list[str]:
        forgiven = {f"bearer {i} exited {-signal.SIGKILL}" for i in self.killed}
        return [p for p in super().stop() if p not in forgiven]

    def endpoint(self, i: int) -> str:
        """How control (and so the CDR, 64 characters at most) names bearer ``i``."""
        return f"unix:{self.bearers[i].control}"[:64]

    def holds(self, i: int, port: int) -> bool:
        """Whether ``port`` is in bearer ``i``'s range (random 400-port slices,
        disjoint within one switch: bench/harness/bearer.py)."""
        b = self.bearers[i]
        return b.port_first <= port <= b.port_last


@pytest.fixture
def e2e_switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverSwitch]:
    """Control + two bearers for one test (overrides the module-scoped one of conftest.py,
    which e2e_phones then uses); every SIP message is in the control log."""
    sw = FailoverSwitch(tmp_path_factory.mktemp("fo"), log={"sip_trace": True})
    sw.start()
    try:
        yield sw
    finally:
        problems = sw.stop()
    assert not problems, f"{problems}\n{sw.logs()}"


def rtp_port(stats: dict[str, Any]) -> int:
    """The port of the phone's current remote RTP address (its remote SDP's)."""
    return int(str(stats.get("remote_rtp") or ":0").rpartition(":")[2] or 0)


def gap(rec: Recording, hz: float, since: float) -> tuple[float, float]:
    """(silence began, tone back), monotonic times: the first 200 ms of silence
    in ``rec`` after ``since``, and the first 20 ms frame after it that starts
    200 ms of frames mostly (8 of 10) carrying ``hz``: louder than silence, at
    least a quarter of their energy within 100 Hz of ``hz`` (the delay marker,
    once a second, spoils a frame or two, hence 8 of 10)."""
    start = rec.index_of(since)
    x = rec.samples[start:]
    n = len(x) // FRAME
    frames = x[: n * FRAME].reshape(n, FRAME)
    level = np.array([level_db(f) for f in frames])
    tone = np.array(
        [
            lv > SILENCE_DB and band_energy_db(f, freq=hz, width=100) > lv - 6
            for f, lv in zip(frames, level, strict=True)
        ]
    )
    silent = level <= SILENCE_DB
    quiet = next((i for i in range(n - 10) if silent[i : i + 10].all()), None)
    assert quiet is not None, f"no 200 ms of silence after the kill ({rec.path})"

    def at(k: int) -> float:
        return float(rec.time_of(start + k * FRAME))

    for j in range(quiet + 10, n - 10):
        if tone[j] and tone[j : j + 10].sum() >= 8:
            return at(quiet), at(j)
    raise AssertionError(
        f"the {hz:g} Hz tone never came back after the silence at {at(quiet) - since:.2f} s "
        f"({rec.path})"
    )


@pytest.mark.parametrize("srtp", [False, True], ids=["rtp", "srtp"])
def test_bearer_killed_mid_call_phones_are_moved_to_the_other_and_hear_each_other_again(
    e2e_switch: FailoverSwitch, e2e_phones, srtp: bool
) -> None:
    """Kill the call's bearer: both phones are re-INVITEd to the other one within
    three heartbeats and a bit, hear each other again, and the CDR is the call's.

    Audio gap (SIGKILL to the first 20 ms frame of the other's tone again, each
    side, default 1 s heartbeats): measured: ~3.3 s (3.26-3.32 s over eight runs,
    both sides alike): silence from ~0.1 s (the jitter buffers drain) until
    control marks the bearer down after three missed heartbeats (~3.2 s), then
    the re-INVITEs, and the tone is back within ~20 ms of each phone taking the
    new SDP.

    With ``srtp`` both phones insist on SRTP (the callee's user is mandatory):
    the new bearer makes new keys and the re-INVITEs carry them; the SIP
    trace shows every a=crypto with its key redacted.
    """
    sw = e2e_switch
    callee = "sam" if srtp else "bob"
    phone_srtp = "mandatory" if srtp else "off"
    a, b = e2e_phones(
        {"name": "alice", "user": "alice", "srtp": phone_srtp},
        {"name": callee, "user": callee, "auto_answer": 0.2, "srtp": phone_srtp},
    )
    assert sw.endpoint(0) != sw.endpoint(1), "the CDR could not tell the bearers apart"
    mark = sw.cdr_mark()
    ca = a.call(sw.uri(callee))
    info = a.wait_state("CONFIRMED", 8, call=ca)
    assert info["state"] == "CONFIRMED", f"alice -> {callee}: {info}\n{sw.logs()}"
    cb = b.incoming(2)
    a.pump(TALK)

    (before,) = [c for c in sw.ctl_json("calls") if c["caller"].startswith("alice@")]
    assert before["state"] == "confirmed", before
    x = before["bearer"]
    y = 1 - x
    old = {p.name: rtp_port(p.stats(c)) for p, c in ((a, ca), (b, cb))}
    assert all(sw.holds(x, port) for port in old.values()), (old, before)

    killed = sw.kill_bearer(x)
    moved: dict[str, float] = {}  # phone -> seconds from the kill to its new remote SDP
    deadline = killed + MOVE_WITHIN
    while len(moved) < 2 and time.monotonic() < deadline:  # bounded
        for p, c in ((a, ca), (b, cb)):
            if p.name in moved:
                continue
            port = rtp_port(p.stats(c))
            if port != old[p.name] and sw.holds(y, port):  # the re-INVITE's port on Y
                moved[p.name] = time.monotonic() - killed
        time.sleep(0.02)
    assert len(moved) == 2, (
        f"within {MOVE_WITHIN:g} s of the kill only {moved} were re-INVITEd to bearer {y}: "
        f"alice {a.stats(ca)}, bob {b.stats(cb)}\n{sw.logs()}"
    )
    live: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # bounded: the 2xx and ACKs follow at once
        live = sw.control.admin("calls") if sw.control else []
        if live and live[0]["state"] == "confirmed":
            break
        time.sleep(0.05)
    assert len(live) == 1 and live[0]["state"] == "confirmed", f"{live}\n{sw.logs()}"
    assert live[0]["bearer"] == y and live[0]["call_id"] == before["call_id"], (live, before)
    assert live[0]["answer"] == before["answer"], "the move changed the answer time"

    a.pump(TALK)
    pool = {r["id"]: r for r in sw.ctl_json("bearers")}
    assert pool[y]["sessions"] == 1 and pool[x]["state"] != "up", pool
    after = {p.name: p.stats(c) for p, c in ((a, ca), (b, cb))}
    for name, st in after.items():
        assert st["state"] == "CONFIRMED" and st["direction"] == "sendrecv", (name, st)
        port = rtp_port(st)
        assert st["codec"] == "PCMU" and port != old[name] and sw.holds(y, port), (name, st)
    hung_up = time.monotonic()
    b.hangup(cb)  # bob hangs up
    assert b.wait_state("DISCONNECTED", 5, call=cb)["state"] == "DISCONNECTED"
    assert a.wait_state("DISCONNECTED", 5, call=ca)["state"] == "DISCONNECTED"

    gaps = {}
    for me, them, c in ((a, b, ca), (b, a, cb)):
        rec = me.recording(c)
        talked = rec.samples[rec.index_of(rec.answered_at + 0.3) : rec.index_of(killed)]
        assert_hears(talked, them.tone_hz, not_hz=[me.tone_hz])  # through X
        quiet, back = gap(rec, them.tone_hz, killed)
        gaps[me.name] = back - killed
        print(
            f"\n{me.name}: re-INVITEd {moved[me.name]:.2f} s after the SIGKILL; "
            f"silence from {quiet - killed:+.2f} s; {them.name}'s tone back at "
            f"{back - killed:.2f} s (audio gap)"
        )
        assert back - killed < MOVE_WITHIN, f"{me.name}: audio back only {back - killed:.2f} s"
        assert_hears(  # through Y, to the hang-up
            rec.samples[rec.index_of(back + 0.2) : rec.index_of(hung_up)],
            them.tone_hz,
            not_hz=[me.tone_hz],
        )

    (row,) = sw.wait_cdrs(mark, caller="alice@", callee=f"{callee}@")
    assert_cdr(row, "answered", 200, answered=True)
    if srtp:
        assert live[0]["srtp"] == ["AES_CM_128_HMAC_SHA1_80"] * 2, live
        trace = sw.control.log() if sw.control else ""
        # set-up (2) and move (2): offers and answers both ways, each key redacted
        assert trace.count("inline:<redacted>") >= 8, trace[-3000:]
        assert re.search(r"inline:(?!<redacted>)", trace) is None
    answer = row["answer_time"].replace(tzinfo=dt.UTC).timestamp()
    assert abs(answer - before["answer"]) < 0.01, (row, before)
    assert row["bearer"] == sw.endpoint(y), (row["bearer"], sw.endpoint(x), sw.endpoint(y))
    print(
        f"audio gap: alice {gaps['alice']:.2f} s, {callee} {gaps[callee]:.2f} s; CDR on "
        f"{row['bearer']}, packets a/b {row['a_packets']}/{row['b_packets']} (the new session's)"
    )
