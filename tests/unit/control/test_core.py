"""The Switch: dispatch, stateless refusals, DB plumbing, timers, admin.

Driven with bytes in and bytes out on a fake clock; the B2BUA is a fake
recording what it was handed (softswitch/calls/manager.py is tested on its own).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from softswitch.db.messages import (
    DbFatal,
    DbStatus,
    DeleteBinding,
    Loaded,
    SaveBinding,
    UsersChanged,
)
from softswitch.model.users import Binding, Deleted
from softswitch.protocol import Heartbeat, HeartbeatReply, decode, encode
from softswitch.sip.message import Request, Response, parse
from softswitch.sip.transaction import Peer, ServerTransaction
from softswitch.switch import ALLOW, CORE_ANSWERS, CoreRefusal, Switch
from tests.unit.control.phones import (
    DOMAIN,
    NAT,
    NOW,
    Phone,
    make_user,
    make_users,
    sip_config,
)

TORTURE = Path(__file__).resolve().parents[2] / "data" / "sip-torture"
PEER = Peer("udp", "192.0.2.50", 5060)


class FakeCalls:
    """Records what the core hands the B2BUA; answers INVITEs 486."""

    def __init__(self, **kw: Any) -> None:
        self.kw = kw
        self.seen: list[tuple[str, Any]] = []
        self.timer: float | None = None
        self.explode = False

    def handle_request(self, tx: ServerTransaction, request: Request, peer: Peer, now: float):
        self.seen.append(("request", request.method))
        if self.explode:
            raise RuntimeError("boom")
        from softswitch.sip.message import make_response

        self.kw["layer"].send_response(tx, make_response(request, 486, to_tag="t"), now)

    def handle_ack(self, request, peer, now):
        self.seen.append(("ack", request.method))

    def handle_response(self, tx, response, now):
        self.seen.append(("response", response.status))

    def handle_tx_timeout(self, tx, now):
        self.seen.append(("timeout", tx.method))

    def handle_bearer_event(self, event, now):
        self.seen.append(("bearer", type(event).__name__))

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        self.seen.append(("timer", now))

    def active_calls(self, username, domain):
        return 0

    def snapshot(self):
        return [{"call_id": "x"}]

    def shutdown(self, now):
        self.seen.append(("shutdown", now))


def make_switch(*, loaded: bool = True, calls: bool = True, **sip: object) -> Switch:
    cfg = sip_config(**sip)
    cfg.bearers.endpoints = [("unix", "/tmp/nonexistent-b0.sock", 0)]
    switch = Switch(cfg, NOW, secret=b"s" * 32, calls_factory=FakeCalls if calls else None, epoch=7)
    switch.auth = switch.registrar.auth  # same object; kept for clarity
    if loaded:
        switch.apply_db_result(Loaded(make_users(make_user("alice", "secret")), []), NOW)
    return switch


def answers(switch: Switch) -> list[Response]:
    out = []
    for data, _peer in switch.sip_datagrams_to_send():
        msg = parse(data)
        assert isinstance(msg, Response)
        out.append(msg)
    return out


def request(
    method: str, *, extra: list[str] | None = None, to_tag: str = "", mf: int = 70
) -> bytes:
    lines = [
        f"{method} sip:bob@{DOMAIN} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKcore" + method,
        f"Max-Forwards: {mf}",
        f"From: <sip:alice@{DOMAIN}>;tag=a1",
        f"To: <sip:bob@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else ""),
        "Call-ID: core-test@192.0.2.50",
        f"CSeq: 1 {method}",
        *(extra or []),
    ]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


# ------------------------------------------------------------------ the core's own answers


def test_options_is_answered_200_with_what_we_support() -> None:
    switch = make_switch()
    switch.receive_sip(request("OPTIONS"), PEER, NOW)
    (r,) = answers(switch)
    assert r.status == 200
    assert r.get("Allow") == ALLOW and r.get("Accept") == "application/sdp"
    assert r.get("Supported") is not None and r.to.tag
    assert switch.calls.seen == []


def test_options_with_max_forwards_zero_addressed_to_us_is_still_200() -> None:
    # RFC 4475 zeromf: OPTIONS addressed to us -> 200.
    switch = make_switch()
    switch.receive_sip(request("OPTIONS", mf=0), PEER, NOW)
    assert [r.status for r in answers(switch)] == [200]


def test_in_dialog_options_goes_to_calls() -> None:
    switch = make_switch()
    switch.receive_sip(request("OPTIONS", to_tag="b2"), PEER, NOW)
    assert switch.calls.seen == [("request", "OPTIONS")]


def test_unknown_method_gets_501_with_allow() -> None:
    switch = make_switch()
    switch.receive_sip(request("SUBSCRIBE"), PEER, NOW)
    (r,) = answers(switch)
    assert r.status == 501 and r.get("Allow") == ALLOW
    assert switch.counters["refused_unknown-method"] == 1


def test_unsupported_require_gets_420_naming_it() -> None:
    switch = make_switch()
    switch.receive_sip(request("INVITE", extra=["Require: 100rel, foo"]), PEER, NOW)
    responses = answers(switch)
    assert [r.status for r in responses] == [100, 420]
    assert responses[1].get("Unsupported") == "100rel, foo"


def test_invite_with_max_forwards_zero_is_483() -> None:
    switch = make_switch()
    switch.receive_sip(request("INVITE", mf=0), PEER, NOW)
    assert [r.status for r in answers(switch)] == [100, 483]
    assert switch.calls.seen == []


def test_requests_wait_for_the_users_to_load() -> None:
    switch = make_switch(loaded=False)
    switch.receive_sip(Phone().register(auth=False), NAT, NOW)
    (r,) = answers(switch)
    assert r.status == 503 and r.get("Retry-After") == "5"


def test_without_a_call_manager_calls_are_501() -> None:
    switch = make_switch(calls=False)
    switch.receive_sip(request("INVITE"), PEER, NOW)
    assert [r.status for r in answers(switch)] == [100, 501]


def test_every_core_refusal_has_one_answer() -> None:
    assert set(CORE_ANSWERS) == set(CoreRefusal)


# ---------------------------------------------------------------------------- malformed input


def test_malformed_request_gets_400_with_the_parser_reason() -> None:
    switch = make_switch()
    bad = request("OPTIONS").replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    switch.receive_sip(bad, PEER, NOW)
    (r,) = answers(switch)
    assert (r.status, r.reason) == (400, "Bad Max-Forwards header")
    assert r.call_id == "core-test@192.0.2.50"


def test_bad_sip_version_gets_505() -> None:
    switch = make_switch()
    switch.receive_sip(request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1), PEER, NOW)
    (r,) = answers(switch)
    assert r.status == 505 and r.cseq_method == "OPTIONS"


def test_garbage_is_counted_and_never_answered() -> None:
    switch = make_switch()
    for data in (b"hello world", b"\x00\xff" * 100, b"INVITE\r\n\r\n", b"SIP/2.0 200\r\n\r\n"):
        switch.receive_sip(data, PEER, NOW)
    assert answers(switch) == []
    assert sum(switch.drops.values()) == 4


def test_keepalives_are_counted_not_dropped() -> None:
    switch = make_switch()
    for data in (b"\r\n\r\n", b"\r\n", b"\0\0\0\0"):
        switch.receive_sip(data, PEER, NOW)
    assert answers(switch) == [] and switch.counters["rx_keepalives"] == 3
    assert not switch.drops


def test_malformed_ack_is_never_answered() -> None:
    switch = make_switch()
    switch.receive_sip(request("ACK").replace(b"CSeq: 1 ACK", b"CSeq: x ACK"), PEER, NOW)
    assert answers(switch) == []


def test_stray_response_is_counted() -> None:
    switch = make_switch()
    data = b"SIP/2.0 200 OK\r\n" + request("OPTIONS").split(b"\r\n", 1)[1]
    switch.receive_sip(data, PEER, NOW)
    assert switch.drops["stray_response"] == 1 and answers(switch) == []


# The RFC 4475 messages whose answer is the core's or the registrar's to give.
EXPECTED = {
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "quotbal": 400,
    "ltgtruri": 400, "lwsruri": 400, "escruri": 400, "regbadct": 400, "badaspec": 400,
    "baddn": 400, "badvers": 505, "mismatch01": 400, "mismatch02": 501, "insuf": 400,
    "unkscm": 416, "novelsc": 416, "unksm2": 400, "bext01": 420, "regaut01": 401,
    "multi01": 400, "mcl01": 400, "intmeth": 501, "esc02": 501, "escnull": 401,
    "cparam01": 401, "cparam02": 401, "regescrt": 401, "zeromf": 200, "dblreq": 401,
    "scalarlg": None, "bigcode": None, "unreason": None, "noreason": None,
}  # fmt: skip


def test_baddn_with_its_end_of_headers_gets_400() -> None:
    # The archive copy of baddn stops before the blank line; with it too,
    # the unquoted comma in the display name is the fault.
    switch = make_switch()
    data = (TORTURE / "variants" / "baddn-with-terminating-crlf.dat").read_bytes()
    switch.receive_sip(data, PEER, NOW)
    assert [d[8:11] for d, _ in switch.sip_datagrams_to_send()] == [b"400"]


def _torture_rows() -> list[dict[str, str]]:
    with (TORTURE / "INDEX.tsv").open(encoding="utf-8") as f:
        return [r for r in csv.DictReader(f, delimiter="\t") if r["name"] in EXPECTED]


@pytest.mark.parametrize("row", _torture_rows(), ids=lambda r: r["name"])
def test_torture_message_gets_the_oracle_answer(row: dict[str, str]) -> None:
    switch = make_switch()
    switch.receive_sip((TORTURE / Path(row["file"]).name).read_bytes(), PEER, NOW)
    # Status lines only: the answer echoes the message's own (broken) headers.
    statuses = [int(d[8:11]) for d, _ in switch.sip_datagrams_to_send() if d[8:11] != b"100"]
    expected = EXPECTED[row["name"]]
    assert statuses == ([] if expected is None else [expected]), row["oracle_for_registrar_b2bua"]


# ---------------------------------------------------------------------------- REGISTER and the DB


def register(switch: Switch, phone: Phone, now: float = NOW, **kw: Any) -> Response:
    switch.receive_sip(phone.register(auth=False, **kw), NAT, now)
    (challenge,) = answers(switch)
    phone.challenged(challenge)
    switch.receive_sip(phone.register(**kw), NAT, now)
    (r,) = answers(switch)
    return r


def test_register_through_the_core_queues_the_binding_for_the_db() -> None:
    switch = make_switch()
    r = register(switch, Phone())
    assert r.status == 200
    (cmd,) = switch.db_commands()
    assert isinstance(cmd, SaveBinding) and cmd.binding.source_host == NAT.host
    assert switch.db_commands() == []
    assert switch.admin_registrations(NOW)[0]["aor"] == f"alice@{DOMAIN}"


def test_unregister_queues_a_delete() -> None:
    switch = make_switch()
    phone = Phone()
    register(switch, phone)
    switch.db_commands()
    switch.receive_sip(phone.register(expires=0), NAT, NOW)
    assert answers(switch)[0].status == 200
    assert switch.db_commands() == [DeleteBinding("alice", DOMAIN, "sip:alice@10.0.0.5:5062")]


def test_expiry_fires_from_the_timer_and_deletes_from_the_db() -> None:
    switch = make_switch()
    register(switch, Phone(), expires=120)
    switch.db_commands()
    timer = switch.get_timer()
    assert timer is not None and timer <= NOW + 120
    switch.handle_timer(NOW + 120)
    assert DeleteBinding("alice", DOMAIN, "sip:alice@10.0.0.5:5062") in switch.db_commands()
    assert switch.location.lookup("alice", DOMAIN, NOW) == []


def test_bindings_come_back_after_a_restart() -> None:
    saved = Binding(
        "alice", DOMAIN, "sip:alice@10.0.0.5", NOW + 600, "tcp", "192.0.2.8", 5000, "c", 3
    )
    gone = Binding("alice", DOMAIN, "sip:alice@10.0.0.6", NOW - 1, "udp", "192.0.2.8", 5001, "c", 3)
    switch = make_switch(loaded=False)
    switch.apply_db_result(
        Loaded(make_users(make_user("alice", "secret")), [saved, gone]), NOW + 10
    )
    assert switch.loaded
    assert switch.location.lookup("alice", DOMAIN, NOW + 10) == [saved]
    assert switch.location.has_source("tcp", "192.0.2.8", 5000)


def test_deleted_or_disabled_users_lose_their_bindings() -> None:
    switch = make_switch()
    register(switch, Phone())
    switch.db_commands()
    disabled = make_user("alice", "secret", enabled=False)
    switch.apply_db_result(UsersChanged((disabled,), ()), NOW)
    assert switch.location.lookup("alice", DOMAIN, NOW) == []
    assert switch.db_commands() == [DeleteBinding("alice", DOMAIN, "sip:alice@10.0.0.5:5062")]
    switch.apply_db_result(UsersChanged((), (Deleted("alice", DOMAIN, 1),)), NOW)
    assert switch.directory.lookup("alice", DOMAIN) is None


def test_db_status_and_fatal_are_reported() -> None:
    switch = make_switch()
    switch.apply_db_result(DbStatus(False, 12, 0, "database is locked"), NOW)
    assert switch.admin_status(NOW)["database"] == "down: database is locked"
    switch.apply_db_result(DbFatal("schema too new"), NOW)
    assert switch.fatal == "schema too new"


# ---------------------------------------------------------------------------- calls and bearers


def test_invite_ack_and_responses_reach_calls() -> None:
    switch = make_switch()
    switch.receive_sip(request("INVITE"), PEER, NOW)
    assert [r.status for r in answers(switch)] == [100, 486]
    switch.receive_sip(request("ACK").replace(b"z9hG4bKcoreACK", b"z9hG4bKother"), PEER, NOW)
    assert switch.calls.seen == [("request", "INVITE"), ("ack", "ACK")]


def test_a_bug_in_calls_costs_one_request_a_500() -> None:
    switch = make_switch()
    switch.calls.explode = True
    switch.receive_sip(request("BYE", to_tag="x"), PEER, NOW)
    assert [r.status for r in answers(switch)] == [500]
    assert switch.counters["internal_errors"] == 1
    switch.calls.explode = False
    switch.receive_sip(request("INFO", to_tag="x"), PEER, NOW)
    assert [r.status for r in answers(switch)] == [486]


def test_new_invites_are_refused_while_stopping() -> None:
    switch = make_switch()
    switch.shutdown(NOW)
    assert ("shutdown", NOW) in switch.calls.seen
    switch.receive_sip(request("INVITE"), PEER, NOW)
    assert [r.status for r in answers(switch)] == [100, 503]


def test_bearer_heartbeats_reach_the_pool_and_calls() -> None:
    switch = make_switch()
    switch.handle_timer(NOW)  # the first heartbeat is due at once
    ((data, peer),) = switch.bearer_datagrams_to_send()
    assert peer == "/tmp/nonexistent-b0.sock"
    heartbeat = decode(data)
    reply = encode(HeartbeatReply(7, 3, 500, 20, 0), heartbeat.request_id, 99)
    switch.receive_bearer(reply, peer, NOW)
    bearer = switch.bearers.bearers[0]
    assert bearer.up and bearer.capacity == 500 and bearer.sessions == 3
    assert ("bearer", "PeerUp") in switch.calls.seen
    assert ("bearer", "PeerLoad") in switch.calls.seen
    # A bearer's own heartbeat is answered.
    switch.receive_bearer(encode(Heartbeat(3, 500, 20, 0), 77, 99), peer, NOW)
    ((answer, _),) = switch.bearer_datagrams_to_send()
    assert isinstance(decode(answer).message, HeartbeatReply)


def test_bad_bearer_datagrams_are_counted() -> None:
    switch = make_switch()
    switch.receive_bearer(b"junk", "/tmp/nonexistent-b0.sock", NOW)
    assert switch.drops["bearer_short"] == 1


def test_timer_includes_calls_and_fires_them() -> None:
    switch = make_switch()
    switch.calls.timer = NOW + 0.25
    assert switch.get_timer() == NOW  # the first bearer heartbeat is due now
    switch.handle_timer(NOW)
    switch.bearer_datagrams_to_send()
    assert switch.get_timer() == NOW + 0.25
    switch.handle_timer(NOW + 0.25)
    assert ("timer", NOW + 0.25) in switch.calls.seen


# ---------------------------------------------------------------------------- reload and admin


def test_reconfigure_applies_live_values_and_lists_the_rest() -> None:
    switch = make_switch()
    new = sip_config(max_expires=120, t1=1.0)
    new.bearers.endpoints = [("unix", "/tmp/nonexistent-b0.sock", 0)]
    new.sip.port = 5070
    new.calls.no_answer_timeout = 30
    applied, restart = switch.reconfigure(new)
    assert set(applied) == {"sip.max_expires", "sip.t1", "calls.no_answer_timeout"}
    assert restart == ["sip.port"]
    assert switch.config.sip.max_expires == 120 and switch.layer.timers.t1 == 1.0
    assert switch.config.calls.no_answer_timeout == 30
    assert switch.config.sip.port == 5060
    r = register(switch, Phone(), expires=3600)
    assert r.contacts[0].params["expires"] == "120"


def test_status_reports_counters_features_and_state() -> None:
    switch = make_switch()
    switch.features["aiortc"] = False
    switch.receive_sip(request("OPTIONS"), PEER, NOW)
    answers(switch)
    status = switch.admin_status(NOW + 5)
    assert status["state"] == "serving" and status["uptime_s"] == 5
    assert status["users"] == 1 and status["calls"] == 1
    assert status["rx_OPTIONS"] == 1 and status["tx_2xx"] == 1
    assert status["feature_aiortc"] is False
    assert status["bearers_up"] == "0/1"


def test_a_bug_below_the_dispatcher_is_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    switch = make_switch()

    def broken(*args: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(switch.layer, "receive", broken)
    monkeypatch.setattr(switch.layer, "handle_timer", broken)
    switch.receive_sip(request("OPTIONS"), PEER, NOW)
    switch.calls.timer = NOW
    switch.handle_timer(NOW)  # the other parts still run
    assert ("timer", NOW) in switch.calls.seen
    assert switch.counters["internal_errors"] == 2


def test_digest_algorithm_order_follows_the_config_when_set() -> None:
    # For clients that read only the first challenge (SIPp 3.6.1: MD5 only).
    switch = make_switch(digest_algorithms=["MD5", "SHA-256"])
    switch.receive_sip(Phone().register(auth=False), NAT, NOW)
    (r,) = answers(switch)
    assert [v.split("algorithm=")[1].split(",")[0] for v in r.get_all("WWW-Authenticate")] == [
        "MD5",
        "SHA-256",
    ]


def test_default_config_challenges_md5_alone_which_every_phone_tested_accepts() -> None:
    # baresip 1.0 (libre) gives up if any challenge is not MD5; SIPp 3.6 reads
    # only the first (etc/softswitch/softswitch.conf has the measured matrix).
    switch = make_switch()
    switch.receive_sip(Phone().register(auth=False), NAT, NOW)
    (r,) = answers(switch)
    (challenge,) = r.get_all("WWW-Authenticate")
    assert "algorithm=MD5," in challenge, challenge
