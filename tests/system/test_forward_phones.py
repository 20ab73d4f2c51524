"""Call forwarding and do-not-disturb with real pjsua2 phones through the real switch.

Forwarding is set the way an operator sets it (``softswitchctl user set``,
into the database) and reaches the running daemon through the DB thread's
sync (``sync_interval`` 0.5 s here).  The forwarded call is judged by ear
(each side hears the other's tone) and by its CDR row.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.system.loopback_switch import E2eSwitch, assert_cdr, assert_two_way, hang_up

SYNC = 1.5  # > sync_interval (0.5 s) + one poll: the daemon has the change
CLEAR = ("--forward-always", "", "--forward-busy", "", "--forward-noanswer", "", "--dnd", "off")


@pytest.fixture
def forwarding(e2e_switch: E2eSwitch) -> Iterator[object]:
    """``set(user, *options)``; every user's forwarding is cleared afterwards."""
    touched: set[str] = set()

    def set_(user: str, *options: str) -> None:
        touched.add(user)
        if not options:
            return
        done = e2e_switch.control.ctl("user", "set", user, *options)  # type: ignore[union-attr]
        assert done.returncode == 0, done.stderr
        time.sleep(SYNC)

    yield set_
    for user in touched:
        e2e_switch.control.ctl(  # type: ignore[union-attr]
            "user", "set", user, *CLEAR
        )
    time.sleep(SYNC)


def test_forward_always_bob_to_carol_carol_answers_and_they_hear_each_other(
    e2e_switch: E2eSwitch, e2e_phones, forwarding
) -> None:
    sw = e2e_switch
    a, b, c = e2e_phones(
        {"name": "alice", "user": "alice"},
        {"name": "bob", "user": "bob", "auto_answer": 0.3},
        {"name": "carol", "user": "carol", "auto_answer": 0.3},
    )
    forwarding("bob", "--forward-always", "carol")
    mark = sw.cdr_mark()
    ca = a.call(sw.uri("bob"))
    info = a.wait_state("CONFIRMED", 8, call=ca)
    assert info["state"] == "CONFIRMED", f"{info}\n{sw.logs()}"
    cc = c.incoming(2)
    a.pump(2.0)
    assert b.calls() == [], "bob's phone rang although bob forwards always"
    hang_up(a, ca, c, cc)
    assert_two_way(a, ca, c, cc)
    (row,) = sw.wait_cdrs(mark, caller="alice@", callee="carol@")
    assert_cdr(row, "answered", 200, answered=True)
    assert row["forwarded_from"].startswith("bob@"), row


def test_dnd_caller_gets_486_and_the_phone_never_rings(
    e2e_switch: E2eSwitch, e2e_phones, forwarding
) -> None:
    sw = e2e_switch
    a, b = e2e_phones(
        {"name": "alice", "user": "alice"}, {"name": "bob", "user": "bob", "auto_answer": 0.3}
    )
    forwarding("bob", "--dnd", "on")
    mark = sw.cdr_mark()
    ca = a.call(sw.uri("bob"))
    info = a.wait_state("DISCONNECTED", 8, call=ca)
    assert (info["state"], info["last_status"]) == ("DISCONNECTED", 486), info
    assert b.calls() == []
    (row,) = sw.wait_cdrs(mark, caller="alice@", callee="bob@")
    assert_cdr(row, "busy", 486, answered=False)


def test_a_forward_loop_is_refused_with_482(e2e_switch: E2eSwitch, e2e_phones, forwarding) -> None:
    sw = e2e_switch
    a, b, c = e2e_phones(
        {"name": "alice", "user": "alice"},
        {"name": "bob", "user": "bob", "auto_answer": 0.3},
        {"name": "carol", "user": "carol", "auto_answer": 0.3},
    )
    forwarding("bob", "--forward-always", "carol")
    forwarding("carol", "--forward-always", "bob")
    mark = sw.cdr_mark()
    ca = a.call(sw.uri("bob"))
    info = a.wait_state("DISCONNECTED", 8, call=ca)
    assert (info["state"], info["last_status"]) == ("DISCONNECTED", 482), info
    assert b.calls() == [] and c.calls() == []
    (row,) = sw.wait_cdrs(mark, caller="alice@", callee="bob@")
    assert_cdr(row, "rejected", 482, answered=False)


@pytest.mark.parametrize("how", ["busy", "noanswer"])
def test_forward_on_busy_and_on_no_answer_reach_carol_with_two_way_audio(
    e2e_switch: E2eSwitch, e2e_phones, forwarding, how: str
) -> None:
    sw = e2e_switch
    bob = {"auto_reject": 486} if how == "busy" else {}  # noanswer: bob rings, nobody picks up
    a, b, c = e2e_phones(
        {"name": "alice", "user": "alice"},
        {"name": "bob", "user": "bob", **bob},
        {"name": "carol", "user": "carol", "auto_answer": 0.3},
    )
    forwarding("bob", f"--forward-{how}", "carol", "--noanswer-after", "1")
    mark = sw.cdr_mark()
    ca = a.call(sw.uri("bob"))
    cb = b.incoming(3)  # bob's phone rang first
    info = a.wait_state("CONFIRMED", 8, call=ca)
    assert info["state"] == "CONFIRMED", f"{info}\n{sw.logs()}"
    assert b.wait_state("DISCONNECTED", 5, call=cb)["state"] == "DISCONNECTED"  # CANCELled
    cc = c.incoming(2)
    a.pump(2.0)
    hang_up(a, ca, c, cc)
    assert_two_way(a, ca, c, cc)
    (row,) = sw.wait_cdrs(mark, caller="alice@", callee="carol@")
    assert_cdr(row, "answered", 200, answered=True)
    assert row["forwarded_from"].startswith("bob@"), row


def test_feature_codes_from_the_phone_star72_star73_and_the_db_row(
    e2e_switch: E2eSwitch, e2e_phones, forwarding
) -> None:
    sw = e2e_switch
    a, b, c = e2e_phones(
        {"name": "alice", "user": "alice"},
        {"name": "bob", "user": "bob", "auto_answer": 0.3},
        {"name": "carol", "user": "carol", "auto_answer": 0.3},
    )
    forwarding("bob")  # nothing set now; cleared afterwards whatever happens

    def dial(code: str) -> None:
        call = b.call(sw.uri(code))
        info = b.wait_state("DISCONNECTED", 8, call=call)
        assert info["state"] == "DISCONNECTED", info
        assert "CONFIRMED" in info["states"], f"{code}: {info}\n{sw.logs()}"  # 200, then BYE

    def bob_in_db() -> dict:
        (row,) = [u for u in sw.ctl_json("user", "list") if u["username"] == "bob"]
        return row

    dial("*72carol")
    deadline = time.monotonic() + 5
    while bob_in_db()["forward_always"] != "carol" and time.monotonic() < deadline:
        time.sleep(0.1)  # the DB thread writes in batches (bounded wait)
    assert bob_in_db()["forward_always"] == "carol"
    ca = a.call(sw.uri("bob"))
    assert a.wait_state("CONFIRMED", 8, call=ca)["state"] == "CONFIRMED"
    cc = c.incoming(2)
    a.hangup(ca)
    assert c.wait_state("DISCONNECTED", 5, call=cc)["state"] == "DISCONNECTED"
    dial("*73")
    deadline = time.monotonic() + 5
    while bob_in_db()["forward_always"] != "" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bob_in_db()["forward_always"] == ""
