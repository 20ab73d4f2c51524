"""SIP transactions (RFC 3261 §17, RFC 6026) on a fake clock: plain floats.

Every deadline is asserted exactly: with T1 = 0.5 all of them are sums of
powers of two, so float arithmetic is exact.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softswitch.sip.message import Request, Response, make_response, parse
from softswitch.sip.transaction import (
    MAGIC_COOKIE,
    AckReceived,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Input,
    Peer,
    RequestReceived,
    ResponseReceived,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    StrayResponse,
    Timers,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransitionError,
    TransportError,
    new_branch,
)

PHONE = Peer("udp", "192.0.2.10", 5060)  # where requests come from, as the switch sees it
SWITCH = Peer("udp", "192.0.2.20", 5060)  # where the phone sends, as the phone sees it
PHONE_TCP = Peer("tcp", "192.0.2.10", 40111)
SWITCH_TCP = Peer("tcp", "192.0.2.20", 5060)


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK776asdhds",
    sent_by: str = "192.0.2.10:5060",
    transport: str = "UDP",
    cseq: int = 1,
    cseq_method: str | None = None,
    to_tag: str | None = None,
    from_tag: str = "1928301774",
    call_id: str = "a84b4c76e66710@pc33",
    uri: str = "sip:bob@192.0.2.20",
    extra: str = "",
) -> Request:
    """A request as it would arrive from the wire (parsed from text)."""
    via = f"SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch else "")
    to = "Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: Alice <sip:alice@example.com>;tag={from_tag}\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:alice@192.0.2.10>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    msg = parse(text.encode())
    assert isinstance(msg, Request)
    return msg


def wire(message: Request | Response) -> Request | Response:
    """What the other side parses after ``message`` crossed the network."""
    return parse(bytes(message))


def sent(layer: TransactionLayer) -> list[bytes]:
    return [data for data, _ in layer.datagrams_to_send()]


def run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, list, list[bytes]]]:
    """Fire every timer up to ``until``: (instant, events, datagrams) per firing."""
    fired = []
    for _ in range(100_000):
        deadline = layer.get_timer()
        if deadline is None or deadline > until:
            break
        events = layer.handle_timer(deadline)
        fired.append((deadline, events, sent(layer)))
    return fired


def kinds(events: list) -> list[type]:
    return [type(e) for e in events]


# --------------------------------------------------------------------------- timers


def test_default_timers_follow_rfc3261_table_4_and_rfc6026():
    t = Timers()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert (t.a, t.b, t.e, t.f, t.g, t.h) == (0.5, 32.0, 0.5, 32.0, 0.5, 32.0)
    assert (t.d(False), t.i(False), t.j(False), t.k(False)) == (32.0, 5.0, 32.0, 5.0)
    assert (t.d(True), t.i(True), t.j(True), t.k(True)) == (0.0, 0.0, 0.0, 0.0)
    assert (t.l, t.m) == (32.0, 32.0)


def test_raising_t1_stretches_timer_d_to_outlast_the_servers_timer_h():
    t = Timers(t1=1.0)
    assert t.h == 64.0
    assert t.d(False) == 64.0


@pytest.mark.parametrize("kwargs", [{"t1": 0}, {"t1": 5.0, "t2": 4.0}, {"t4": 0}])
def test_nonsense_timer_values_are_refused(kwargs):
    with pytest.raises(ValueError, match="timers need"):
        Timers(**kwargs)


def test_new_branch_has_the_magic_cookie_and_never_repeats():
    branches = {new_branch() for _ in range(1000)}
    assert len(branches) == 1000
    assert all(b.startswith(MAGIC_COOKIE) and len(b) > 20 for b in branches)


# --------------------------------------------------------------------------- client INVITE


def test_client_invite_retransmits_with_timer_a_doubling_uncapped_then_times_out_at_64_t1():
    layer = TransactionLayer()
    invite = request(branch=new_branch())
    tx = layer.send_request(invite, SWITCH, 0.0)
    assert isinstance(tx, ClientInviteTransaction) and tx.state is State.CALLING
    first = sent(layer)
    assert first == [bytes(invite)]

    fired = run_timers(layer, until=100.0)

    retransmissions = [(t, data) for t, _, data in fired if data]
    # Timer A: T1, 2*T1, 4*T1 ... not capped by T2 (§17.1.1.2): 8 s and 16 s gaps.
    assert [t for t, _ in retransmissions] == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(data == first for _, data in retransmissions)
    # Timer B = 64*T1: the TU is told, then the transaction is gone.
    last_instant, last_events, _ = fired[-1]
    assert last_instant == 32.0
    assert kinds(last_events) == [TransactionTimeout, TransactionTerminated]
    assert last_events[0].tx is tx
    assert layer.get_timer() is None and len(layer) == 0
    assert layer.stats.timeouts == 1 and layer.stats.retransmitted == 6


def test_client_invite_over_tcp_is_never_retransmitted_but_still_times_out():
    layer = TransactionLayer()
    layer.send_request(request(branch=new_branch(), transport="TCP"), SWITCH_TCP, 0.0)
    assert len(sent(layer)) == 1
    assert layer.get_timer() == 32.0
    fired = run_timers(layer, until=100.0)
    assert [(t, kinds(ev), data) for t, ev, data in fired] == [
        (32.0, [TransactionTimeout, TransactionTerminated], [])
    ]


def test_a_provisional_response_stops_invite_retransmissions_and_timer_b():
    layer = TransactionLayer()
    invite = request(branch=new_branch())
    tx = layer.send_request(invite, SWITCH, 0.0)
    sent(layer)
    run_timers(layer, until=0.5)  # one retransmission
    events = layer.receive(wire(make_response(invite, 180, to_tag="b1")), SWITCH, 0.7)
    assert kinds(events) == [ResponseReceived]
    assert tx.state is State.PROCEEDING
    assert layer.get_timer() is None  # the TU decides how long it rings
    events = layer.receive(wire(make_response(invite, 183, to_tag="b1")), SWITCH, 0.8)
    assert [e.response.status for e in events] == [183]


def test_client_invite_acks_a_486_itself_and_reacks_every_retransmitted_486():
    layer = TransactionLayer()
    invite = request(branch="z9hG4bKbusy1", extra="Route: <sip:p1.example.com;lr>\r\n")
    tx = layer.send_request(invite, SWITCH, 0.0)
    sent(layer)
    busy = make_response(invite, 486, to_tag="callee9")

    events = layer.receive(wire(busy), SWITCH, 1.0)

    assert kinds(events) == [ResponseReceived] and events[0].response.status == 486
    assert tx.state is State.COMPLETED
    [ack_bytes] = sent(layer)
    ack = parse(ack_bytes)
    # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number, one Via equal
    # to the INVITE's top Via (same branch), To from the response, same Route.
    assert ack.method == "ACK"
    assert str(ack.uri) == str(invite.uri)
    assert ack.via.branch == "z9hG4bKbusy1" and len(ack.vias) == 1
    assert (ack.cseq, ack.cseq_method) == (1, "ACK")
    assert ack.to.tag == "callee9"
    assert ack.from_.tag == invite.from_.tag and ack.call_id == invite.call_id
    assert [str(r.uri) for r in ack.routes] == ["sip:p1.example.com;lr"]
    assert ack.body == b""

    # The 486 again: absorbed, and answered with the same ACK bytes.
    assert layer.receive(wire(busy), SWITCH, 1.5) == []
    assert sent(layer) == [ack_bytes]
    assert layer.stats.absorbed == 1

    # Timer D (32 s over UDP) then ends it.
    assert layer.get_timer() == 33.0
    [(t, events, _)] = run_timers(layer, until=100.0)
    assert (t, kinds(events)) == (33.0, [TransactionTerminated])


def test_client_invite_over_tcp_ends_as_soon_as_it_acks_a_failure():
    layer = TransactionLayer()
    invite = request(branch=new_branch(), transport="TCP")
    layer.send_request(invite, SWITCH_TCP, 0.0)
    sent(layer)
    events = layer.receive(wire(make_response(invite, 603, to_tag="x")), SWITCH_TCP, 0.2)
    assert kinds(events) == [ResponseReceived, TransactionTerminated]  # timer D = 0
    assert parse(sent(layer)[0]).method == "ACK"
    assert len(layer) == 0 and layer.get_timer() is None


def test_client_invite_2xx_is_accepted_and_every_copy_goes_up_until_timer_m():
    layer = TransactionLayer()
    invite = request(branch=new_branch())
    tx = layer.send_request(invite, SWITCH, 0.0)
    sent(layer)
    ok = make_response(invite, 200, to_tag="b1")

    first = layer.receive(wire(ok), SWITCH, 2.0)
    assert kinds(first) == [ResponseReceived] and tx.state is State.ACCEPTED
    assert sent(layer) == []  # the ACK for a 2xx is the TU's, end-to-end
    again = layer.receive(wire(ok), SWITCH, 2.5)
    assert kinds(again) == [ResponseReceived]  # so the TU can re-ACK (§13.2.2.4)
    assert layer.get_timer() == 34.0  # timer M = 64*T1 after the first 2xx

    [(_, events, _)] = run_timers(layer, until=100.0)
    assert kinds(events) == [TransactionTerminated]
    late = layer.receive(wire(ok), SWITCH, 40.0)
    assert kinds(late) == [StrayResponse] and layer.stats.stray_responses == 1


def test_create_cancel_copies_the_invite_and_starts_its_own_transaction():
    layer = TransactionLayer()
    invite = request(branch="z9hG4bKring", extra="Route: <sip:p1;lr>\r\n")
    itx = layer.send_request(invite, SWITCH, 0.0)
    layer.receive(wire(make_response(invite, 180, to_tag="t")), SWITCH, 0.1)
    cancel = itx.create_cancel()
    # §9.1: same R-URI, Call-ID, To (no tag), From, CSeq number, top Via, Route.
    assert cancel.method == "CANCEL" and str(cancel.uri) == str(invite.uri)
    assert cancel.via.branch == "z9hG4bKring"
    assert (cancel.cseq, cancel.cseq_method) == (1, "CANCEL")
    assert cancel.to.tag is None and cancel.get("To") == invite.get("To")
    assert cancel.get_all("Route") == ["<sip:p1;lr>"]

    ctx = layer.send_request(cancel, SWITCH, 0.2)
    assert isinstance(ctx, ClientNonInviteTransaction)
    # §17.1.3: the CSeq method tells the two transactions of one branch apart.
    events = layer.receive(wire(make_response(cancel, 200, to_tag="t")), SWITCH, 0.3)
    assert events[0].tx is ctx
    events = layer.receive(wire(make_response(invite, 487, to_tag="t")), SWITCH, 0.4)
    assert events[0].tx is itx and itx.state is State.COMPLETED


def test_send_request_refuses_acks_foreign_branches_and_reused_branches():
    layer = TransactionLayer()
    with pytest.raises(ValueError, match="use send_stateless"):
        layer.send_request(request("ACK"), SWITCH, 0.0)
    with pytest.raises(ValueError, match="lacks the z9hG4bK cookie"):
        layer.send_request(request(branch="1234"), SWITCH, 0.0)
    layer.send_request(request(branch="z9hG4bKsame"), SWITCH, 0.0)
    with pytest.raises(ValueError, match="in progress"):
        layer.send_request(request(branch="z9hG4bKsame"), SWITCH, 0.0)


def test_transport_error_ends_a_client_transaction_and_tells_the_tu():
    layer = TransactionLayer()
    tx = layer.send_request(request(branch=new_branch()), SWITCH, 0.0)
    events = layer.transport_error(tx, 0.1)
    assert kinds(events) == [TransportError, TransactionTerminated]
    assert layer.get_timer() is None
    assert layer.transport_error(tx, 0.2) == []


# --------------------------------------------------------------------------- client non-INVITE


def test_client_non_invite_retransmits_with_timer_e_capped_at_t2_then_times_out_at_f():
    layer = TransactionLayer()
    layer.send_request(request("OPTIONS", branch=new_branch()), SWITCH, 0.0)
    sent(layer)
    fired = run_timers(layer, until=100.0)
    # 0.5, 1, 2, 4, 4, 4 ... (§17.1.2.2)
    assert [t for t, _, data in fired if data] == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
    ]  # fmt: skip
    assert fired[-1][0] == 32.0
    assert kinds(fired[-1][1]) == [TransactionTimeout, TransactionTerminated]


def test_client_non_invite_keeps_retransmitting_every_t2_after_a_provisional():
    layer = TransactionLayer()
    bye = request("BYE", branch=new_branch(), to_tag="b1")
    tx = layer.send_request(bye, SWITCH, 0.0)
    sent(layer)
    run_timers(layer, until=0.5)  # E fired once; next due at 1.5
    layer.receive(wire(make_response(bye, 100)), SWITCH, 0.6)
    assert tx.state is State.PROCEEDING
    fired = run_timers(layer, until=100.0)
    assert [t for t, _, data in fired if data] == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert fired[-1][0] == 32.0 and isinstance(fired[-1][1][0], TransactionTimeout)


def test_client_non_invite_absorbs_final_response_copies_until_timer_k():
    layer = TransactionLayer()
    options = request("OPTIONS", branch=new_branch())
    tx = layer.send_request(options, SWITCH, 0.0)
    sent(layer)
    ok = make_response(options, 200, to_tag="z")
    assert kinds(layer.receive(wire(ok), SWITCH, 0.1)) == [ResponseReceived]
    assert tx.state is State.COMPLETED
    assert layer.receive(wire(ok), SWITCH, 0.2) == []
    assert layer.receive(wire(make_response(options, 500)), SWITCH, 0.3) == []
    assert layer.stats.absorbed == 2
    assert layer.get_timer() == 5.1  # timer K = T4
    [(_, events, _)] = run_timers(layer, until=100.0)
    assert kinds(events) == [TransactionTerminated]


def test_client_non_invite_over_tcp_ends_with_its_final_response():
    layer = TransactionLayer()
    options = request("OPTIONS", branch=new_branch(), transport="TCP")
    layer.send_request(options, SWITCH_TCP, 0.0)
    events = layer.receive(wire(make_response(options, 200)), SWITCH_TCP, 0.1)
    assert kinds(events) == [ResponseReceived, TransactionTerminated]  # timer K = 0


def test_stray_response_is_reported_and_counted():
    layer = TransactionLayer()
    stray = make_response(request(branch="z9hG4bKnobody"), 200, to_tag="q")
    events = layer.receive(wire(stray), SWITCH, 0.0)
    assert kinds(events) == [StrayResponse] and events[0].peer == SWITCH
    assert layer.stats.stray_responses == 1


# --------------------------------------------------------------------------- server INVITE


def test_server_sends_100_trying_at_once_and_answers_invite_copies_from_the_transaction():
    layer = TransactionLayer(auto_trying=True)
    invite = request(extra="Timestamp: 54\r\n")
    events = layer.receive(invite, PHONE, 0.0)
    assert kinds(events) == [RequestReceived]
    tx = events[0].tx
    assert isinstance(tx, ServerInviteTransaction) and tx.state is State.PROCEEDING
    [trying] = sent(layer)
    assert parse(trying).status == 100 and parse(trying).get("Timestamp") == "54"

    layer.send_response(tx, make_response(tx.request, 180, to_tag="b7"), 0.1)
    [ringing] = sent(layer)
    # The retransmitted INVITE never reaches the TU; it gets the 180's bytes.
    assert layer.receive(request(), PHONE, 0.5) == []
    assert sent(layer) == [ringing]
    assert layer.stats.absorbed == 1 and layer.stats.server_created == 1


def test_server_without_auto_trying_absorbs_invite_copies_until_the_tu_answers():
    layer = TransactionLayer()
    assert kinds(layer.receive(request(), PHONE, 0.0)) == [RequestReceived]
    assert sent(layer) == []
    assert layer.receive(request(), PHONE, 0.5) == []
    assert sent(layer) == []


def test_server_retransmits_a_failure_per_timer_g_capped_at_t2_until_timer_h():
    layer = TransactionLayer()
    [received] = layer.receive(request(), PHONE, 0.0)
    layer.send_response(received.tx, make_response(received.request, 486, to_tag="b"), 1.0)
    [busy] = sent(layer)

    fired = run_timers(layer, until=100.0)

    retransmissions = [(t, data) for t, _, data in fired if data]
    # Timer G: T1, 2*T1 ... capped at T2 (§17.2.1), from the 486 at t=1.
    assert [t for t, _ in retransmissions] == [
        1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5,
    ]  # fmt: skip
    assert all(data == [busy] for _, data in retransmissions)
    # Timer H = 64*T1: no ACK ever came.
    assert fired[-1][0] == 33.0
    assert kinds(fired[-1][1]) == [TransactionTimeout, TransactionTerminated]


def test_ack_for_a_failure_is_absorbed_stops_timer_g_and_timer_i_ends_the_transaction():
    layer = TransactionLayer()
    [received] = layer.receive(request(), PHONE, 0.0)
    tx = received.tx
    layer.send_response(tx, make_response(tx.request, 404, to_tag="b"), 0.0)
    sent(layer)
    run_timers(layer, until=0.5)  # one G retransmission

    ack = request("ACK", to_tag="b")  # same branch: part of the INVITE transaction
    assert layer.receive(ack, PHONE, 0.8) == []  # not passed up
    assert tx.state is State.CONFIRMED
    assert layer.receive(ack, PHONE, 0.9) == []  # a copy: absorbed too
    assert layer.receive(request(), PHONE, 1.0) == []  # so is a late INVITE copy
    assert sent(layer) == []
    fired = run_timers(layer, until=100.0)
    assert [(t, kinds(ev), data) for t, ev, data in fired] == [
        (5.8, [TransactionTerminated], [])  # timer I = T4 after the ACK
    ]


def test_ack_over_tcp_ends_the_server_invite_at_once():
    layer = TransactionLayer()
    [received] = layer.receive(request(transport="TCP"), PHONE_TCP, 0.0)
    layer.send_response(received.tx, make_response(received.request, 480, to_tag="b"), 0.0)
    assert layer.get_timer() == 32.0  # timer H only, no G over TCP
    events = layer.receive(request("ACK", transport="TCP", to_tag="b"), PHONE_TCP, 0.1)
    assert kinds(events) == [TransactionTerminated]  # timer I = 0
    assert layer.get_timer() is None


def test_server_2xx_is_accepted_never_retransmitted_by_the_layer_and_the_ack_goes_up():
    layer = TransactionLayer(auto_trying=True)
    [received] = layer.receive(request(), PHONE, 0.0)
    tx = received.tx
    sent(layer)
    ok = make_response(tx.request, 200, to_tag="b")
    assert layer.send_response(tx, ok, 1.0) == []
    [ok_bytes] = sent(layer)
    assert tx.state is State.ACCEPTED
    assert layer.get_timer() == 33.0  # timer L alone: no timer G for a 2xx

    # RFC 6026 §7.1: an INVITE copy is absorbed, not answered by the layer.
    assert layer.receive(request(), PHONE, 1.5) == []
    assert sent(layer) == []
    # The TU retransmits the 2xx itself, through the transaction.
    assert layer.send_response(tx, ok, 1.5) == []
    assert sent(layer) == [ok_bytes]
    # The ACK for a 2xx has its own branch (§13.2.2.4): no transaction, to the TU.
    ack = request("ACK", branch="z9hG4bKack2xx", to_tag="b")
    assert kinds(layer.receive(ack, PHONE, 2.0)) == [AckReceived]
    # ... and so does one reusing the INVITE's branch (RFC 6026 §8.7).
    events = layer.receive(request("ACK", to_tag="b"), PHONE, 2.1)
    assert kinds(events) == [AckReceived] and events[0].peer == PHONE

    [(t, events, _)] = run_timers(layer, until=100.0)
    assert (t, kinds(events)) == (33.0, [TransactionTerminated])
    # After timer L a 2xx from the TU still goes out, statelessly.
    assert layer.send_response(tx, ok, 40.0) == []
    assert sent(layer) == [ok_bytes]


def test_the_tu_cannot_send_a_second_final_response():
    layer = TransactionLayer()
    [received] = layer.receive(request(), PHONE, 0.0)
    layer.send_response(received.tx, make_response(received.request, 486, to_tag="b"), 0.0)
    with pytest.raises(TransitionError, match="COMPLETED cannot take SUCCESS"):
        layer.send_response(received.tx, make_response(received.request, 200, to_tag="b"), 0.1)


def test_send_response_finds_the_transaction_from_the_request():
    layer = TransactionLayer()
    [received] = layer.receive(request("OPTIONS"), PHONE, 0.0)
    layer.send_response(received.request, make_response(received.request, 200), 0.0)
    assert received.tx.state is State.COMPLETED
    unknown = request("OPTIONS", branch="z9hG4bKother")
    with pytest.raises(LookupError):
        layer.send_response(unknown, make_response(unknown, 200), 0.0)


# --------------------------------------------------------------------------- server non-INVITE


def test_server_non_invite_replays_its_responses_and_timer_j_ends_it():
    layer = TransactionLayer()
    [received] = layer.receive(request("REGISTER"), PHONE, 0.0)
    tx = received.tx
    assert isinstance(tx, ServerNonInviteTransaction) and tx.state is State.TRYING
    assert sent(layer) == []  # no 100 Trying for non-INVITE (§17.2.2)
    assert layer.receive(request("REGISTER"), PHONE, 0.5) == []  # Trying: silent
    assert sent(layer) == []

    layer.send_response(tx, make_response(tx.request, 100), 0.6)
    [trying] = sent(layer)
    assert layer.receive(request("REGISTER"), PHONE, 1.0) == []
    assert sent(layer) == [trying]

    layer.send_response(tx, make_response(tx.request, 200, to_tag="r"), 1.2)
    [ok] = sent(layer)
    assert layer.receive(request("REGISTER"), PHONE, 1.5) == []
    assert sent(layer) == [ok]
    assert layer.stats.absorbed == 3

    assert layer.get_timer() == 33.2  # timer J = 64*T1
    [(_, events, _)] = run_timers(layer, until=100.0)
    assert kinds(events) == [TransactionTerminated]
    # After J the same request is new again: the TU sees it.
    assert kinds(layer.receive(request("REGISTER"), PHONE, 40.0)) == [RequestReceived]


def test_server_non_invite_over_tcp_ends_with_its_final_response():
    layer = TransactionLayer()
    [received] = layer.receive(request("BYE", transport="TCP", to_tag="b"), PHONE_TCP, 0.0)
    events = layer.send_response(received.tx, make_response(received.request, 200), 0.0)
    assert kinds(events) == [TransactionTerminated]  # timer J = 0
    assert sent(layer)[0].startswith(b"SIP/2.0 200 OK")


# --------------------------------------------------------------------------- matching


def test_requests_match_on_branch_and_sent_by_and_method():
    layer = TransactionLayer()
    [first] = layer.receive(request(), PHONE, 0.0)
    assert layer.receive(request(), PHONE, 0.1) == []  # retransmission
    # Same branch from another sent-by: another client, another transaction.
    other = layer.receive(request(sent_by="192.0.2.99:5060"), Peer("udp", "192.0.2.99", 5060), 0)
    assert kinds(other) == [RequestReceived] and other[0].tx is not first.tx
    # Same branch, method CANCEL: its own transaction (§9.2).
    cancel = layer.receive(request("CANCEL"), PHONE, 0.2)
    assert kinds(cancel) == [RequestReceived] and cancel[0].tx is not first.tx
    # Sent-by port 5060 and an absent port are the same for UDP.
    assert layer.receive(request(sent_by="192.0.2.10"), PHONE, 0.3) == []
    assert layer.stats.server_created == 3


def test_rfc2543_requests_without_a_cookie_match_on_uri_tags_call_id_cseq_and_via():
    layer = TransactionLayer()
    [received] = layer.receive(request(branch=None), PHONE, 0.0)
    tx = received.tx
    assert layer.receive(request(branch=None), PHONE, 0.1) == []  # retransmission
    new_cseq = layer.receive(request(branch=None, cseq=2), PHONE, 0.2)
    assert kinds(new_cseq) == [RequestReceived]
    old_branch = layer.receive(request(branch="1234-old-style"), PHONE, 0.3)
    assert kinds(old_branch) == [RequestReceived]  # the top Via differs

    layer.send_response(tx, make_response(tx.request, 486, to_tag="bx"), 0.4)
    sent(layer)
    # The ACK matches when it carries the To tag of the response we sent.
    stranger = layer.receive(request("ACK", branch=None, to_tag="other"), PHONE, 0.5)
    assert kinds(stranger) == [AckReceived] and tx.state is State.COMPLETED
    assert layer.receive(request("ACK", branch=None, to_tag="bx"), PHONE, 0.6) == []
    assert tx.state is State.CONFIRMED


def test_cancel_finds_the_invite_server_transaction_it_cancels():
    layer = TransactionLayer(auto_trying=True)
    [inv] = layer.receive(request(), PHONE, 0.0)
    [can] = layer.receive(request("CANCEL"), PHONE, 1.0)
    sent(layer)
    assert layer.find_server_invite(can.request) is inv.tx
    # The TU: 200 for the CANCEL, 487 for the INVITE (§9.2).
    layer.send_response(can.tx, make_response(can.request, 200, to_tag="b"), 1.0)
    layer.send_response(inv.tx, make_response(inv.request, 487, to_tag="b"), 1.0)
    assert [parse(d).status for d in sent(layer)] == [200, 487]
    assert inv.tx.state is State.COMPLETED

    assert layer.find_server_invite(request("CANCEL", branch="z9hG4bKelse")) is None
    [legacy] = layer.receive(request(branch=None, call_id="old@x"), PHONE, 2.0)
    legacy_cancel = request("CANCEL", branch=None, call_id="old@x")
    assert layer.find_server_invite(legacy_cancel) is legacy.tx


def test_responses_carry_the_source_address_in_received_and_rport():
    layer = TransactionLayer(auto_trying=True)
    behind_nat = Peer("udp", "203.0.113.7", 61234)
    layer.receive(request(sent_by="10.0.0.5:5060"), behind_nat, 0.0)
    # (§18.2.1) received= because the sent-by is not the source.
    [(trying, peer)] = layer.datagrams_to_send()
    assert peer == behind_nat  # symmetric: back where it came from
    assert parse(trying).via.received == "203.0.113.7"

    layer.receive(request(branch="z9hG4bKrp;rport"), Peer("udp", "192.0.2.10", 5062), 0.0)
    [(trying, _)] = layer.datagrams_to_send()
    via = parse(trying).via
    assert (via.rport, via.received) == (5062, "192.0.2.10")  # RFC 3581 §4


def test_a_request_without_a_via_is_counted_and_dropped_not_raised():
    layer = TransactionLayer()
    bad = Request("OPTIONS", "sip:bob@192.0.2.20", headers=[["Call-ID", "x@y"]])
    assert layer.receive(bad, PHONE, 0.0) == []
    assert layer.stats.malformed == 1 and sent(layer) == []


# --------------------------------------------------------------------------- the tables


@pytest.mark.parametrize(
    ("cls", "states", "inputs"),
    [
        (
            ClientInviteTransaction,
            [State.CALLING, State.PROCEEDING, State.COMPLETED, State.ACCEPTED],
            [Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE, Input.TRANSPORT_ERROR],
        ),
        (
            ClientNonInviteTransaction,
            [State.TRYING, State.PROCEEDING, State.COMPLETED],
            [Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE, Input.TRANSPORT_ERROR],
        ),
        (
            ServerInviteTransaction,
            [State.PROCEEDING, State.COMPLETED, State.CONFIRMED, State.ACCEPTED],
            [Input.REQUEST, Input.ACK, Input.TRANSPORT_ERROR],
        ),
        (
            ServerNonInviteTransaction,
            [State.TRYING, State.PROCEEDING, State.COMPLETED],
            [Input.REQUEST, Input.TRANSPORT_ERROR],
        ),
    ],
)
def test_every_network_input_in_every_live_state_has_a_transition(cls, states, inputs):
    """Whatever a peer sends, the tables have an answer: no TransitionError
    can come from the network, only from a TU that breaks the rules."""
    missing = [(s.name, i.name) for s in states for i in inputs if (s, i) not in cls.TABLE]
    assert missing == []


# --------------------------------------------------------------------------- many transactions


def test_timer_heap_tracks_the_earliest_deadline_and_does_not_grow_with_cancellations():
    layer = TransactionLayer()
    requests = []
    for i in range(2000):
        req = request("OPTIONS", branch=f"z9hG4bKmany{i}")
        layer.send_request(req, SWITCH, i * 0.001)
        requests.append(req)
    assert layer.get_timer() == 0.5  # the first one's timer E
    sent(layer)
    # Answer all but the last before any E fires: E and F cancelled, K armed.
    for i, req in enumerate(requests[:-1]):
        layer.receive(wire(make_response(req, 200)), SWITCH, 0.1 + i * 0.0001)
    assert layer.get_timer() == pytest.approx(1.999 + 0.5)  # the last one's E
    # 4,000 timers cancelled: without compaction the heap would hold ~6,000.
    assert len(layer._heap) < 4000
    fired = run_timers(layer, until=100.0)
    assert len(layer) == 0 and layer.get_timer() is None
    events = [e for _, evs, _ in fired for e in evs]
    assert kinds(events).count(TransactionTerminated) == 2000
    timeouts = [e for e in events if isinstance(e, TransactionTimeout)]
    assert [e.tx.request for e in timeouts] == [requests[-1]]


def test_configured_t1_t2_t4_move_every_deadline():
    layer = TransactionLayer(Timers(t1=0.25, t2=1.0, t4=2.0))
    opts = request("OPTIONS", branch=new_branch())
    layer.send_request(opts, SWITCH, 0.0)
    sent(layer)
    fired = run_timers(layer, until=0.75)
    assert [t for t, _, _ in fired] == [0.25, 0.75]  # E from T1 = 0.25, doubling
    fired = run_timers(layer, until=2.75)
    assert [t for t, _, _ in fired] == [1.75, 2.75]  # capped at T2 = 1.0
    layer.receive(wire(make_response(opts, 200)), SWITCH, 3.0)
    assert layer.get_timer() == 5.0  # K = T4 = 2.0

    layer2 = TransactionLayer(Timers(t1=0.25, t2=1.0, t4=2.0))
    layer2.send_request(request(branch=new_branch()), SWITCH, 0.0)
    assert run_timers(layer2, until=100.0)[-1][0] == 16.0  # B = 64 * 0.25


# --------------------------------------------------------------------------- lossy wire


class LossyWire:
    """A client layer and a server layer on one fake network that loses the
    datagrams whose indices (counted per direction from 0) are listed."""

    def __init__(self, drop_up: set[int], drop_down: set[int]) -> None:
        self.client = TransactionLayer()
        self.server = TransactionLayer(auto_trying=True)
        self.drop = {"up": drop_up, "down": drop_down}
        self.count = {"up": 0, "down": 0}
        self.client_events: list = []
        self.server_events: list = []
        self.now = 0.0

    def _carry(self, source: TransactionLayer, sink: TransactionLayer, way: str) -> bool:
        moved = False
        for data, _ in source.datagrams_to_send():
            moved = True
            index = self.count[way]
            self.count[way] += 1
            if index in self.drop[way]:
                continue
            peer = PHONE if way == "up" else SWITCH
            events = sink.receive(parse(data), peer, self.now)
            if way == "up":
                self.server_events += events
                self.answer(events)
            else:
                self.client_events += events
        return moved

    def answer(self, events: list) -> None:
        """The server TU: busy for INVITE, 200 for anything else."""
        for event in events:
            if isinstance(event, RequestReceived):
                status = 486 if event.request.method == "INVITE" else 200
                reply = make_response(event.request, status, to_tag="srv")
                self.server.send_response(event.tx, reply, self.now)

    def run(self, until: float) -> None:
        for _ in range(10_000):
            while self._carry(self.client, self.server, "up") | self._carry(
                self.server, self.client, "down"
            ):
                pass
            deadlines = [t for t in (self.client.get_timer(), self.server.get_timer()) if t]
            if not deadlines or min(deadlines) > until:
                return
            self.now = min(deadlines)
            self.client_events += self.client.handle_timer(self.now)
            self.server_events += self.server.handle_timer(self.now)


@pytest.mark.parametrize(
    ("drop_up", "drop_down"),
    [
        (set(), set()),
        ({0, 1, 2}, set()),  # the INVITE lost three times
        (set(), {0, 1}),  # the 100 and the 486 lost
        ({1}, {0, 1, 2}),  # first ACK lost; 100, 486 and a copy lost
        ({0, 2, 3}, {1, 3}),
    ],
)
def test_invite_rejected_over_a_lossy_wire_still_completes_once_on_each_side(drop_up, drop_down):
    net = LossyWire(drop_up, drop_down)
    net.client.send_request(request(branch=new_branch()), SWITCH, 0.0)
    net.run(until=200.0)

    responses = [e for e in net.client_events if isinstance(e, ResponseReceived)]
    finals = [e.response.status for e in responses if e.response.status >= 200]
    assert finals == [486]  # the TU saw the final once, whatever was lost
    assert kinds(net.server_events).count(RequestReceived) == 1
    assert TransactionTimeout not in kinds(net.server_events)  # the ACK got through
    assert TransactionTimeout not in kinds(net.client_events)
    assert len(net.client) == 0 and len(net.server) == 0
    assert net.now <= 40.0  # timer D (32 s) after a few seconds of losses


@pytest.mark.parametrize("lost", [0, 1, 3, 6])
def test_non_invite_over_a_lossy_wire_still_completes(lost):
    net = LossyWire(set(range(lost)), {0})  # the first 200 is lost as well
    net.client.send_request(request("OPTIONS", branch=new_branch()), SWITCH, 0.0)
    net.run(until=200.0)
    statuses = [e.response.status for e in net.client_events if isinstance(e, ResponseReceived)]
    assert statuses == [200]
    assert kinds(net.server_events).count(RequestReceived) == 1
    assert len(net.client) == 0 and len(net.server) == 0


@settings(max_examples=60, deadline=None)
@given(
    drop_up=st.sets(st.integers(0, 11), max_size=8),
    drop_down=st.sets(st.integers(0, 11), max_size=8),
)
def test_any_loss_pattern_ends_once_and_leaks_no_transaction(drop_up, drop_down):
    """Whatever is lost, the client TU learns one outcome (the 486 or a
    timeout, never both, never twice), the server TU sees the INVITE at most
    once, and both layers end empty: no transaction outlives its timers."""
    net = LossyWire(drop_up, drop_down)
    net.client.send_request(request(branch=new_branch()), SWITCH, 0.0)
    net.run(until=500.0)

    finals = [
        e.response.status
        for e in net.client_events
        if isinstance(e, ResponseReceived) and e.response.status >= 200
    ]
    timeouts = kinds(net.client_events).count(TransactionTimeout)
    assert (finals, timeouts) in (([486], 0), ([], 1))
    assert kinds(net.server_events).count(RequestReceived) <= 1
    assert len(net.client) == 0 and len(net.server) == 0
    assert net.client.get_timer() is None and net.server.get_timer() is None


def test_unanswered_counts_what_a_graceful_stop_must_wait_for():
    """A request sent and not answered, one received and not answered; a
    transaction that only absorbs retransmissions (COMPLETED) is not waited for."""
    layer = TransactionLayer(auto_trying=True)
    assert layer.unanswered() == 0
    out = layer.send_request(request(branch=new_branch()), SWITCH, 0.0)
    [received] = layer.receive(request("OPTIONS", branch="z9hG4bKopt1"), PHONE, 0.0)
    assert layer.unanswered() == 2
    layer.send_response(received.tx, make_response(received.tx.request, 200), 0.1)
    assert received.tx.state is State.COMPLETED and layer.unanswered() == 1
    layer.receive(wire(make_response(out.request, 486, to_tag="x")), SWITCH, 0.2)
    assert out.state is State.COMPLETED and layer.unanswered() == 0
