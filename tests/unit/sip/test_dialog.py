"""SIP dialogs (RFC 3261 §12): creation on both sides, in-dialog requests,
route sets, CSeq ordering and target refresh."""

from __future__ import annotations

import pytest

from softswitch.sip.dialog import (
    Dialog,
    DialogState,
    request_dialog_id,
    response_dialog_id,
)
from softswitch.sip.errors import SipError
from softswitch.sip.message import Request, Response, make_response, parse
from softswitch.sip.transaction import TransitionError

# Alice calls Bob through two record-routing proxies: p1 next to Alice, p2
# next to Bob. Record-Route lists them from Bob's side: p2, then p1 (§16.6).
INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2\r\n"
    "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1\r\n"
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKalice\r\n"
    "Max-Forwards: 68\r\n"
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    "Record-Route: <sip:p2.example.com;lr>\r\n"
    "Record-Route: <sip:p1.example.com;lr>\r\n"
    "Content-Length: 0\r\n\r\n"
)
BOB_CONTACT = "<sip:bob@192.0.2.4>"
VIA = "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnew"


def invite() -> Request:
    msg = parse(INVITE.encode())
    assert isinstance(msg, Request)
    return msg


def answer(request: Request, status: int = 200, *, tag: str | None = "a6c85cf") -> Response:
    """Bob's response as Alice receives it: Record-Route copied (§12.1.1)."""
    response = make_response(request, status, to_tag=tag)
    for rr in request.get_all("Record-Route"):
        response.add("Record-Route", rr)
    response.add("Contact", BOB_CONTACT)
    received = parse(bytes(response))
    assert isinstance(received, Response)
    return received


def uac_dialog() -> Dialog:
    return Dialog.from_uac(invite(), answer(invite()))


def uas_dialog() -> Dialog:
    return Dialog.from_uas(invite(), "a6c85cf", local_target=BOB_CONTACT)


# --------------------------------------------------------------------------- creation


def test_uac_dialog_from_a_2xx_reverses_the_record_route_into_its_route_set():
    d = uac_dialog()
    assert d.id == ("a84b4c76e66710@pc33.atlanta.example.com", "1928301774", "a6c85cf")
    assert d.state is DialogState.CONFIRMED
    assert (d.local_seq, d.remote_seq) == (314159, None)
    assert str(d.local_uri) == '"Alice" <sip:alice@atlanta.example.com>'
    assert str(d.remote_uri) == '"Bob" <sip:bob@biloxi.example.com>'
    assert str(d.remote_target) == "sip:bob@192.0.2.4"
    # §12.1.2: reversed, so Alice's requests go to p1 first.
    assert [str(r) for r in d.route_set] == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert str(d.local_target) == "<sip:alice@pc33.atlanta.example.com>"
    assert d.secure is False


def test_uas_dialog_keeps_the_record_route_order_and_the_callers_contact():
    d = uas_dialog()
    assert d.id == ("a84b4c76e66710@pc33.atlanta.example.com", "a6c85cf", "1928301774")
    assert (d.local_seq, d.remote_seq) == (None, 314159)
    assert str(d.local_uri) == '"Bob" <sip:bob@biloxi.example.com>'
    assert str(d.remote_uri) == '"Alice" <sip:alice@atlanta.example.com>'
    assert str(d.remote_target) == "sip:alice@pc33.atlanta.example.com"
    # §12.1.1: as received, so Bob's requests go to p2 first.
    assert [str(r) for r in d.route_set] == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]


def test_the_dialog_ids_seen_by_each_side_come_from_the_messages():
    request = invite()
    response = answer(request)
    assert response_dialog_id(response) == uac_dialog().id
    bye = uac_dialog().create_request("BYE", via=VIA)
    assert request_dialog_id(parse(bytes(bye))) == uas_dialog().id


def test_a_dialog_shares_nothing_mutable_with_the_messages_it_came_from():
    request = invite()
    response = answer(request)
    d = Dialog.from_uac(request, response)
    response.contacts[0].uri.host = "evil.example.com"
    response.record_routes[0].uri.host = "evil.example.com"
    request.from_.display = "Mallory"
    assert str(d.remote_target) == "sip:bob@192.0.2.4"
    assert "evil" not in str(d.route_set)
    assert d.local_uri.display == "Alice"


def test_provisional_with_a_to_tag_creates_an_early_dialog_that_the_2xx_confirms():
    request = invite()
    ringing = answer(request, 180)
    d = Dialog.from_uac(request, ringing)
    assert d.state is DialogState.EARLY
    # The 2xx comes back through a changed path: §13.2.2.4 recomputes it.
    ok = make_response(request, 200, to_tag="a6c85cf")
    ok.add("Record-Route", "<sip:p3.example.com;lr>")
    ok.add("Contact", "<sip:bob@192.0.2.99>")
    d.receive_response(parse(bytes(ok)))
    assert d.state is DialogState.CONFIRMED
    assert [str(r) for r in d.route_set] == ["<sip:p3.example.com;lr>"]
    assert str(d.remote_target) == "sip:bob@192.0.2.99"


