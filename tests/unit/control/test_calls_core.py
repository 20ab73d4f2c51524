"""The CallManager wired into softswitch.switch.Switch: SIP and bearer protocol as bytes.

Everything else in test_calls_* drives CallManager directly; this checks the
contract with the sibling modules (core dispatch, BearerPool over the real
ProtocolClient, Location, LocalAddress) by running one call through the
core, with the bearer's side of the private protocol answered on the wire.
"""

from __future__ import annotations

from softswitch.model.cdr import Disposition
from softswitch.protocol import (
    Heartbeat,
)
from softswitch.sip.dialog import Dialog
from tests.unit.control.calls_harness import (
    BEARER_ADDRESS,
    BEARER_PORTS,
    STATS,
    Phone,
    authenticated_invite,
    media_of,
)
from tests.unit.control.core_world import BEARER_PEER, CoreWorld


def test_a_call_through_the_core_with_the_bearer_on_the_wire() -> None:
    world = CoreWorld()
    assert world.core.bearers.bearers[0].up
    alice = Phone(world, "alice", "198.51.100.10")  # type: ignore[arg-type]
    bob = Phone(world, "bob", "198.51.100.20")  # type: ignore[arg-type]
    world.register(bob)
    invite_a = authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    assert media_of(invite_b)[:2] == (BEARER_ADDRESS, BEARER_PORTS[1])
    bob.send(bob.answer(invite_b, 180))
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    ok = alice.take(200)
    assert media_of(ok)[:2] == (BEARER_ADDRESS, BEARER_PORTS[0])
    dialog = Dialog.from_uac(invite_a, ok)
    alice.send(dialog.create_ack(invite_a.cseq, via=alice.via()))
    bob.take("ACK")
    assert world.core.admin_calls()[0]["state"] == "confirmed"
    world.now += 20
    alice.send(dialog.create_request("BYE", via=alice.via()))
    bob.send(bob.answer(bob.take("BYE"), 200))
    kinds = [type(m).__name__ for m in world.bearer_sent if not isinstance(m, Heartbeat)]
    assert kinds == ["Allocate", "Update", "Delete"]
    (cdr,) = world.cdrs
    assert cdr.disposition is Disposition.ANSWERED and cdr.duration == 20
    assert cdr.bearer == f"unix:{BEARER_PEER}" and cdr.a_packets == STATS[0].packets_in
