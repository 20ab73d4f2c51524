"""Bans in the kernel: an nftables table of the switch's own.

Theory of operation
-------------------
``softswitch.guard.Guard`` decides; this module only mirrors its bans into
the kernel so that a banned address's packets to the SIP ports are dropped
before they wake the daemon.  One table, ``inet softswitch``, holds two sets
of addresses (``banned4``, ``banned6``) with per-element timeouts (the
remaining ban time: the kernel expires them itself) and one input chain that
drops their TCP and UDP packets to the SIP ports, counting them (IPv6
sources are banned per /64, hence an interval set)::

    nft list table inet softswitch

The table is created afresh at start (an old one, left by a crash, is
replaced) and deleted at stop; no other table is touched.  It needs
CAP_NET_ADMIN, which the packaged unit grants for this alone.

Calls go through python3-nftables (libnftables through ctypes, which
releases the GIL): a few hundred microseconds each, made on the daemon's
single "nft" worker thread, never on the event loop.  When the module is
missing or the kernel refuses, ``open`` says why in one line and the daemon
keeps dropping banned sources in-process.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

__all__ = ["TABLE", "NftBans", "NftError"]

log = logging.getLogger("softswitch.daemon.nft")

TABLE = "softswitch"
#: Elements per set (the guard bounds its bans by the same order of magnitude).
SET_SIZE = 65536


class NftError(Exception):
    """nftables is unavailable or refused; the text is the one line to log."""


def ruleset(ports: Iterable[int]) -> str:
    """The nft script that (re)creates the table; ``ports`` are the SIP ports."""
    plist = ", ".join(str(p) for p in sorted(set(ports)))
    return f"""\
add table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
    set banned4 {{ type ipv4_addr; flags timeout; size {SET_SIZE}; }}
    set banned6 {{ type ipv6_addr; flags interval, timeout; size {SET_SIZE}; }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        ip saddr @banned4 meta l4proto {{ tcp, udp }} th dport {{ {plist} }} counter drop
        ip6 saddr @banned6 meta l4proto {{ tcp, udp }} th dport {{ {plist} }} counter drop
    }}
}}
"""


class NftBans:
    """The switch's table; every method blocks (call it off the event loop)."""

    def __init__(self, ports: Iterable[int]) -> None:
        self.ports = sorted(set(ports))
        self._nft: Any = None
        self.failures = 0  # element updates the kernel refused (logged once)

    def open(self) -> None:
        """Create the table; NftError says why it cannot be."""
        try:
            import nftables  # python3-nftables (pyproject: no hints, maybe absent)
        except ImportError:
            raise NftError("python3-nftables is not installed") from None
        try:
            nft = nftables.Nftables()
        except OSError as exc:  # libnftables.so.1 missing
            raise NftError(f"libnftables: {exc}") from None
        nft.set_json_output(False)
        nft.set_handle_output(False)
        self._nft = nft
        self._run(ruleset(self.ports))

    def _run(self, script: str) -> str:
        rc, out, err = self._nft.cmd(script)
        if rc != 0:
            lines = [ln.strip() for ln in (err or "").splitlines() if ln.strip()]
            raise NftError(lines[0] if lines else f"nft failed ({rc})")
        return str(out)

    def apply(self, changes: Iterable[tuple[str, str, float]]) -> None:
        """The guard's ("add", address, seconds) / ("del", address, 0) in order."""
        if self._nft is None:
            return
        for op, address, seconds in changes:
            try:
                ip = ipaddress.ip_network(address)  # IPv4 address or IPv6 /64
            except ValueError:
                continue  # not an IP (a scoped IPv6 text, say): kept in-process only
            name = "banned4" if ip.version == 4 else "banned6"
            ip_text = str(ip.network_address) if ip.prefixlen == ip.max_prefixlen else str(ip)
            if op == "add":
                timeout = max(1, int(seconds))
                line = f"add element inet {TABLE} {name} {{ {ip_text} timeout {timeout}s }}"
            else:
                line = f"delete element inet {TABLE} {name} {{ {ip_text} }}"
            try:
                self._run(line)
            except Exception as exc:  # NftError, or a surprise from ctypes: never lost silently
                if not isinstance(exc, NftError):
                    exc = NftError(f"{type(exc).__name__}: {exc}")
                if op == "del" and ("No such file" in str(exc) or "does not exist" in str(exc)):
                    continue  # the kernel's timeout got there first
                self.failures += 1
                if self.failures == 1:
                    log.warning("nftables refused %r: %s (further failures counted)", line, exc)

    def close(self) -> None:
        """Delete the table (at stop); errors are logged, never raised."""
        if self._nft is None:
            return
        try:
            self._run(f"delete table inet {TABLE}")
        except NftError as exc:
            log.warning("could not remove nftables table inet %s: %s", TABLE, exc)
        self._nft = None