def test_a_failure_to_the_invite_ends_an_early_dialog():
    request = invite()
    d = Dialog.from_uac(request, answer(request, 183))
    d.receive_response(answer(request, 486))
    assert d.state is DialogState.TERMINATED


@pytest.mark.parametrize(("status", "tag"), [(100, "x"), (180, None), (404, "x")])
def test_responses_that_create_no_dialog_are_refused(status, tag):
    with pytest.raises(ValueError, match="does not create a dialog"):
        Dialog.from_uac(invite(), answer(invite(), status, tag=tag))


def test_uas_dialog_needs_the_callers_contact():
    text = INVITE.replace("Contact: <sip:alice@pc33.atlanta.example.com>\r\n", "")
    with pytest.raises(SipError) as err:
        Dialog.from_uas(parse(text.encode()), "t")
    assert (err.value.status, err.value.reason) == (400, "Missing Contact header")


def test_secure_only_for_sips_over_tls():
    request = parse(INVITE.replace("INVITE sip:bob", "INVITE sips:bob").encode())
    assert Dialog.from_uas(request, "t", over_tls=True).secure is True
    assert Dialog.from_uas(request, "t").secure is False
    assert Dialog.from_uas(invite(), "t", over_tls=True).secure is False


# --------------------------------------------------------------------------- requests


def test_uac_bye_goes_to_the_remote_target_through_the_loose_route_set():
    d = uac_dialog()
    bye = parse(bytes(d.create_request("BYE", via=VIA)))
    assert str(bye.uri) == "sip:bob@192.0.2.4"  # §12.2.1.1: lr, so the target
    assert bye.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert (bye.cseq, bye.cseq_method) == (314160, "BYE")
    assert bye.get("From") == '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
    assert bye.get("To") == '"Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf'
    assert bye.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert bye.get("Via") == VIA and bye.max_forwards == 70
    assert bye.get("Contact") is None  # BYE refreshes no target


def test_local_cseq_increments_by_one_and_ack_and_cancel_reuse_it():
    d = uac_dialog()
    reinvite = d.create_request("INVITE", via=VIA, body=b"v=0\r\n", content_type="application/sdp")
    info = d.create_request("INFO", via=VIA)
    cancel = d.create_request("CANCEL", via=VIA)
    assert [reinvite.cseq, info.cseq, cancel.cseq] == [314160, 314161, 314161]
    ack = d.create_ack(314160, via=VIA)
    assert (ack.cseq, ack.cseq_method, ack.method) == (314160, "ACK", "ACK")
    assert d.local_seq == 314161
    assert d.create_request("BYE", via=VIA).cseq == 314162


def test_reinvite_carries_our_contact_and_body():
    d = uac_dialog()
    reinvite = parse(
        bytes(
            d.create_request(
                "INVITE",
                via=VIA,
                body=b"v=0\r\n",
                content_type="application/sdp",
                headers=[("Supported", "timer")],
            )
        )
    )
    assert reinvite.get("Contact") == "<sip:alice@pc33.atlanta.example.com>"
    assert reinvite.content_type == "application/sdp" and reinvite.body == b"v=0\r\n"
    assert reinvite.get("Supported") == "timer"


def test_ack_for_2xx_is_routed_like_any_in_dialog_request():
    d = uac_dialog()
    ack = parse(bytes(d.create_ack(314159, via=VIA)))
    assert str(ack.uri) == "sip:bob@192.0.2.4"
    assert ack.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    assert ack.to.tag == "a6c85cf" and ack.get("Contact") is None


def test_uas_first_request_picks_a_random_cseq_below_2_31_then_counts_up():
    d = uas_dialog()
    bye = parse(bytes(d.create_request("BYE", via=VIA)))
    assert 0 < bye.cseq < 2**31 and d.local_seq == bye.cseq
    assert str(bye.uri) == "sip:alice@pc33.atlanta.example.com"
    assert bye.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    assert bye.get("From") == '"Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf'
    assert bye.get("To") == '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
    assert d.create_request("INFO", via=VIA).cseq == bye.cseq + 1
    with pytest.raises(ValueError, match="no request in this dialog"):
        uas_dialog().create_request("CANCEL", via=VIA)


