"""The location table: bindings per AOR, expiry on a fake clock, bounds."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from softswitch.location import LocalAddress, Location
from softswitch.model.users import Binding

NOW = 1_700_000_000.0


def binding(
    contact: str = "sip:alice@10.0.0.5:5062", expires_in: float = 3600, **kw: Any
) -> Binding:
    """Alice's binding from one UDP source; ``kw`` overrides any field."""
    b = Binding(
        username="alice",
        domain="example.org",
        contact=contact,
        expires_at=NOW + expires_in,
        source_transport="udp",
        source_host="192.0.2.7",
        source_port=40000,
        call_id="c1",
        cseq=1,
    )
    return replace(b, **kw)


def test_lookup_returns_every_unexpired_device_of_the_user() -> None:
    loc = Location()
    loc.save(binding("sip:alice@10.0.0.5:5062"))
    loc.save(binding("sip:alice@10.0.0.6:5060", expires_in=60))
    loc.save(binding("sip:bob@10.0.0.7", username="bob"))
    contacts = [b.contact for b in loc.lookup("alice", "EXAMPLE.org", NOW)]
    assert contacts == ["sip:alice@10.0.0.5:5062", "sip:alice@10.0.0.6:5060"]
    assert [b.contact for b in loc.lookup("alice", "example.org", NOW + 61)] == [
        "sip:alice@10.0.0.5:5062"
    ]
    assert loc.lookup("carol", "example.org", NOW) == []
    assert len(loc) == 3 and loc.aor_count == 2


def test_expire_removes_bindings_exactly_at_their_deadline() -> None:
    loc = Location()
    loc.save(binding("sip:a@1", expires_in=60))
    loc.save(binding("sip:a@2", expires_in=120))
    assert loc.get_timer() == NOW + 60
    assert loc.expire(NOW + 59.9) == []
    assert [b.contact for b in loc.expire(NOW + 60)] == ["sip:a@1"]
    assert loc.get_timer() == NOW + 120
    assert [b.contact for b in loc.expire(NOW + 500)] == ["sip:a@2"]
    assert loc.get_timer() is None and len(loc) == 0 and loc.aor_count == 0


def test_refreshed_binding_is_not_expired_by_its_old_deadline() -> None:
    loc = Location()
    loc.save(binding("sip:a@1", expires_in=60))
    loc.save(binding("sip:a@1", expires_in=600, cseq=2))
    assert loc.expire(NOW + 60) == []
    assert loc.get_timer() == NOW + 600
    assert len(loc) == 1


def test_heap_stays_bounded_when_a_phone_refreshes_every_minute() -> None:
    loc = Location()
    for i in range(20_000):
        loc.save(binding("sip:a@1", expires_in=3600 + i, cseq=i))
    assert len(loc._heap) <= 2 * len(loc) + 1025


def test_eleventh_device_evicts_the_binding_expiring_first() -> None:
    loc = Location(max_contacts=10)
    for i in range(10):
        assert loc.save(binding(f"sip:a@10.0.0.{i}", expires_in=1000 + i)) == []
    evicted = loc.save(binding("sip:a@10.0.0.99", expires_in=5))
    assert [b.contact for b in evicted] == ["sip:a@10.0.0.0"]
    assert len(loc.lookup("alice", "example.org", NOW)) == 10
    assert loc.get("alice", "example.org", "sip:a@10.0.0.99") is not None


def test_load_keeps_only_live_bindings_and_replaces_everything() -> None:
    loc = Location()
    loc.save(binding("sip:old@1"))
    kept = loc.load([binding("sip:a@1"), binding("sip:a@2", expires_in=-1)], NOW)
    assert kept == 1
    assert [b.contact for b in loc] == ["sip:a@1"]


def test_load_lowercases_domains_so_lookups_find_them() -> None:
    loc = Location()
    loc.load([binding(domain="Example.ORG")], NOW)
    assert len(loc.lookup("alice", "example.org", NOW)) == 1


def test_save_refuses_a_mixed_case_domain() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        Location().save(binding(domain="Example.org"))


def test_remove_and_remove_aor() -> None:
    loc = Location()
    loc.save(binding("sip:a@1"))
    loc.save(binding("sip:a@2"))
    removed = loc.remove("alice", "example.org", "sip:a@1")
    assert removed is not None and removed.contact == "sip:a@1"
    assert loc.remove("alice", "example.org", "sip:a@1") is None
    assert [b.contact for b in loc.remove_aor("alice", "example.org")] == ["sip:a@2"]
    assert loc.remove_aor("alice", "example.org") == []
    assert len(loc) == 0


def test_source_index_follows_bindings_for_tcp_connection_keeping() -> None:
    loc = Location()
    loc.save(binding("sip:a@1", source_transport="tcp", source_port=5000))
    loc.save(binding("sip:a@2", source_transport="tcp", source_port=5000))
    assert loc.has_source("tcp", "192.0.2.7", 5000)
    loc.remove("alice", "example.org", "sip:a@1")
    assert loc.has_source("tcp", "192.0.2.7", 5000)
    loc.save(replace(binding("sip:a@2"), source_port=6000))
    assert not loc.has_source("tcp", "192.0.2.7", 5000)


def test_snapshot_rows_for_softswitchctl() -> None:
    loc = Location()
    loc.save(binding("sip:a@1", source_host="2001:db8::1", user_agent="Phone/1"))
    loc.save(binding("sip:a@2", expires_in=-5))  # expired, not yet collected
    assert loc.snapshot(NOW + 100) == [
        {
            "aor": "alice@example.org",
            "contact": "sip:a@1",
            "expires": 3500,
            "source": "udp:[2001:db8::1]:40000",
            "user_agent": "Phone/1",
        }
    ]


def test_local_address_host_port_brackets_ipv6() -> None:
    assert LocalAddress("::1", 5060, ("udp",)).host_port == "[::1]:5060"
    assert LocalAddress("127.0.0.1", 5070, ("udp", "tcp")).host_port == "127.0.0.1:5070"
