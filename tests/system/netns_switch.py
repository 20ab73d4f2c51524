"""The real switch laid out on hosts in network namespaces (tests/system/netns.py).

``NetSwitch`` starts ``softswitch-control`` inside one host of a ``Topology``
and ``softswitch-bearer`` instances inside another (or the same) host, the
way the appliance is deployed:

* two hosts (``media_host != ctl_host``): control and bearers talk UDP, every
  datagram tagged with HMAC-SHA256 under a shared key file; each bearer is
  pinned to its own core with ``taskset -c N``;
* one host (``media_host == ctl_host``): UNIX datagram sockets, no key.

Users are added with the real ``softswitchctl user add``; live state and
CDRs are read with ``softswitchctl ... --json``.  The admin socket, database
and logs live in a temporary directory, so softswitchctl runs from the test's
own namespace.  ``wrong_key`` names bearer instances that get a key of their
own (not control's): the test of a misconfigured two-server install.

Everything is stopped by ``stop()`` (SIGTERM, then SIGKILL) and, as the
processes are started through ``Topology.popen``, by the topology's
teardown at the latest.

Also here: ``RtpCounter``, nftables counters inside a namespace that count
the UDP packets a host receives from a peer (SIPp cannot say how much RTP it
got, and "the media went through the media host, not the control host"
is best shown by the kernel).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from softswitch.daemon.admin import AdminClient, AdminError
from softswitch.daemonkit.config import dumps
from tests.system.netns import Topology

BIN = Path(sys.executable).parent
CONTROL_EXE = BIN / "softswitch-control"
BEARER_EXE = BIN / "softswitch-bearer"
CTL_EXE = BIN / "softswitchctl"
ROOT = Path(__file__).resolve().parents[2]

SIP_PORT = 5060
#: Bearer instance N listens for control on BEARER_PORT + N (bearer.conf "port + instance").
BEARER_PORT = 7000
CONTROL_BEARER_PORT = 7100
RTP_PORT_MIN = 30000


BEARER_STATS_CODE = r"""
import json, sys
from pathlib import Path
from softswitch.protocol import Stats, load_key
from bench.harness.bearer import ControlClient
client = ControlClient((sys.argv[2], int(sys.argv[3])), load_key(sys.argv[1]), Path(sys.argv[4]))
try:
    print(json.dumps(client.request(Stats(0), timeout=5).counters))
finally:
    client.close()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("SOFTSWITCH_CONFIG_DIR", None)
    return env


def write_key(path: Path, key: bytes) -> Path:
    """A key file as the package writes it: 64 hex digits, mode 0600."""
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return path


