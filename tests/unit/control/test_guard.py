"""softswitch.guard: which failures count, the window, bans and their doubling,
the allow-list, bounded memory and the rate limit; then the Switch wired to it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from softswitch.daemon.metrics import exposition
from softswitch.db.messages import Loaded
from softswitch.guard import COUNTED, Guard
from softswitch.sip.digest import AuthFailure, DigestClient
from softswitch.sip.message import Response, parse
from softswitch.sip.transaction import Peer
from softswitch.switch import Switch

from .phones import DOMAIN, NOW, Phone, make_user, make_users, sip_config

BAD = AuthFailure.BAD_RESPONSE
ATTACKER = "198.51.100.7"


def fail(
    guard: Guard,
    n: int,
    *,
    host: str = ATTACKER,
    at: float = NOW,
    step: float = 1.0,
    user: str = "alice",
    reason: AuthFailure = BAD,
) -> float:
    for i in range(n):
        guard.auth_result(host, user, reason, at + i * step)
    return at + (n - 1) * step


# ------------------------------------------------------------------ scoring


def test_only_tested_guesses_count() -> None:
    """Wrong password and unknown user count (alike: no enumeration through
    the ban); stale or foreign nonces, replays and refusals before any
    password check do not."""
    assert {f for f, counted in COUNTED.items() if counted} == {
        AuthFailure.BAD_RESPONSE,
        AuthFailure.UNKNOWN_USER,
    }
    assert set(COUNTED) == set(AuthFailure)  # every reason decided
    for reason in AuthFailure:
        guard = Guard()
        fail(guard, 5, reason=reason)
        assert guard.banned(ATTACKER, NOW + 5) == COUNTED[reason], reason


def test_five_failures_in_the_window_ban_four_do_not() -> None:
    guard = Guard()
    t = fail(guard, 4)
    assert not guard.banned(ATTACKER, t)
    guard.auth_result(ATTACKER, "bob", AuthFailure.UNKNOWN_USER, t + 1)
    assert guard.banned(ATTACKER, t + 1)
    (ban,) = guard.bans(t + 1)
    assert (ban.address, ban.failures, ban.until - ban.since) == (ATTACKER, 5, 900)
    assert not guard.admit(ATTACKER, t + 2) and guard.drops["banned"] == 1
    assert guard.admit("198.51.100.8", t + 2)  # only that source


def test_failures_spread_wider_than_the_window_do_not_ban() -> None:
    guard = Guard()
    fail(guard, 20, step=15.1)  # five of them span 60.4 s
    assert guard.bans(NOW + 400) == []


def test_a_phone_that_mistypes_three_times_then_succeeds_is_not_banned() -> None:
    guard = Guard()
    t = fail(guard, 3)
    guard.auth_result(ATTACKER, "alice", None, t + 1)  # right at last: forgiven
    t = fail(guard, 4, at=t + 2)  # and mistypes again, four times
    assert not guard.banned(ATTACKER, t)


def test_a_success_for_one_account_does_not_wash_guesses_at_another() -> None:
    guard = Guard()
    t = fail(guard, 4, user="bob")
    guard.auth_result(ATTACKER, "mallory", None, t + 1)  # the attacker's own account
    guard.auth_result(ATTACKER, "bob", BAD, t + 2)
    assert guard.banned(ATTACKER, t + 2)


def test_a_ban_expires_and_repeat_bans_double_up_to_the_cap() -> None:
    guard = Guard(ban_time=900, ban_time_max=3000)
    at = NOW
    lengths = []
    for _ in range(4):
        t = fail(guard, 5, at=at)
        (ban,) = guard.bans(t)
        lengths.append(ban.until - ban.since)
        fired = []
        while (deadline := guard.get_timer()) is not None and deadline <= ban.until:
            fired.append(deadline)  # sweeps of idle buckets, then the expiry itself
            guard.handle_timer(deadline)
        assert fired[-1] == ban.until and len(fired) < 100
        assert guard.bans(ban.until) == [] and guard.admit(ATTACKER, ban.until)
        at = ban.until + 10
    assert lengths == [900, 1800, 3000, 3000]
    # A day... here ban_time_max, without a ban: back to the first length.
    t = fail(guard, 5, at=at + 3001)
    (ban,) = guard.bans(t)
    assert ban.until - ban.since == 900


def test_the_unban_and_ban_lines_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard()
    with caplog.at_level(logging.WARNING, "softswitch.guard"):
        t = fail(guard, 5)
        for i in range(100):
            guard.admit(ATTACKER, t + i / 100)
        guard.handle_timer(t + 900)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"banned {ATTACKER} for 900 s: 5 authentication failures within 60 s (ban 1)",
        f"unbanned {ATTACKER}: ban of 900 s over (5 failures)",
    ]


def test_operator_lifts_a_ban_and_a_bad_address_is_a_value_error() -> None:
    guard = Guard()
    guard.kernel = True
    t = fail(guard, 5)
    assert guard.unban(ATTACKER, t) is True
    assert guard.admit(ATTACKER, t) and not guard.bans(t)
    assert guard.unban(ATTACKER, t) is False
    assert guard.kernel_changes() == [("add", ATTACKER, 900.0), ("del", ATTACKER, 0.0)]
    with pytest.raises(ValueError):
        guard.unban("not-an-address", t)


def test_the_allow_list_is_never_banned_nor_limited() -> None:
    guard = Guard(allow=["10.0.0.0/8", "2001:db8::/32"], rate_limit=1, rate_burst=1)
    for host in ("10.1.2.3", "2001:db8::5"):
        fail(guard, 50, host=host)
        assert not guard.banned(host, NOW)
        assert all(guard.admit(host, NOW) for _ in range(100))
    fail(guard, 5, host="11.0.0.1")
    assert guard.banned("11.0.0.1", NOW + 5)


def test_allow_listing_a_banned_source_on_reload_lifts_its_ban() -> None:
    guard = Guard()
    t = fail(guard, 5)
    cfg = sip_config().security
    cfg.allow = [ATTACKER + "/32"]
    guard.reconfigure(cfg)
    assert not guard.banned(ATTACKER, t) and guard.admit(ATTACKER, t)


def test_memory_is_bounded_under_a_scan_from_many_addresses() -> None:
    guard = Guard(max_sources=1000)
    for i in range(5000):
        host = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        guard.admit(host, NOW)
        for _ in range(5):
            guard.auth_result(host, "alice", BAD, NOW)
    assert len(guard._buckets) <= 1000 and len(guard._records) <= 1000
    assert len(guard._bans) <= 1000 and len(guard.bans(NOW)) == 1000
    assert guard.bans_total["auth-failures"] == 5000
    assert guard.unbans_total["evicted"] == 4000


# ------------------------------------------------------------------ rate limit


def test_rate_limit_passes_the_burst_then_the_rate(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(rate_limit=100, rate_burst=400)
    with caplog.at_level(logging.WARNING, "softswitch.guard"):
        assert sum(guard.admit(ATTACKER, NOW) for _ in range(1000)) == 400
        # One second later: 100 more tokens, whatever was offered.
        assert sum(guard.admit(ATTACKER, NOW + 1) for _ in range(1000)) == 100
        assert guard.drops["rate_limited"] == 1500 and guard.limited_total == 1
        assert guard.admit("192.0.2.1", NOW + 1)  # others unaffected
        guard.handle_timer(NOW + 20)  # quiet for 19 s
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"rate-limiting {ATTACKER}: over 100 messages/s (burst 400); excess dropped",
        f"{ATTACKER} no longer rate-limited: 1500 messages dropped",
    ]
    assert not guard.banned(ATTACKER, NOW + 20)  # rate alone never bans
    assert guard.limited_now == 0


def test_a_steady_flood_is_held_to_the_rate() -> None:
    guard = Guard(rate_limit=100, rate_burst=400)
    passed = 0
    for ms in range(10_000):  # 10 s at 5,000/s: 5 per millisecond
        now = NOW + ms / 1000
        passed += sum(guard.admit(ATTACKER, now) for _ in range(5))
        if ms % 1000 == 0:
            guard.handle_timer(now)
    assert 400 + 999 <= passed <= 400 + 1001


def test_rate_limit_zero_is_off() -> None:
    guard = Guard(rate_limit=0)
    assert all(guard.admit(ATTACKER, NOW) for _ in range(10_000))


# ------------------------------------------------------------------ wired into the Switch


def _switch(**security: object) -> Switch:
    cfg = sip_config()
    cfg.bearers.endpoints = [("unix", "/tmp/nonexistent-b0.sock", 0)]
    for k, v in security.items():
        setattr(cfg.security, k, v)
    switch = Switch(cfg, NOW, secret=b"s" * 32, calls_factory=None, epoch=7)
    switch.apply_db_result(Loaded(make_users(make_user("alice", "secret")), []), NOW)
    return switch


def _answers(switch: Switch) -> list[Response]:
    out = [parse(d) for d, _ in switch.sip_datagrams_to_send()]
    assert all(isinstance(r, Response) for r in out)
    return out  # type: ignore[return-value]


def _try(switch: Switch, phone: Phone, peer: Peer, now: float) -> int | None:
    """One REGISTER round: challenge then credentials; the last status or None."""
    switch.receive_sip(phone.register(), peer, now)
    answers = _answers(switch)
    if not answers:
        return None
    if answers[-1].status == 401:
        phone.challenged(answers[-1])
        switch.receive_sip(phone.register(), peer, now)
        answers = _answers(switch)
    return answers[-1].status if answers else None


def test_switch_ignores_a_source_after_five_wrong_passwords() -> None:
    switch = _switch()
    peer = Peer("udp", ATTACKER, 5070)
    statuses = [_try(switch, Phone("alice", f"guess{i}"), peer, NOW + i) for i in range(6)]
    assert statuses == [401] * 5 + [None]  # challenges did not count; the 6th: silence
    assert _try(switch, Phone("alice", "secret"), peer, NOW + 7) is None  # even the right one
    assert switch.guard.drops["banned"] >= 1
    assert _try(switch, Phone("alice", "secret"), Peer("udp", "192.0.2.1", 5060), NOW + 7) == 200
    (row,) = switch.admin_bans(NOW + 8)
    assert row["address"] == ATTACKER and row["failures"] == 5
    status = switch.admin_status(NOW + 8)
    assert status["bans"] == 1 and status["guard_dropped_banned"] >= 1


def test_switch_registers_a_phone_that_mistyped_three_times() -> None:
    switch = _switch()
    peer = Peer("udp", ATTACKER, 5070)
    for i in range(3):
        assert _try(switch, Phone("alice", "typo"), peer, NOW + i) == 401
    assert _try(switch, Phone("alice", "secret"), peer, NOW + 4) == 200
    for i in range(4):  # the counter was cleared by the success
        assert _try(switch, Phone("alice", "typo"), peer, NOW + 5 + i) == 401
    assert switch.admin_bans(NOW + 10) == []


def test_switch_reload_applies_the_security_section() -> None:
    switch = _switch()
    new = sip_config()
    new.bearers.endpoints = switch.config.bearers.endpoints
    new.security.max_auth_failures = 2
    new.security.allow = ["192.0.2.0/24"]
    applied, restart = switch.reconfigure(new)
    assert set(applied) == {"security.max_auth_failures", "security.allow"} and restart == []
    assert switch.guard.max_failures == 2 and switch.guard.allowed(address="192.0.2.9")
    new.security.nftables = "off"
    assert switch.reconfigure(new)[1] == ["security.nftables"]


def test_metrics_show_bans_and_drops() -> None:
    switch = _switch(rate_limit=1, rate_burst=1)
    for i in range(5):
        switch.guard.auth_result(ATTACKER, "alice", BAD, NOW + i)
    switch.receive_sip(b"x", Peer("udp", ATTACKER, 1), NOW + 5)
    for _ in range(3):
        switch.receive_sip(b"\r\n\r\n", Peer("udp", "192.0.2.1", 1), NOW + 5)
    text = exposition(SimpleNamespace(switch=switch)).decode()
    for line in (
        'softswitch_bans_total{reason="auth-failures"} 1.0',
        "softswitch_bans_active 1.0",
        'softswitch_guard_dropped_total{reason="banned"} 1.0',
        'softswitch_guard_dropped_total{reason="rate_limited"} 2.0',
        "softswitch_rate_limited_sources_total 1.0",
        "softswitch_auth_failures_total 5.0",
    ):
        assert line in text.splitlines(), line


def test_a_flood_from_spoofed_sources_costs_constant_time_per_datagram() -> None:
    """A full bucket table evicts its oldest entry: no sweep per new source."""
    guard = Guard(max_sources=1000)
    sweeps: list[float] = []
    guard._sweep = sweeps.append  # type: ignore[method-assign,assignment]  # the O(table) step
    for i in range(50_000):
        guard.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", NOW)
    assert len(guard._buckets) == 1000 and sweeps == []


def test_the_expiry_heap_stays_bounded_when_bans_are_lifted() -> None:
    guard = Guard()
    for i in range(5000):
        host = f"10.0.{i >> 8 & 255}.{i & 255}"
        fail(guard, 5, host=host)
        guard.unban(host, NOW + 5)
    assert len(guard._expiries) <= 1024 + 2


def _invite(n: int, auth: str | None) -> bytes:
    lines = [
        f"INVITE sip:bob@{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {ATTACKER}:5070;branch=z9hG4bKguess{n}",
        "Max-Forwards: 70",
        f"From: <sip:alice@{DOMAIN}>;tag=g{n}",
        f"To: <sip:bob@{DOMAIN}>",
        f"Call-ID: guess-{n}@x",
        "CSeq: 1 INVITE",
        f"Contact: <sip:alice@{ATTACKER}:5070>",
        *([f"Proxy-Authorization: {auth}"] if auth else []),
    ]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_wrong_passwords_on_invite_count_too() -> None:
    cfg = sip_config()
    cfg.bearers.endpoints = [("unix", "/tmp/nonexistent-b0.sock", 0)]
    switch = Switch(cfg, NOW, secret=b"s" * 32, epoch=7)  # the real CallManager
    switch.apply_db_result(Loaded(make_users(make_user("alice", "secret")), []), NOW)
    peer = Peer("udp", ATTACKER, 5070)
    finals = []
    for n in range(5):
        switch.receive_sip(_invite(n, None), peer, NOW + n)
        (challenge,) = [r for r in _answers(switch) if r.status == 407]  # not a failure
        client = DigestClient("alice", password=f"guess{n}")
        client.challenged(challenge.get_all("Proxy-Authenticate"))
        auth = client.authorization("INVITE", f"sip:bob@{DOMAIN}")
        switch.receive_sip(_invite(100 + n, auth), peer, NOW + n)
        finals += [r.status for r in _answers(switch) if r.status >= 200]
    assert finals == [407] * 5 and switch.guard.banned(ATTACKER, NOW + 5)
    switch.receive_sip(_invite(6, None), peer, NOW + 6)
    assert _answers(switch) == []  # not even a 100 Trying


def test_ipv6_sources_are_judged_per_64() -> None:
    """A guesser hopping between addresses of its /64 is still one source."""
    guard = Guard(allow=["2001:db8:ffff::1"], rate_limit=10, rate_burst=10)
    for i in range(5):
        guard.auth_result(f"2001:db8:1:2::{i + 1:x}", "alice", BAD, NOW + i)
    (ban,) = guard.bans(NOW + 5)
    assert ban.address == "2001:db8:1:2::/64"
    assert not guard.admit("2001:db8:1:2:abcd::9", NOW + 5)  # another address, same /64
    assert guard.banned("2001:db8:1:2::77", NOW + 5)
    assert guard.admit("2001:db8:1:3::1", NOW + 5)  # the next /64 is someone else
    # The rate limit counts the /64 as one source too.
    assert sum(guard.admit(f"2001:db8:9:9::{i:x}", NOW) for i in range(1, 100)) == 10
    # An allow-list entry narrower than /64 exempts its /64.
    assert all(guard.admit(f"2001:db8:ffff::{i:x}", NOW) for i in range(1, 100))
    fail(guard, 5, host="2001:db8:ffff::abc")
    assert not guard.banned("2001:db8:ffff::abc", NOW + 5)
    # IPv4-mapped addresses are the IPv4 address.
    assert guard.admit("::ffff:192.0.2.1", NOW) and "192.0.2.1" in guard._buckets
    # Lifted by any address in it, or by the /64 as listed.
    assert guard.unban("2001:db8:1:2::/64", NOW + 6)
    fail(guard, 5, host="2001:db8:1:2::1", at=NOW + 10)
    assert guard.unban("2001:db8:1:2::ffff", NOW + 15)
    with pytest.raises(ValueError):
        guard.unban("192.0.2.0/24", NOW)
