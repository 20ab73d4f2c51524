"""The B2BUA's pure parts: state tables, refusal table, media decisions, routing."""

from __future__ import annotations

import pytest

from softswitch.calls.media import (
    answered_codecs,
    audio_index,
    callee_codecs,
    caller_codec,
    direction_of,
    leg_spec,
    parse_sdp,
    usable_codecs,
)
from softswitch.calls.routing import Conference, Destination, route
from softswitch.calls.state import (
    CALL_TRANSITIONS,
    FORK_TRANSITIONS,
    LIVE_STATES,
    REFUSALS,
    CallInput,
    CallState,
    Fork,
    ForkInput,
    ForkState,
    Refusal,
    TransitionError,
    disposition_for,
)
from softswitch.model.cdr import Disposition
from softswitch.protocol import Direction
from softswitch.sip.sdp import Codec, SdpError, SessionDescription
from softswitch.sip.uri import parse_uri
from tests.unit.control.calls_harness import DOMAIN, Switch, sdp

SUPPORTED = ["PCMU", "PCMA", "telephone-event"]


def test_every_live_call_state_can_hang_up_and_only_those() -> None:
    for state in CallState:
        assert ((state, CallInput.HANGUP) in CALL_TRANSITIONS) == (state in LIVE_STATES)
    assert CALL_TRANSITIONS[(CallState.TERMINATING, CallInput.DELETED)] is CallState.ENDED


def test_illegal_fork_transition_raises() -> None:
    fork = Fork(binding=None, peer=None, request=None, tx=None)  # type: ignore[arg-type]
    fork.step(ForkInput.FAILURE)
    assert fork.state is ForkState.FAILED
    with pytest.raises(TransitionError):
        fork.step(ForkInput.TIMEOUT)  # timer B cannot fire after a final response


def test_fork_table_covers_every_network_input_in_every_state_but_timeouts() -> None:
    for state in ForkState:
        for inp in (ForkInput.PROVISIONAL, ForkInput.SUCCESS, ForkInput.CANCEL):
            assert (state, inp) in FORK_TRANSITIONS, (state, inp)


def test_every_refusal_has_a_status_and_4xx_to_6xx_only() -> None:
    assert set(REFUSALS) == set(Refusal)
    assert all(400 <= status < 700 for status, _ in REFUSALS.values())


@pytest.mark.parametrize(
    ("status", "disposition"),
    [
        (486, Disposition.BUSY),
        (600, Disposition.BUSY),
        (603, Disposition.REJECTED),
        (480, Disposition.NO_ANSWER),
        (408, Disposition.NO_ANSWER),
        (487, Disposition.CANCELLED),
        (500, Disposition.FAILED),
        (404, Disposition.REJECTED),
    ],
)
def test_disposition_of_a_relayed_final(status: int, disposition: Disposition) -> None:
    assert disposition_for(status) is disposition


def test_lone_pcmu_gets_its_pcma_twin_and_telephone_event_stays_last() -> None:
    offered = [Codec(0, "PCMU", 8000), Codec(101, "telephone-event", 8000, 1, "0-16")]
    assert [c.name for c in callee_codecs(offered, SUPPORTED)] == [
        "PCMU",
        "PCMA",
        "telephone-event",
    ]


def test_twin_is_renumbered_when_its_static_number_is_taken() -> None:
    offered = [Codec(0, "PCMU", 8000), Codec(8, "telephone-event", 8000)]  # odd, but seen
    twin = callee_codecs(offered, SUPPORTED)[1]
    assert (twin.name, twin.pt) == ("PCMA", 96)


def test_no_twin_when_the_switch_does_not_support_it() -> None:
    offered = [Codec(0, "PCMU", 8000)]
    assert [c.name for c in callee_codecs(offered, ["PCMU"])] == ["PCMU"]


def test_caller_codec_follows_the_callee_when_it_can() -> None:
    caller = [Codec(0, "PCMU", 8000), Codec(8, "PCMA", 8000)]
    assert caller_codec(caller, Codec(8, "pcma", 8000)).pt == 8
    assert caller_codec(caller, Codec(9, "G722", 8000)).pt == 0


def test_legacy_null_address_hold_reads_as_not_receiving() -> None:
    body = sdp("0.0.0.0", 4000)
    md = SessionDescription.parse(body).media[0]
    assert direction_of(md) == "sendonly"
    spec = leg_spec(md, md.codecs, md.codecs[0], direction_of(md))
    assert spec.direction is Direction.SENDONLY and spec.address == "0.0.0.0"


def test_leg_spec_carries_telephone_event_and_ptime() -> None:
    body = sdp("198.51.100.1", 4000) + b"a=ptime:30\r\n"
    md = SessionDescription.parse(body).media[0]
    spec = leg_spec(md, usable_codecs(md, SUPPORTED), md.codecs[0], "sendrecv")
    assert (spec.selected_pt, spec.dtmf_pt, spec.ptime, spec.port) == (0, 101, 30, 4000)


def test_sdp_problems_are_400_or_488() -> None:
    with pytest.raises(SdpError) as e:
        parse_sdp(b"", None)
    assert e.value.status == 488
    with pytest.raises(SdpError) as e:
        parse_sdp(b"v=0\r\nbogus\r\n", "application/sdp")
    assert e.value.status == 400
    video_only = sdp("198.51.100.1", 4000).replace(b"m=audio", b"m=video")
    with pytest.raises(SdpError) as e:
        audio_index(SessionDescription.parse(video_only))
    assert e.value.status == 488
    refused = SessionDescription.parse(sdp("198.51.100.1", 0))
    with pytest.raises(SdpError):
        answered_codecs(refused, 0)


def test_routing_order_conference_unknown_unregistered_limit() -> None:
    sw = Switch(max_calls={"bob": 1})
    now = sw.now

    def routed(uri: str, active: int = 0) -> Conference | Destination | Refusal:
        return route(
            parse_uri(uri),
            DOMAIN,
            prefix="conf",
            directory=sw.directory,
            location=sw.location,
            active_calls=lambda u, d: active,
            now=now,
        )

    def where(user: str, active: int = 0) -> Conference | Destination | Refusal:
        return routed(f"sip:{user}@{DOMAIN}", active)

    assert where("conf7") == Conference("conf7")
    assert where("conf") is Refusal.UNKNOWN_CALLEE  # the prefix alone is no room
    assert where("zoe") is Refusal.UNKNOWN_CALLEE
    assert where("bob") is Refusal.NOT_REGISTERED
    sw.register(sw.phone("bob", "198.51.100.20"))
    assert isinstance(where("bob"), Destination)
    assert where("bob", active=1) is Refusal.CALLEE_OVER_LIMIT
    assert routed("tel:+15551234") is Refusal.UNKNOWN_CALLEE