class NetSwitch:
    """Control on ``ctl_host``, ``bearers`` bearer instances on ``media_host``."""

    def __init__(
        self,
        net: Topology,
        tmp: Path,
        *,
        users: dict[str, str],
        ctl_host: str = "ctl",
        media_host: str = "media",
        bearers: int = 2,
        wrong_key: Iterable[int] = (),
        calls: dict[str, Any] | None = None,
        sip_port: int = SIP_PORT,
        bearer_port: int = BEARER_PORT,
        control_bearer_port: int = CONTROL_BEARER_PORT,
        rtp_port_min: int = RTP_PORT_MIN,
        digest_algorithms: Sequence[str] | None = None,
    ) -> None:
        self.net = net
        self.tmp = tmp
        self.users = users
        self.ctl_host = ctl_host
        self.media_host = media_host
        self.n_bearers = bearers
        self.wrong_key = set(wrong_key)
        self.calls_section = {"no_answer_timeout": 10, **(calls or {})}
        self.udp = media_host != ctl_host
        self.sip_port = sip_port
        self.bearer_port = bearer_port
        self.control_bearer_port = control_bearer_port
        self.rtp_port_min = rtp_port_min
        self.digest_algorithms = digest_algorithms  # None: the shipped default
        self.etc = tmp / "etc"
        self.run_dir = tmp / "run"
        self.control_log = tmp / "control.log"
        self.control: subprocess.Popen[bytes] | None = None
        self.bearer_procs: list[subprocess.Popen[bytes]] = []
        self.key = secrets.token_bytes(32)

    # addresses -----------------------------------------------------------------

    @property
    def addr(self) -> str:
        """Where phones send SIP: the control host's address."""
        return self.net.addr(self.ctl_host)

    @property
    def media_addr(self) -> str:
        return self.net.addr(self.media_host)

    @property
    def domain(self) -> str:
        return self.addr

    @property
    def registrar(self) -> str:
        return f"sip:{self.addr}:{self.sip_port}"

    def uri(self, user: str) -> str:
        return f"sip:{user}@{self.addr}:{self.sip_port}"

    def bearer_endpoint(self, i: int) -> str:
        if self.udp:
            return f"udp:{self.media_addr}:{self.bearer_port + i}"
        return f"unix:{self.run_dir}/bearer-{i}.sock"

    # life cycle ----------------------------------------------------------------

    def start(self) -> NetSwitch:
        try:
            self._write_config()
            for name, password in self.users.items():
                done = self.ctl("user", "add", name, "--password", password)
                assert done.returncode == 0, f"user add {name}: {done.stderr}"
            self._start_bearers()
            self._start_control()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_key(self.etc / "control.key", self.key)
        endpoints = [self.bearer_endpoint(i) for i in range(self.n_bearers)]
        local = (
            f"udp:{self.addr}:{self.control_bearer_port}"
            if self.udp
            else f"unix:{self.run_dir}/control.sock"
        )
        sections: dict[str, dict[str, Any]] = {
            "sip": {"listen": [self.addr], "port": self.sip_port, "transports": ["udp", "tcp"]},
            "calls": self.calls_section,
            "database": {
                "url": f"sqlite:///{self.tmp / 'softswitch.db'}",
                "sync_interval": 0.5,
                "spool_dir": str(self.tmp / "spool"),  # not the host's /var/lib/softswitch
            },
            "bearers": {
                "endpoints": endpoints,
                "local": local,
                "key_file": str(self.etc / "control.key"),
                "heartbeat_interval": 0.5,
            },
            "admin": {"socket": str(self.run_dir / "admin.sock")},
            "recording": {"dir": str(self.tmp / "recordings")},
            "log": {"level": "info", "file": ""},
            "metrics": {"listen": ""},  # two switches may share a host: no fixed port
        }
        if self.digest_algorithms is not None:
            sections["sip"]["digest_algorithms"] = list(self.digest_algorithms)
        (self.etc / "softswitch.conf").write_text(dumps(sections))

    def _bearer_etc(self, i: int) -> Path:
        """The bearers' config dir on the media host; a wrong-key bearer has its own."""
        wrong = i in self.wrong_key
        etc = self.tmp / ("bearer-etc-wrong-key" if wrong else "bearer-etc")
        if etc.exists():
            return etc
        etc.mkdir(parents=True)
        key = write_key(etc / "control.key", secrets.token_bytes(32) if wrong else self.key)
        control = (
            f"udp:{self.media_addr}:{self.bearer_port}"
            if self.udp
            else f"unix:{self.run_dir}/bearer-%i.sock"
        )
        (etc / "bearer.conf").write_text(
            dumps(
                {
                    "bearer": {
                        "control": control,
                        "key_file": str(key),
                        "media_address": self.media_addr,
                        "port_min": self.rtp_port_min,
                        "ports_per_instance": 1000,
                        "max_sessions": 100,
                        "media_timeout": 30,
                        "recordings_dir": str(self.tmp / "recordings"),
                        "heartbeat_interval": 0.5,
                    },
                    "log": {"level": "info", "file": ""},
                }
            )
        )
        return etc

    def _start_bearers(self) -> None:
        for i in range(self.n_bearers):
            argv = [str(BEARER_EXE), "--instance", str(i), "--config-dir", str(self._bearer_etc(i))]
            if self.udp:  # one core each, as softswitch-bearer@.service does
                argv = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *argv]
            with open(self.tmp / f"bearer-{i}.log", "wb") as logf:
                proc = self.net.popen(
                    self.media_host, argv, stdout=logf, stderr=subprocess.STDOUT,
                    env=_env(), cwd=ROOT,
                )  # fmt: skip
            self.bearer_procs.append(proc)

    def _start_control(self, timeout: float = 20.0) -> None:
        argv = [str(CONTROL_EXE), "--config-dir", str(self.etc)]
        with open(self.control_log, "wb") as logf:
            self.control = self.net.popen(
                self.ctl_host, argv, stdout=logf, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded
            for i, p in enumerate(self.bearer_procs):
                if p.poll() is not None:
                    raise RuntimeError(f"bearer {i} exited {p.returncode}:\n{self.logs()}")
            if self.control.poll() is not None:
                raise RuntimeError(f"control exited {self.control.returncode}:\n{self.logs()}")
            try:
                if self.admin("status")["state"] == "serving":
                    return
            except AdminError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"control not serving within {timeout:g} s:\n{self.logs()}")

    def wait_bearers(self, states: dict[int, str], timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``softswitchctl bearers`` shows bearer id -> state; returns the rows."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:  # bounded
            rows = self.ctl_json("bearers")
            if all(rows[i]["state"] == s for i, s in states.items()):
                return rows
            time.sleep(0.2)
        raise AssertionError(f"bearers not {states} within {timeout:g} s: {rows}\n{self.logs()}")

    def stop(self) -> list[str]:
        """SIGTERM everything; returns problems (bad exit codes, tracebacks)."""
        problems = []
        procs = [("control", self.control)] + [
            (f"bearer {i}", p) for i, p in enumerate(self.bearer_procs)
        ]
        for _, p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs:
            if p is None:
                continue
            try:
                code = p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                code = None
            if code != 0:
                problems.append(f"{name} exited {code}")
        if "Traceback" in self.log("control"):
            problems.append("control logged a traceback")
        for i in range(len(self.bearer_procs)):
            if "Traceback" in self.log(f"bearer-{i}"):
                problems.append(f"bearer {i} logged a traceback")
        return problems

    # state -----------------------------------------------------------------------

    def admin(self, cmd: str) -> Any:
        return AdminClient(self.run_dir / "admin.sock", timeout=5).call(cmd)

    def ctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``softswitchctl --config-dir ETC ARGV`` (from the test's namespace)."""
        return subprocess.run(
            [str(CTL_EXE), "--config-dir", str(self.etc), *argv],
            capture_output=True, text=True, timeout=30, env=_env(), cwd=ROOT,
        )  # fmt: skip

    def ctl_json(self, *argv: str) -> Any:
        done = self.ctl(*argv, "--json")
        assert done.returncode == 0, f"softswitchctl {' '.join(argv)}: {done.stderr}"
        return json.loads(done.stdout)

    def cdr_mark(self) -> int:
        rows = self.ctl_json("cdr", "--limit", "1")
        return int(rows[0]["id"]) if rows else 0

    def wait_cdr(self, mark: int, timeout: float = 10.0, **match: str) -> dict[str, Any]:
        """The first CDR above id ``mark`` whose columns start with ``match``."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:  # bounded
            rows = [r for r in self.ctl_json("cdr", "--limit", "50") if int(r["id"]) > mark]
            for r in sorted(rows, key=lambda r: int(r["id"])):
                if all(str(r[k]).startswith(v) for k, v in match.items()):
                    return r
            time.sleep(0.2)
        raise AssertionError(f"no CDR matching {match} after id {mark}: {rows}\n{self.logs()}")

    def bearer_counters(self, i: int) -> dict[str, Any]:
        """Bearer ``i``'s own STATS counters, asked on the media host with the key
        that bearer holds (UDP layout only): what it did with control's datagrams."""
        assert self.udp, "bearer_counters needs the two-host (UDP) layout"
        key = self._bearer_etc(i) / "control.key"
        argv = [sys.executable, "-c", BEARER_STATS_CODE, str(key), self.media_addr,
                str(self.bearer_port + i), str(self.tmp)]  # fmt: skip
        done = self.net.run(self.media_host, argv, timeout=20, cwd=ROOT, env=_env())
        return json.loads(done.stdout)

    def log(self, which: str) -> str:
        path = self.control_log if which == "control" else self.tmp / f"{which}.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self, lines: int = 40) -> str:
        names = ["control"] + [f"bearer-{i}" for i in range(len(self.bearer_procs))]
        return "\n".join(
            f"--- {n} ---\n" + "\n".join(self.log(n).splitlines()[-lines:]) for n in names
        )


# ------------------------------------------------------------------------------ RTP counters


class RtpCounter:
    """nftables counters in ``host``: UDP packets received from each of
    ``peers`` on ports other than SIP's (so: RTP/RTCP, or bearer control)."""

    TABLE = "sst_rtpcount"

    def __init__(
        self, net: Topology, host: str, peers: Iterable[str], sip_ports: Iterable[int] = (SIP_PORT,)
    ) -> None:
        self.net = net
        self.host = host
        self.peers = list(peers)
        # SIP is skipped by two "return" rules rather than "udp sport != 5060
        # udp dport != 5060": nftables 1.0.6 (Debian 12) merges those two into
        # one 32-bit "!=", which then lets through every packet with only one
        # of the two ports equal to 5060 (e.g. a phone's SIP to the switch).
        sip = "{ " + ", ".join(str(p) for p in sip_ports) + " }"
        rules = f"    udp sport {sip} return\n    udp dport {sip} return\n" + "".join(
            f"    ip saddr {p} meta l4proto udp "
            f'counter add @seen {{ ip saddr . udp sport . udp dport }} comment "{p}"\n'
            for p in self.peers
        )
        self.net.run(host, ["nft", "delete", "table", "inet", self.TABLE], check=False)
        self.net.run(
            host,
            ["nft", "-f", "-"],
            input=(
                f"table inet {self.TABLE} {{\n"
                "  set seen { type ipv4_addr . inet_service . inet_service; flags dynamic;"
                " size 1024; }\n"
                "  chain input {\n"
                "    type filter hook input priority 0; policy accept;\n"
                f"{rules}  }}\n}}\n"
            ),
        )

    def read(self) -> dict[str, int]:
        """Packets so far, by peer address."""
        listing = self.net.run(self.host, ["nft", "list", "table", "inet", self.TABLE]).stdout
        out = {}
        for m in re.finditer(r"ip saddr (\S+) .*?counter packets (\d+)", listing):
            out[m.group(1)] = int(m.group(2))
        assert set(out) == set(self.peers), listing
        return out

    def flows(self) -> str:
        """The (source address . source port . destination port) triples counted,
        for assertion messages: which packets were they?"""
        listing = self.net.run(self.host, ["nft", "list", "set", "inet", self.TABLE, "seen"]).stdout
        m = re.search(r"elements = \{(.*?)\}", listing, re.S)
        return " ".join(m.group(1).split()) if m else "(none)"


def netns_inode(ns_name: str) -> int:
    return os.stat(f"/run/netns/{ns_name}").st_ino


def process_netns_inode(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def cpus_allowed(pid: int) -> str:
    """``Cpus_allowed_list`` of a process (e.g. "0" once pinned with taskset -c 0)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"
