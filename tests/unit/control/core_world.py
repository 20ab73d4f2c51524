"""Phones and one bearer around a real ``Switch``, the core the daemon drives.

The same interface as the calls harness' ``Switch`` so its scenario helpers
run against the whole core too (test_calls_core.py, test_metrics.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from softswitch.calls.manager import CallManager
from softswitch.daemon.settings import load_control_config
from softswitch.db.messages import Loaded
from softswitch.model.users import Binding
from softswitch.protocol import (
    Allocate,
    Allocated,
    Delete,
    Deleted,
    Heartbeat,
    HeartbeatReply,
    Message,
    Update,
    Updated,
    decode,
    encode,
)
from softswitch.sip.message import parse
from softswitch.sip.transaction import Peer
from softswitch.switch import Switch as Core
from tests.unit.control.calls_harness import (
    BEARER_ADDRESS,
    BEARER_PORTS,
    DOMAIN,
    STATS,
    T0,
    Phone,
    Switch,
)

BEARER_PEER = "/tmp/test-calls-core-bearer.sock"
BEARER_EPOCH = 4242


class CoreWorld:
    """Phones and one bearer around a real core.Switch (duck-types the harness Switch)."""

    def __init__(self) -> None:
        self.now = T0
        self.phones: dict[Peer, Phone] = {}
        self.cdrs: list[Any] = []
        cfg = load_control_config(Path("/nonexistent/softswitch.conf"))
        cfg.sip.domain = DOMAIN
        cfg.sip.listen = ["192.0.2.1"]
        cfg.bearers.endpoints = [("unix", BEARER_PEER, 0)]
        self.core = Core(cfg, self.now, secret=b"s" * 32, epoch=7)
        assert isinstance(self.core.calls, CallManager)
        self.core.calls.out.on_cdr = self.cdrs.append
        users = Switch().directory  # alice, bob, carol, dave with the harness passwords
        self.core.apply_db_result(Loaded({(u.username, u.domain): u for u in users}, []), self.now)
        self.bearer_sent: list[Message] = []
        self.core.handle_timer(self.now)  # the first heartbeat
        self.pump()

    def register(self, phone: Phone) -> None:
        self.core.location.save(
            Binding(
                username=phone.name,
                domain=DOMAIN,
                contact=phone.contact.strip("<>"),
                expires_at=self.now + 3600,
                source_transport=phone.transport,
                source_host=phone.host,
                source_port=phone.port,
                call_id=f"reg-{phone.name}",
                cseq=1,
            )
        )

    def receive(self, phone: Phone, message: Any) -> None:
        self.core.receive_sip(bytes(message), phone.peer, self.now)
        self.pump()

    def pump(self) -> None:
        core = self.core
        for _ in range(1000):
            sip = core.sip_datagrams_to_send()
            bearer = core.bearer_datagrams_to_send()
            if not sip and not bearer:
                return
            for data, peer in sip:
                self.phones[peer].inbox.append(parse(data))
            for data, peer in bearer:
                assert peer == BEARER_PEER
                packet = decode(data)
                self.bearer_sent.append(packet.message)
                reply = self._answer(packet.message)
                core.receive_bearer(encode(reply, packet.request_id, BEARER_EPOCH), peer, self.now)
        raise AssertionError("never quiet")

    def _answer(self, m: Any) -> Message:
        if isinstance(m, Heartbeat):
            return HeartbeatReply(7, 0, 500, 5, 0)
        if isinstance(m, Allocate):
            return Allocated(m.session_id, BEARER_ADDRESS, BEARER_PORTS[: len(m.legs)])
        if isinstance(m, Update):
            return Updated(m.session_id)
        if isinstance(m, Delete):
            return Deleted(m.session_id, STATS)
        raise AssertionError(f"unexpected {m!r}")
