"""Network namespaces for system tests: hosts on a bridge, and a NAT.

``Topology`` builds a small private network with ``ip`` (iproute2) and
``nft`` (nftables): one namespace per host, all joined to a bridge that
lives in its own "hub" namespace, so nothing is added to the host's own
network.  Optional hosts sit behind a NAT namespace that masquerades them
(nftables) onto the bridge, for rport/NAT tests.

    with Topology(("ctl", "media", "phones"), nat_hosts=("home",)) as net:
        net.addr("ctl")                     # "10.99.0.11"
        net.run("phones", ["python3", ...])  # inside the namespace
        net.popen("ctl", [...])              # a process that stays up
        net.ping("phones", net.addr("ctl"))

Layout (``sstPID-`` prefix on every namespace name)::

    hub:  br0 ── h0 (ctl eth0 10.99.0.11) ── h1 (media 10.99.0.12) ── ...
               └─ hnat (nat eth0 10.99.0.2) ── nat: br-lan 192.168.99.1
                                                   └─ home eth0 192.168.99.11

Everything is removed on exit, even after a failure; ``cleanup_stale``
removes what a crashed earlier run left (namespaces whose creator pid is
gone).  The subprocess route (``ip``) is used rather than pyroute2 because
its error messages are the ones people know, and any failure is shown with
the command that caused it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest

PREFIX = "sst"
STALE_RE = re.compile(rf"^{PREFIX}(\d+)-")
PING_CODE = r"""
import os, socket, struct, sys, time
dst, timeout = sys.argv[1], float(sys.argv[2])
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_RAW,
                  socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, 1) + b"sst-ping"
if not v6:
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
deadline = time.monotonic() + timeout
s.sendto(body, (dst, 0))
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        data, src = s.recvfrom(2048)
    except socket.timeout:
        break
    icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
    typ, _, _, rid, _ = struct.unpack("!BBHHH", icmp[:8])
    if typ == (129 if v6 else 0) and rid == ident:
        sys.exit(0)
sys.exit(1)
"""


class NetnsError(RuntimeError):
    """A namespace command failed; the message has the command and its stderr."""


def require_root() -> None:
    """Fail (not skip) clearly when a namespace test runs without root.

    A skipped system test looks like a passed one in a summary line; these
    tests are the proof that the equipment works, so they must not vanish.
    """
    if os.geteuid() != 0:
        raise NetnsError(
            "this test needs root (network namespaces, veth, nftables); "
            "run the system tests as root, e.g. in CI or a throwaway VM"
        )


@pytest.fixture
def as_root() -> None:
    """Fixture: fail the test loudly, not skip it, when not running as root."""
    try:
        require_root()
    except NetnsError as e:
        pytest.fail(str(e), pytrace=False)


def sh(argv: Sequence[str], *, check: bool = True, timeout: float = 10.0, **kw: Any) -> str:
    """Run a command, return stdout; raise NetnsError with stderr if it fails."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise NetnsError(f"{' '.join(argv)}: timed out after {timeout:g} s") from e
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def netns_list() -> list[str]:
    """Names of all network namespaces known to ``ip netns``."""
    return [line.split()[0] for line in sh(["ip", "netns", "list"]).splitlines() if line.strip()]


