"""One answered call through the real daemons: signalling through control,
RTP through a real bearer, a CDR at the end.

This is the composition check (daemon ↔ core ↔ calls ↔ bearer pool ↔ the
bearer process); the call flows one by one are tested against the B2BUA
itself.  Alice and Bob are the harness's ``Call`` (bench/harness/sip.py):
SipClients on UDP, their media plain UDP sockets sending RTP.
"""

from __future__ import annotations

import signal

from bench.harness.control import ControlProcess, wait_cdrs
from bench.harness.sip import Call, next_request
from softswitch.sip.message import make_response


def test_answered_call_relays_rtp_and_leaves_a_cdr(switch: ControlProcess) -> None:
    call = Call(switch)
    try:
        call.establish()
        got_b, got_a = call.talk()
        assert got_b >= 4 and got_a >= 4
        assert len(switch.admin("calls")) == 1
        # Alice hangs up; Bob's phone gets the BYE.
        assert call.hang_up().status == 200
        cdrs = wait_cdrs(switch)
        assert cdrs and cdrs[0]["disposition"] == "answered", cdrs
        assert switch.admin("calls") == []
    finally:
        call.close()


def test_sigterm_hangs_up_both_phones_and_keeps_the_cdr(switch: ControlProcess) -> None:
    call = Call(switch)
    try:
        call.establish()
        call.talk()
        switch.send_signal(signal.SIGTERM)
        # Both phones get a BYE from the stopping switch and answer it.
        for phone in (call.alice, call.bob):
            bye = next_request(phone, "BYE")
            phone.send(bytes(make_response(bye, 200)))
        assert switch.proc is not None and switch.proc.wait(15) == 0, switch.log()
        assert "unfinished at stop" not in switch.log()
        switch.start()  # the CDR was flushed by the DB thread at stop
        cdrs = wait_cdrs(switch)
        assert cdrs and cdrs[0]["disposition"] == "answered", cdrs
    finally:
        call.close()