def test_strict_route_puts_the_first_route_in_the_request_uri_and_the_target_last():
    text = INVITE.replace(
        "Record-Route: <sip:p2.example.com;lr>\r\nRecord-Route: <sip:p1.example.com;lr>\r\n",
        "Record-Route: <sip:p2.example.com;lr>\r\n"
        "Record-Route: <sip:p1.example.com;method=INVITE;maddr=10.0.0.1?x=y>\r\n",
    )
    request = parse(text.encode())
    d = Dialog.from_uac(request, answer(request))
    bye = parse(bytes(d.create_request("BYE", via=VIA)))
    # §12.2.1.1: p1 has no lr. Its URI becomes the Request-URI, minus what
    # a Request-URI may not carry (method, headers; §19.1.1).
    assert str(bye.uri) == "sip:p1.example.com;maddr=10.0.0.1"
    assert bye.get_all("Route") == ["<sip:p2.example.com;lr>", "<sip:bob@192.0.2.4>"]
    # The route set itself is unchanged for the next request.
    assert str(d.route_set[0].uri) == "sip:p1.example.com;method=INVITE;maddr=10.0.0.1?x=y"


def test_no_route_set_sends_straight_to_the_target_without_route_headers():
    text = INVITE.replace("Record-Route: <sip:p2.example.com;lr>\r\n", "").replace(
        "Record-Route: <sip:p1.example.com;lr>\r\n", ""
    )
    request = parse(text.encode())
    bye = Dialog.from_uac(request, answer(request)).create_request("BYE", via=VIA)
    assert str(bye.uri) == "sip:bob@192.0.2.4" and bye.get_all("Route") == []


# --------------------------------------------------------------------------- receiving


def in_dialog(method: str, cseq: int, *, contact: str | None = None, to_tag: str = "a6c85cf"):
    """A request from Alice to Bob within the dialog, as Bob receives it."""
    lines = [
        f"{method} sip:bob@192.0.2.4 SIP/2.0",
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK" + f"{method}{cseq}",
        "Max-Forwards: 70",
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
        f"To: Bob <sip:bob@biloxi.example.com>;tag={to_tag}",
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
        f"CSeq: {cseq} {method}",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    return parse(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())


def test_remote_cseq_must_increase_lower_or_equal_gets_500():
    d = uas_dialog()
    d.receive_request(in_dialog("INFO", 314160))
    assert d.remote_seq == 314160
    for stale in (314159, 314160):
        with pytest.raises(SipError) as err:
            d.receive_request(in_dialog("INFO", stale))
        assert err.value.status == 500
    # Gaps are fine (§12.2.2: only "in order" is required of the receiver).
    d.receive_request(in_dialog("BYE", 314170))
    assert d.remote_seq == 314170


def test_ack_and_cancel_are_not_sequenced():
    d = uas_dialog()
    d.receive_request(in_dialog("ACK", 314159))
    d.receive_request(in_dialog("CANCEL", 314159))
    assert d.remote_seq == 314159


def test_uas_remote_seq_set_by_the_first_request_when_empty():
    d = uac_dialog()  # Alice's side: Bob has sent nothing yet
    bye_from_bob = parse(bytes(uas_dialog().create_request("BYE", via=VIA)))
    d.receive_request(bye_from_bob)
    assert d.remote_seq == bye_from_bob.cseq


def test_reinvite_with_a_new_contact_refreshes_the_remote_target():
    d = uas_dialog()
    d.receive_request(in_dialog("INVITE", 314160, contact="<sip:alice@198.51.100.7:5070>"))
    assert str(d.remote_target) == "sip:alice@198.51.100.7:5070"
    bye = d.create_request("BYE", via=VIA)
    assert str(bye.uri) == "sip:alice@198.51.100.7:5070"
    # INFO is not a target refresh: its Contact changes nothing.
    d.receive_request(in_dialog("INFO", 314161, contact="<sip:alice@203.0.113.1>"))
    assert str(d.remote_target) == "sip:alice@198.51.100.7:5070"


def test_2xx_to_our_reinvite_refreshes_the_remote_target():
    d = uac_dialog()
    reinvite = parse(bytes(d.create_request("INVITE", via=VIA)))
    ok = make_response(reinvite, 200)
    ok.add("Contact", "<sip:bob@192.0.2.44>")
    d.receive_response(parse(bytes(ok)))
    assert str(d.remote_target) == "sip:bob@192.0.2.44"
    assert d.state is DialogState.CONFIRMED
    # A 488 to a re-INVITE leaves a confirmed dialog alone.
    d.receive_response(make_response(reinvite, 488))
    assert d.state is DialogState.CONFIRMED


@pytest.mark.parametrize("status", [408, 481])
def test_408_or_481_to_an_in_dialog_request_ends_the_dialog(status):
    d = uac_dialog()
    info = parse(bytes(d.create_request("INFO", via=VIA)))
    d.receive_response(make_response(info, status))
    assert d.state is DialogState.TERMINATED


def test_a_request_of_another_dialog_gets_481():
    d = uas_dialog()
    with pytest.raises(SipError) as err:
        d.receive_request(in_dialog("BYE", 314160, to_tag="someone-else"))
    assert err.value.status == 481


def test_a_terminated_dialog_cannot_be_confirmed_again():
    d = uac_dialog()
    d.terminate()
    d.terminate()  # idempotent
    with pytest.raises(TransitionError, match="TERMINATED cannot become CONFIRMED"):
        d.confirm()
