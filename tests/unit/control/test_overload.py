"""Entry control (softswitch/overload.py): which bytes are new work, and what
the Switch does with new work that waited too long in the queue."""

from __future__ import annotations

import pytest

from softswitch.overload import (
    ANSWERED_CHALLENGE,
    IN_PROGRESS,
    NEW,
    Admission,
    work_kind,
)
from softswitch.sip.transaction import Peer
from tests.unit.control.test_core import PEER, answers, make_switch, request

# ------------------------------------------------------------------ work_kind


@pytest.mark.parametrize(
    ("data", "new"),
    [
        (request("INVITE"), True),
        (request("REGISTER"), True),
        (request("OPTIONS"), True),
        (request("SUBSCRIBE"), True),
        (request("INVITE", to_tag="b2"), False),  # a re-INVITE
        (request("OPTIONS", to_tag="b2"), False),
        (request("BYE", to_tag="b2"), False),
        (request("ACK", to_tag="b2"), False),
        (request("CANCEL"), False),
        (request("INFO", to_tag="b2"), False),
        (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bK1\r\n\r\n", False),
        (b"INVITE sip:b@x SIP/2.0\r\nt: <sip:b@x> ; TAG = 9\r\n\r\n", False),  # compact To
        (b"INVITE sip:b@x SIP/2.0\r\nTo: <sip:b@x>\r\nFrom: <sip:a@x>;tag=1\r\n\r\n", True),
        (b"INVITE sip:b@x SIP/2.0\r\nTo: <sip:b@x>\r\nX-To: <sip:c@x>;tag=1\r\n\r\n", True),
        (b"garbage", False),  # left to the parser, which counts it
        (b"", False),
    ],
)
def test_work_kind_reads_method_and_to_tag(data: bytes, new: bool) -> None:
    assert (work_kind(data) != IN_PROGRESS) is new


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (request("INVITE"), NEW),
        (request("INVITE", extra=['Proxy-Authorization: Digest username="a"']), ANSWERED_CHALLENGE),
        (request("REGISTER", extra=['authorization : Digest username="a"']), ANSWERED_CHALLENGE),
        (request("REGISTER", extra=['X-Authorization: Digest username="a"']), NEW),
        (request("BYE", to_tag="b2", extra=['Authorization: Digest username="a"']), IN_PROGRESS),
    ],
)
def test_work_kind_tells_answered_challenges_apart(data: bytes, kind: int) -> None:
    assert work_kind(data) == kind


def test_answered_challenges_are_served_to_drop_delay_and_never_shed() -> None:
    a = Admission(shed_delay=0.05, drop_delay=0.2)
    assert [a.judge(age, 100.0, True) for age in (0.0, 0.1, 0.199, 0.2)] == [0, 0, 0, 2]


def test_admission_serves_sheds_then_drops_by_age() -> None:
    a = Admission(shed_delay=0.05, drop_delay=0.2)
    assert [a.judge(age, 100.0) for age in (0.0, 0.049, 0.05, 0.199, 0.2, 5.0)] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]


def test_streams_are_shed_only_while_udp_is_recently_behind() -> None:
    a = Admission(shed_delay=0.05, drop_delay=0.2)
    assert not a.behind(100.0)
    a.judge(0.1, 100.0)
    assert a.behind(100.5)
    assert not a.behind(101.5)  # no fresh evidence: serve
    a.judge(0.01, 101.6)
    assert not a.behind(101.6)


# ------------------------------------------------------------------ in the Switch


def test_fresh_new_work_is_served() -> None:
    switch = make_switch()
    switch.receive_sip(request("REGISTER"), PEER, 1000.0, age=0.09)
    assert [r.status for r in answers(switch)] == [401]  # challenged: the registrar saw it
    assert switch.counters["overload_shed"] == 0
    assert switch.counters["rx_REGISTER"] == 1


