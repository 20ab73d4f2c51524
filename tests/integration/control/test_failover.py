"""A bearer killed mid-call: control moves the call to the other bearer
(softswitch/calls/failover.py) and both phones are re-INVITEd to it.

Alice and Bob talk through bearer X; X gets SIGKILL (no goodbye, its
sessions gone); after three missed heartbeats (1 s apart, the default)
control ALLOCATEs the call on bearer Y and re-INVITEs both phones with Y's
ports; once they answer, RTP flows both ways through Y.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness.bearer import BearerProcess
from bench.harness.control import ControlProcess, start_switch, wait_cdrs
from bench.harness.sip import Call, answer_reinvite, media_port, next_request


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[tuple[ControlProcess, list[BearerProcess]]]:
    control, bearers = start_switch(tmp_path)
    yield control, bearers
    code = control.stop(signal.SIGTERM)
    for b in bearers:
        b.stop()  # one of them was killed: its exit status is -9
    assert code == 0, f"control exited {code}:\n{control.log()}"
    assert "Traceback" not in control.log(), control.log()


def owner(bearers: list[BearerProcess], port: int) -> int:
    (index,) = [i for i, b in enumerate(bearers) if b.port_first <= port <= b.port_last]
    return index


def test_killed_bearer_moves_the_call_to_the_other_one(
    daemons: tuple[ControlProcess, list[BearerProcess]],
) -> None:
    switch, bearers = daemons
    call = Call(switch)
    try:
        call.establish()
        got_b, got_a = call.talk()
        assert got_b >= 4 and got_a >= 4
        x = owner(bearers, call.bearer_port_for_alice)
        assert owner(bearers, call.bearer_port_for_bob) == x
        y = 1 - x

        killed = time.monotonic()
        assert bearers[x].stop(signal.SIGKILL) == -signal.SIGKILL
        ri_a = next_request(call.alice, "INVITE")
        ri_b = next_request(call.bob, "INVITE")
        reinvited = time.monotonic() - killed
        new_a, new_b = media_port(ri_a.body), media_port(ri_b.body)
        assert owner(bearers, new_a) == y and owner(bearers, new_b) == y
        assert b"c=IN IP4 127.0.0.1" in ri_a.body and b"PCMU" in ri_a.body

        call.alice.send(answer_reinvite(ri_a, call.a_rtp.addr[1], call.alice.local[1]))
        call.bob.send(answer_reinvite(ri_b, call.b_rtp.addr[1], call.bob.local[1]))
        assert next_request(call.alice, "ACK").cseq == ri_a.cseq
        assert next_request(call.bob, "ACK").cseq == ri_b.cseq
        call.bearer_port_for_alice, call.bearer_port_for_bob = new_a, new_b
        got_b, got_a = call.talk()
        flowing = time.monotonic() - killed
        assert got_b >= 4 and got_a >= 4, (got_b, got_a)
        print(f"re-INVITEs {reinvited:.2f} s after SIGKILL, RTP again at {flowing:.2f} s")
        (live,) = switch.admin("calls")
        assert live["state"] == "confirmed" and live["bearer"] == y

        assert call.hang_up().status == 200
        assert switch.admin("calls") == []
        (cdr,) = wait_cdrs(switch)
        assert cdr["disposition"] == "answered"
        assert cdr["bearer"] == f"unix:{bearers[y].control}"[:64]  # the column holds 64
    finally:
        call.close()