def run_in(ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` inside namespace ``ns`` (``ip netns exec``); returns the Popen.

    ``ip netns exec`` execs the command in place, so the Popen's pid is the
    command's own pid and killing it kills the command.
    """
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)


def _kill_pids_in(ns: str) -> None:
    """SIGKILL the processes inside one of our namespaces, by pid."""
    try:
        pids = [int(p) for p in sh(["ip", "netns", "pids", ns], check=False).split()]
    except ValueError:
        return
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_netns(ns: str) -> None:
    """Kill what runs in ``ns`` and delete it (its veths go with it)."""
    _kill_pids_in(ns)
    sh(["ip", "netns", "del", ns], check=False)


def cleanup_stale() -> list[str]:
    """Delete namespaces left by earlier runs whose process is gone."""
    removed = []
    for ns in netns_list():
        m = STALE_RE.match(ns)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # its creator still runs (maybe another test session)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        delete_netns(ns)
        removed.append(ns)
    return removed


class Topology:
    """Hosts in namespaces on one bridge, optionally some behind a NAT.

    ``hosts`` get 10.99.0.11, .12, ... (and fd99::11, ... with ``ipv6``);
    ``nat_hosts`` get 192.168.99.11, ... behind a namespace "nat" whose
    public side is 10.99.0.2.  With ``nat_random_ports`` the NAT also
    rewrites source ports, so a phone's private port never equals its
    public one and a switch that ignores rport is caught.
    """

    SUBNET = "10.99.0"
    SUBNET6 = "fd99::"
    LAN = "192.168.99"
    NAT_PUBLIC = "10.99.0.2"

    def __init__(
        self,
        hosts: Sequence[str] = ("ctl", "media", "phones"),
        *,
        nat_hosts: Sequence[str] = (),
        ipv6: bool = False,
        nat_random_ports: bool = True,
    ) -> None:
        names = list(hosts) + list(nat_hosts)
        if len(set(names)) != len(names) or {"hub", "nat"} & set(names):
            raise ValueError(f"host names must be unique and not 'hub'/'nat': {names}")
        self.hosts = list(hosts)
        self.nat_hosts = list(nat_hosts)
        self.ipv6 = ipv6
        self.nat_random_ports = nat_random_ports
        self.tag = f"{PREFIX}{os.getpid()}-"
        self._addrs: dict[str, str] = {}
        self._addrs6: dict[str, str] = {}
        self._created: list[str] = []
        self._procs: list[subprocess.Popen] = []

    # naming ------------------------------------------------------------------

    def ns(self, host: str) -> str:
        """The namespace name of ``host`` (also 'hub' and 'nat')."""
        return self.tag + host

    def addr(self, host: str) -> str:
        """IPv4 address of ``host`` (private 192.168.99.x for NAT'd hosts)."""
        if host == "nat":
            return self.NAT_PUBLIC
        return self._addrs[host]

    def addr6(self, host: str) -> str:
        if not self.ipv6:
            raise ValueError("topology built without ipv6=True")
        return self._addrs6[host]

    # building ----------------------------------------------------------------

    def _ip(self, ns: str, *args: str) -> None:
        sh(["ip", "-n", ns, *args])

    def _add_ns(self, host: str) -> str:
        ns = self.ns(host)
        if ns in netns_list():
            delete_netns(ns)  # our pid, so a leftover of this very process
        sh(["ip", "netns", "add", ns])
        self._created.append(ns)
        self._ip(ns, "link", "set", "lo", "up")
        return ns

    def _veth(self, ns: str, hub_ns: str, hub_if: str, bridge: str) -> None:
        """eth0 in ``ns``, its peer ``hub_if`` in ``hub_ns`` on ``bridge``."""
        sh(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
            "peer", "name", hub_if, "netns", hub_ns])  # fmt: skip
        self._ip(hub_ns, "link", "set", hub_if, "master", bridge)
        self._ip(hub_ns, "link", "set", hub_if, "up")
        self._ip(ns, "link", "set", "eth0", "up")

    def up(self) -> Topology:
        require_root()
        cleanup_stale()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        hub = self._add_ns("hub")
        self._ip(hub, "link", "add", "br0", "type", "bridge")
        self._ip(hub, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            ns = self._add_ns(host)
            self._veth(ns, hub, f"h{i}", "br0")
            self._addrs[host] = f"{self.SUBNET}.{11 + i}"
            self._ip(ns, "addr", "add", f"{self._addrs[host]}/24", "dev", "eth0")
            if self.ipv6:
                self._addrs6[host] = f"{self.SUBNET6}{11 + i}"
                self._ip(ns, "addr", "add", f"{self._addrs6[host]}/64", "dev", "eth0", "nodad")
        if self.nat_hosts:
            self._build_nat(hub)

    def _build_nat(self, hub: str) -> None:
        nat = self._add_ns("nat")
        self._veth(nat, hub, "hnat", "br0")
        self._ip(nat, "addr", "add", f"{self.NAT_PUBLIC}/24", "dev", "eth0")
        self._ip(nat, "link", "add", "br-lan", "type", "bridge")
        self._ip(nat, "link", "set", "br-lan", "up")
        self._ip(nat, "addr", "add", f"{self.LAN}.1/24", "dev", "br-lan")
        sh(["ip", "netns", "exec", nat, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        flags = " random" if self.nat_random_ports else ""
        ruleset = (
            "table ip sstnat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "eth0" ip saddr {self.LAN}.0/24 masquerade{flags}\n'
            "  }\n"
            "}\n"
        )
        sh(["ip", "netns", "exec", nat, "nft", "-f", "-"], input=ruleset)
        for i, host in enumerate(self.nat_hosts):
            ns = self._add_ns(host)
            self._veth(ns, nat, f"l{i}", "br-lan")
            self._addrs[host] = f"{self.LAN}.{11 + i}"
            self._ip(ns, "addr", "add", f"{self._addrs[host]}/24", "dev", "eth0")
            self._ip(ns, "route", "add", "default", "via", f"{self.LAN}.1")

    def down(self) -> None:
        """Stop our processes, delete every namespace we made; never raises."""
        for p in self._procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        self._procs.clear()
        for ns in reversed(self._created):
            try:
                delete_netns(ns)
            except NetnsError as e:  # keep going: remove the rest
                print(f"netns cleanup: {e}", file=sys.stderr)
        self._created.clear()

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    # using -------------------------------------------------------------------

    def run(
        self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = 10.0, **kw
    ) -> subprocess.CompletedProcess:
        """Run a command to completion inside ``host``."""
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check and p.returncode != 0:
            raise NetnsError(f"[{host}] {' '.join(argv)}: exit {p.returncode}: {p.stderr}")
        return p

    def popen(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """Start a process inside ``host``; it is killed by ``down()`` at the latest."""
        p = run_in(self.ns(host), argv, **popen_kwargs)
        self._procs.append(p)
        return p

    def ping(self, host: str, dst: str, timeout: float = 2.0) -> bool:
        """ICMP echo from ``host`` to ``dst`` (no ping binary needed)."""
        p = self.run(host, [sys.executable, "-c", PING_CODE, dst, str(timeout)], check=False,
                     timeout=timeout + 5)  # fmt: skip
        return p.returncode == 0


def wait_until(cond, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``cond`` until true or ``timeout`` s passed; bounded both ways."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())
