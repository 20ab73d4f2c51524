"""softswitch.daemon.metrics: the collector against a real core.Switch, the histogram, the server.

The Switch is test_calls_core's ``CoreWorld`` (real core, CallManager,
BearerPool over the real ProtocolClient, the bearer answered on the wire);
the exposition text is parsed back with prometheus-client's own parser.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from softswitch.calls.manager import DelayHistogram
from softswitch.daemon.metrics import MetricsServer, SwitchCollector, exposition, make_registry
from softswitch.daemon.settings import load_control_config
from softswitch.daemonkit.config import ConfigError
from softswitch.protocol import Allocate, Message
from softswitch.sip.dialog import Dialog
from softswitch.sip.digest import DigestClient
from softswitch.sip.message import Response
from tests.unit.control.calls_harness import DOMAIN, Phone, authenticated_invite
from tests.unit.control.core_world import CoreWorld


def samples(text: bytes) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} from an exposition, via prometheus-client's parser."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: bytes, name: str, **labels: str) -> float:
    return samples(text)[(name, frozenset(labels.items()))]


class SlowBearerWorld(CoreWorld):
    """The bearer answers ALLOCATE 1.5 ms after it was sent."""

    def _answer(self, m: Any) -> Message:
        if isinstance(m, Allocate):
            self.now += 0.0015
        return super()._answer(m)


def register(world: CoreWorld, phone: Phone) -> Response:
    """A real REGISTER with digest through the core (401, then 200)."""
    client = DigestClient(phone.name, password=f"{phone.name}-secret")

    def request(cseq: int) -> bytes:
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bKreg{cseq}",
            "Max-Forwards: 70",
            f"From: <sip:{phone.name}@{DOMAIN}>;tag=r1",
            f"To: <sip:{phone.name}@{DOMAIN}>",
            f"Call-ID: reg-{phone.name}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: {phone.contact}",
            "Expires: 3600",
        ]
        auth = client.authorization("REGISTER", f"sip:{DOMAIN}")
        if auth:
            lines.append(f"Authorization: {auth}")
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    world.core.receive_sip(request(1), phone.peer, world.now)
    world.pump()
    challenge = phone.take(401)
    client.challenged(challenge.get_all("WWW-Authenticate"))
    world.core.receive_sip(request(2), phone.peer, world.now)
    world.pump()
    return phone.take(200)


def test_exposition_after_a_register_and_a_call() -> None:
    world = SlowBearerWorld()
    core = world.core
    core.calls.out.on_cdr = core._on_cdr  # CoreWorld diverts CDRs; the core counts them
    source = SimpleNamespace(switch=core)
    alice = Phone(world, "alice", "198.51.100.10")  # type: ignore[arg-type]
    bob = Phone(world, "bob", "198.51.100.20")  # type: ignore[arg-type]

    before = exposition(source)
    assert value(before, "softswitch_registrations") == 0
    assert value(before, "softswitch_call_setup_delay_seconds_count") == 0
    assert value(before, "softswitch_bearer_up", bearer=core.bearers.bearers[0].name) == 1

    register(world, bob)
    text = exposition(source)
    assert value(text, "softswitch_users") == 4
    assert value(text, "softswitch_registrations") == 1
    assert value(text, "softswitch_registered_aors") == 1
    assert value(text, "softswitch_registers_accepted_total") == 1
    assert (
        value(text, "softswitch_sip_requests_total", direction="received", method="REGISTER") == 2
    )
    assert value(text, "softswitch_sip_responses_total", direction="sent", code="401") == 1
    assert value(text, "softswitch_sip_responses_total", direction="sent", code="200") == 1

    invite_a = authenticated_invite(alice, "bob")
    invite_b = bob.take("INVITE")
    bob.send(bob.answer(invite_b, 180))
    during = exposition(source)
    assert value(during, "softswitch_calls_active") == 1
    assert value(during, "softswitch_calls_by_state", state="calling") == 1
    assert value(during, "softswitch_bearer_sessions", bearer=core.bearers.bearers[0].name) == 1
    bob.send(bob.answer(invite_b, 200, bob.offer()))
    ok = alice.take(200)
    dialog = Dialog.from_uac(invite_a, ok)
    alice.send(dialog.create_ack(invite_a.cseq, via=alice.via()))
    bob.take("ACK")
    world.now += 5
    alice.send(dialog.create_request("BYE", via=alice.via()))
    bob.send(bob.answer(bob.take("BYE"), 200))

    after = samples(exposition(source))

    def v(name: str, **labels: str) -> float:
        return after[(name, frozenset(labels.items()))]

    assert v("softswitch_calls_active") == 0
    assert v("softswitch_calls_total", disposition="answered") == 1
    assert v("softswitch_calls_total", disposition="busy") == 0  # every disposition, from 0
    assert v("softswitch_calls_bearer_failover_total", outcome="moved") == 0
    # Set-up delay: one call, forked 1.5 ms after its INVITE (the ALLOCATE round trip).
    assert v("softswitch_call_setup_delay_seconds_count") == 1
    assert v("softswitch_call_setup_delay_seconds_sum") == pytest.approx(0.0015, abs=1e-6)
    assert v("softswitch_call_setup_delay_seconds_bucket", le="0.001") == 0
    assert v("softswitch_call_setup_delay_seconds_bucket", le="0.002") == 1
    assert v("softswitch_call_setup_delay_seconds_bucket", le="+Inf") == 1
    # SIP both ways, by method and status.
    assert v("softswitch_sip_requests_total", direction="received", method="INVITE") == 2
    assert v("softswitch_sip_requests_total", direction="received", method="ACK") == 2
    assert v("softswitch_sip_requests_total", direction="received", method="BYE") == 1
    assert v("softswitch_sip_requests_total", direction="sent", method="INVITE") == 1
    assert v("softswitch_sip_requests_total", direction="sent", method="ACK") == 1
    assert v("softswitch_sip_requests_total", direction="sent", method="BYE") == 1
    assert v("softswitch_sip_responses_total", direction="received", code="180") == 1
    assert v("softswitch_sip_responses_total", direction="received", code="200") == 2
    assert v("softswitch_sip_responses_total", direction="sent", code="407") == 1
    assert v("softswitch_sip_messages_total", direction="received") == sum(
        n
        for (name, labels), n in after.items()
        if name in ("softswitch_sip_requests_total", "softswitch_sip_responses_total")
        and ("direction", "received") in labels
    )
    # The bearer: up, its capacity and CPU from its heartbeat (HeartbeatReply(7, 0, 500, 5, 0)).
    name = core.bearers.bearers[0].name
    assert v("softswitch_bearer_up", bearer=name) == 1
    assert v("softswitch_bearer_capacity", bearer=name) == 500
    assert v("softswitch_bearer_cpu_ratio", bearer=name) == 0.05
    assert v("softswitch_bearer_restarts_total", bearer=name) == 0
    assert v("softswitch_sip_transactions") == len(core.layer)
    assert v("softswitch_serving") == 1
    assert v("softswitch_internal_errors_total") == 0


def test_drops_and_core_refusals_are_labelled_by_reason() -> None:
    world = CoreWorld()
    phone = Phone(world, "alice", "198.51.100.10")  # type: ignore[arg-type]
    core = world.core
    core.receive_sip(b"\x00\x01" + bytes(18) + b"junk", phone.peer, world.now)  # not SIP
    core.receive_sip(b"SIP/2.0 200 OK\r\n\r\n", phone.peer, world.now)  # unparsable response
    text = exposition(SimpleNamespace(switch=core))
    dropped = {
        dict(labels)["reason"]: n
        for (name, labels), n in samples(text).items()
        if name == "softswitch_dropped_total"
    }
    assert sum(dropped.values()) == 2, dropped


def test_the_database_section() -> None:
    db = SimpleNamespace(healthy=False, backlog=17, dropped=3, spool_errors=2)
    text = exposition(SimpleNamespace(db=db))
    assert value(text, "softswitch_db_up") == 0
    assert value(text, "softswitch_db_write_queue") == 17
    assert value(text, "softswitch_db_writes_dropped_total") == 3
    assert value(text, "softswitch_db_spool_errors_total") == 2
    db.healthy = None  # not reached yet
    assert value(exposition(SimpleNamespace(db=db)), "softswitch_db_up") == 0


def test_a_daemon_still_starting_exposes_what_exists() -> None:
    assert exposition(SimpleNamespace()) == b""
    text = make_registry(SimpleNamespace(), process=True)
    names = {f.name for f in text.collect()}
    assert "process_cpu_seconds" in names and "python_info" in names


def test_a_failing_section_costs_only_itself_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = CoreWorld()
    world.core.bearers = None  # type: ignore[assignment]  # a bug: the section cannot read its pool
    collector = SwitchCollector(SimpleNamespace(switch=world.core))
    with caplog.at_level(logging.ERROR, "softswitch.daemon.metrics"):
        first = {f.name for f in collector.collect()}
        second = {f.name for f in collector.collect()}
    assert first == second
    assert "softswitch_registrations" in first and "softswitch_calls_active" in first
    assert not any(n.startswith("softswitch_bearer") for n in first)
    assert [r.getMessage() for r in caplog.records] == [
        "metrics: the bearers section failed and is left out"
    ]


def test_delay_histogram_buckets_are_cumulative_and_le() -> None:
    h = DelayHistogram((0.001, 0.002))
    for s in (0.001, 0.0011, 0.002, 0.5, -0.1):  # a wall-clock step back counts as 0
        h.observe(s)
    buckets, total = h.snapshot()
    assert buckets == [(0.001, 2), (0.002, 4), (float("inf"), 5)]
    assert total == pytest.approx(0.5041)


def test_the_server_serves_the_registry_and_a_taken_port_is_an_oserror() -> None:
    db = SimpleNamespace(healthy=True, backlog=0, dropped=0, spool_errors=0)
    server = MetricsServer("127.0.0.1", 0, make_registry(SimpleNamespace(db=db)))
    server.start()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(server.url, timeout=5) as r:
            body = r.read()
            assert r.headers["Content-Type"].startswith("text/plain")
        assert value(body, "softswitch_db_up") == 1
        assert "process_resident_memory_bytes" in body.decode()
        taken = MetricsServer("127.0.0.1", server.port, make_registry(SimpleNamespace()))
        with pytest.raises(OSError):
            taken.start()
    finally:
        server.close()
    with pytest.raises(OSError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_the_server_on_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = MetricsServer("::1", 0, make_registry(SimpleNamespace(), process=False))
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        with urllib.request.urlopen(server.url, timeout=5) as r:
            assert r.status == 200
    finally:
        server.close()


# ------------------------------------------------------------------ [metrics] listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"127.0.0.1:9464"', ("127.0.0.1", 9464)),
        ('"[::1]:9100"', ("::1", 9100)),
        ('"0.0.0.0:80"', ("0.0.0.0", 80)),
        ('""', None),
    ],
)
def test_metrics_listen_values(tmp_path: Path, text: str, expected: object) -> None:
    conf = tmp_path / "softswitch.conf"
    conf.write_text(f"[metrics]\nlisten = {text}\n")
    assert load_control_config(conf).metrics.listen == expected


def test_metrics_listen_defaults_to_loopback_9464(tmp_path: Path) -> None:
    assert load_control_config(tmp_path / "none.conf").metrics.listen == ("127.0.0.1", 9464)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"9464"', 'not ADDRESS:PORT: "9464"'),
        ('"localhost:9464"', 'not an IP address: "localhost"'),
        ('"::1:9464"', 'an IPv6 address needs brackets, [ADDRESS]:PORT: "::1:9464"'),
        ('"127.0.0.1:70000"', "port 70000 is outside 1..65535"),
        ('"127.0.0.1:"', 'not ADDRESS:PORT: "127.0.0.1:"'),
        ("9464", "expected a string, got an integer (9464)"),
    ],
)
def test_metrics_listen_errors_name_the_file_line_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    conf = tmp_path / "softswitch.conf"
    conf.write_text(f"[metrics]\nlisten = {text}\n")
    with pytest.raises(ConfigError) as err:
        load_control_config(conf)
    assert str(err.value) == f"{conf}:2: [metrics] listen: {message}"