def test_late_new_work_gets_503_with_spread_retry_after_and_no_processing() -> None:
    switch = make_switch()
    retries = set()
    for n in range(40):
        data = request("INVITE").replace(b"core-test@", f"shed{n}@".encode())
        switch.receive_sip(data, PEER, 1000.0, age=0.2)
        (r,) = answers(switch)  # no 100 Trying: stateless, before the transaction layer
        assert r.status == 503 and r.reason == "Overloaded" and r.to.tag
        retries.add(int(r.get("Retry-After") or 0))
    assert switch.calls.seen == []  # nothing reached the B2BUA
    assert switch.counters["overload_shed"] == 40
    assert retries <= set(range(5, 11)) and len(retries) > 1
    assert switch.layer.unanswered() == 0  # no transaction kept per refusal


def test_very_late_new_work_is_dropped_unparsed() -> None:
    switch = make_switch()
    switch.receive_sip(b"REGISTER not even parsed", PEER, 1000.0, age=0.5)
    assert answers(switch) == []
    assert switch.drops["overload_dropped"] == 1
    assert switch.counters["rx_requests"] == 0


def test_work_in_progress_is_served_however_far_behind() -> None:
    switch = make_switch()
    switch.receive_sip(request("INVITE"), PEER, 1000.0, age=0.5)  # dropped: new work
    # The transport passes no age for work in progress: served even now.
    switch.receive_sip(request("BYE", to_tag="b2"), PEER, 1000.0)
    assert switch.calls.seen == [("request", "BYE")]


def test_new_work_on_a_stream_is_shed_while_udp_is_behind() -> None:
    switch = make_switch()
    tcp = Peer("tcp", "192.0.2.51", 40000)
    switch.receive_sip(request("INVITE").replace(b"core-test", b"u1"), PEER, 1000.0, age=0.2)
    answers(switch)
    switch.receive_sip(request("INVITE"), tcp, 1000.2, stream=True)
    (r,) = answers(switch)
    assert r.status == 503
    switch.receive_sip(request("BYE", to_tag="b2"), tcp, 1000.2, stream=True)
    assert switch.calls.seen == [("request", "BYE")]
    assert [r.status for r in answers(switch)] == [486]  # the fake B2BUA's answer
    # A second later with no fresh evidence, new work is served again.
    switch.receive_sip(request("OPTIONS"), tcp, 1001.5, stream=True)
    assert [r.status for r in answers(switch)] == [200]


def test_thresholds_are_reloadable() -> None:
    switch = make_switch()
    import copy

    new = copy.deepcopy(switch.config)
    new.overload.shed_delay = 1.0
    new.overload.drop_delay = 2.0
    applied, restart = switch.reconfigure(new)
    assert "overload.shed_delay" in applied and restart == []
    switch.receive_sip(request("OPTIONS"), PEER, 1000.0, age=0.5)
    assert [r.status for r in answers(switch)] == [200]


def test_503s_are_rationed_and_the_rest_of_late_work_dropped() -> None:
    a = Admission(shed_delay=0.1, drop_delay=0.3, shed_rate=5)
    assert [a.judge(0.2, 100.0) for _ in range(8)] == [1] * 5 + [2] * 3
    assert [a.judge(0.2, 100.4) for _ in range(3)] == [1, 1, 2]  # 0.4 s refills two
    assert a.judge(0.05, 100.4) == 0  # fresh work is served whatever the allowance


def test_switch_drops_late_work_beyond_the_503_allowance() -> None:
    switch = make_switch()
    switch.admission.shed_rate = 3
    for n in range(5):
        data = request("INVITE").replace(b"core-test@", f"ration{n}@".encode())
        switch.receive_sip(data, PEER, 1000.0, age=0.2)
    assert [r.status for r in answers(switch)] == [503, 503, 503]
    assert switch.counters["overload_shed"] == 3
    assert switch.drops["overload_dropped"] == 2
