"""The .deb on a clean Debian 12 machine, managed by systemd as PID 1.

One container per module (see harness.py): the package is built from the
working tree, installed with apt (every dependency from Debian), then driven
exactly as an administrator would: systemctl, journalctl, softswitchctl,
apt purge.  Real SIP phones (pjsua2) live in the container's network
namespace and call each other through the installed switch on its default
configuration (SIP on 127.0.0.1:5060).

The tests run in file order and share the machine; the last one purges the
package.  Needs root; fails (never skips) when a tool is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.audio import assert_hears
from tests.system.deb.harness import (
    Container,
    base_rootfs,
    build_deb,
    cleanup_stale,
    require_prerequisites,
    run,
)

if TYPE_CHECKING:
    from tests.system.phone import Phone

pytestmark = [pytest.mark.root, pytest.mark.slow]

CONTROL = "softswitch-control.service"
TARGET = "softswitch.target"
REGISTRAR = "sip:127.0.0.1:5060"
DOMAIN = "127.0.0.1"  # [sip] domain is empty: the first listen address
BEARER_PORTS = (30000, 37999)  # [bearer] port_min, two instances of 4000 ports
USERS = {"alice": ("alice-s3cret", 440.0), "bob": ("bob-s3cret", 660.0)}


def bearer(n: int) -> str:
    return f"softswitch-bearer@{n}.service"


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_prerequisites()
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def machine(deb: Path) -> Iterator[Container]:
    cleanup_stale()  # what a killed earlier run left behind
    base = base_rootfs()
    with Container(base) as c:
        c.prepare(deb)
        c.boot()
        # --no-install-recommends: the daemons must run without uvloop and aiortc.
        c.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", f"/debs/{deb.name}"],
            timeout=300,
        )
        yield c


@pytest.fixture(scope="module")
def bearers(machine: Container) -> list[int]:
    """The instances softswitch.target wants: one per core, at most two (default)."""
    cores = int(machine.run(["nproc"]).stdout)
    return list(range(min(cores, 2)))


@pytest.fixture(scope="module")
def phones(machine: Container) -> Iterator[dict[str, Phone]]:
    """alice and bob, registered: pjsua2 phones in the container's network namespace."""
    from tests.system.phone import Phone

    for user, (password, _) in USERS.items():
        record = ["--record"] if user == "alice" else []  # her calls are recorded
        machine.run(["softswitchctl", "user", "add", user, "--password", password, *record])
    # The daemon loads new users within [database] sync_interval (2 s); a phone
    # that tried before would be failed logins, and 5 ban its address.
    deadline = time.monotonic() + 10
    while json.loads(machine.run(["softswitchctl", "status", "--json"]).stdout)["users"] < 2:
        assert time.monotonic() < deadline, "users not loaded"
        time.sleep(0.3)
    with ExitStack() as stack:
        started = {}
        for user, (_, tone) in USERS.items():
            p = Phone(user, tone_hz=tone, netns=machine.netns)
            stack.callback(p.kill)
            p.spawn()
            started[user] = p
        for p in started.values():
            p.wait_ready()
        for user, p in started.items():
            deadline = time.monotonic() + 10
            while (code := p.register(REGISTRAR, user, USERS[user][0], DOMAIN)) != 200:
                assert time.monotonic() < deadline, f"{user}: REGISTER answered {code}"
                time.sleep(0.5)
        yield started


def call_with_audio(caller, callee, seconds: float = 2.0) -> None:
    """caller calls callee through the switch; both hear each other; hang up."""
    call = caller.call(f"sip:{callee.name}@{DOMAIN}")
    incoming = callee.incoming(timeout=10)
    callee.answer(200, incoming)
    info = caller.wait_state("CONFIRMED", timeout=10, call=call)
    assert info["state"] == "CONFIRMED", info
    caller.pump(seconds)
    sent, got = caller.stats(call), callee.stats(incoming)
    assert sent["rx_packets"] > 0 and got["rx_packets"] > 0, (sent, got)
    for st in (sent, got):  # media goes through a bearer's port range, not phone to phone
        port = int(st["remote_rtp"].rsplit(":", 1)[1])
        assert BEARER_PORTS[0] <= port <= BEARER_PORTS[1], st
    assert_hears(callee.recording(incoming), caller.tone_hz, not_hz=[callee.tone_hz])
    assert_hears(caller.recording(call), callee.tone_hz, not_hz=[caller.tone_hz])
    caller.hangup(call)
    caller.wait_state("DISCONNECTED", timeout=10, call=call)


# ---------------------------------------------------------------- the package


def test_lintian_reports_no_errors(deb: Path) -> None:
    cp = run(["lintian", "--fail-on", "error", str(deb)], timeout=300, check=False)
    print(cp.stdout)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert not re.search(r"^E: ", cp.stdout, re.M), cp.stdout


def test_install_creates_user_directories_and_key(machine: Container) -> None:
    entry = machine.run(["getent", "passwd", "softswitch"]).stdout.strip().split(":")
    assert int(entry[2]) < 1000 and entry[6] == "/usr/sbin/nologin", entry
    for d in (
        "/var/lib/softswitch",
        "/var/spool/softswitch",
        "/var/spool/softswitch/recordings",
        "/var/log/softswitch",
    ):
        assert machine.run(["stat", "-c", "%U:%G %a", d]).stdout.split() == [
            "softswitch:softswitch",
            "750",
        ], d
    key = "/etc/softswitch/control.key"
    assert machine.run(["stat", "-c", "%U:%G %a", key]).stdout.split() == ["root:softswitch", "640"]
    assert re.fullmatch(r"[0-9a-f]{64}\n", machine.run(["cat", key]).stdout)
    # The self-signed TLS certificate ([sip] tls_certificate = "auto"): the key
    # for the daemons' group only, valid for the loopback address.
    tls_key = "/etc/softswitch/tls.key"
    assert machine.run(["stat", "-c", "%U:%G %a", tls_key]).stdout.split() == [
        "root:softswitch",
        "640",
    ]
    subject = machine.run(
        ["openssl", "x509", "-in", "/etc/softswitch/tls.crt", "-noout", "-ext", "subjectAltName"]
    )
    assert "IP Address:127.0.0.1" in subject.stdout
    conffiles = machine.run(["dpkg-query", "-W", "-f=${Conffiles}", "softswitch"]).stdout
    for f in ("/etc/softswitch/softswitch.conf", "/etc/softswitch/bearer.conf"):
        assert f in conffiles
    for cmd in ("softswitch-control", "softswitch-bearer", "softswitchctl"):
        assert machine.run([cmd, "--help"]).stdout.startswith(f"usage: {cmd}")
        assert machine.run(["man", "-w", cmd]).stdout.strip().endswith(f"/man8/{cmd}.8.gz")
    # An application: its modules stay out of the interpreter's global namespace.
    assert machine.run(["python3", "-c", "import bearer"], check=False).returncode != 0


#: In the container: SIP OPTIONS over TLS to 5061, the server verified against
#: the package's certificate (as a phone told to trust it does); prints the status line.
TLS_PROBE = r"""
import socket, ssl
context = ssl.create_default_context(cafile="/etc/softswitch/tls.crt")
request = "\r\n".join([
    "OPTIONS sip:127.0.0.1 SIP/2.0", "Via: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bKprobe",
    "From: <sip:probe@127.0.0.1>;tag=1", "To: <sip:127.0.0.1>", "Call-ID: probe",
    "CSeq: 1 OPTIONS", "Max-Forwards: 70", "Content-Length: 0", "", "",
]).encode()
plain = socket.create_connection(("127.0.0.1", 5061), timeout=5)
with context.wrap_socket(plain, server_hostname="127.0.0.1") as s:
    s.sendall(request)
    print(s.recv(4096).split(b"\r\n")[0].decode())
"""


def test_the_installed_switch_serves_sip_over_tls_with_its_certificate(
    machine: Container,
) -> None:
    deadline = time.monotonic() + 30
    while True:  # bounded: the daemon may still be loading its users
        r = machine.run(["python3", "-c", TLS_PROBE], check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r.stdout.strip() == "SIP/2.0 200 OK", r.stdout + r.stderr


def test_unix_datagram_queue_is_raised_for_the_daemons(machine: Container) -> None:
    """usr/lib/sysctl.d/50-softswitch.conf, applied by postinst before the units
    start (nspawn's private network lets the container set its own net.unix)."""
    conf = machine.run(["cat", "/usr/lib/sysctl.d/50-softswitch.conf"]).stdout
    assert re.search(r"^net\.unix\.max_dgram_qlen = 512$", conf, re.M), conf
    qlen = machine.run(["cat", "/proc/sys/net/unix/max_dgram_qlen"]).stdout.strip()
    assert qlen == "512"


def test_units_verify_clean(machine: Container, bearers: list[int]) -> None:
    units = [CONTROL, TARGET, *(bearer(n) for n in bearers)]
    cp = machine.run(["systemd-analyze", "verify", *units], check=False)
    assert cp.returncode == 0 and cp.stdout + cp.stderr == "", cp.stdout + cp.stderr
    for unit in [CONTROL, bearer(0)]:
        out = machine.run(["systemd-analyze", "security", "--no-pager", unit]).stdout
        print(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- systemd


def test_database_made_by_root_belongs_to_the_daemon(machine: Container) -> None:
    """softswitchctl as root, daemon stopped, no database yet: the file it creates
    belongs to softswitch (ctl works as the owner of /var/lib/softswitch), and a
    root-owned leftover is handed back by the unit's ExecStartPre."""
    machine.run(["systemctl", "stop", CONTROL])
    machine.sh("rm -f /var/lib/softswitch/softswitch.db*")
    machine.run(["softswitchctl", "user", "add", "carol", "--password", "carol-s3cret"])
    owner = machine.run(["stat", "-c", "%U", "/var/lib/softswitch/softswitch.db"]).stdout
    assert owner == "softswitch\n"
    machine.sh("chown root:root /var/lib/softswitch/softswitch.db*")  # e.g. an old ctl
    machine.run(["systemctl", "start", CONTROL], timeout=60)
    owners = machine.sh("stat -c '%U %n' /var/lib/softswitch/softswitch.db*").splitlines()
    assert all(o.startswith("softswitch ") for o in owners), owners


def test_target_starts_control_and_bearers_after_ready(
    machine: Container, bearers: list[int]
) -> None:
    machine.run(["systemctl", "stop", TARGET])
    for unit in [CONTROL, *(bearer(n) for n in bearers)]:  # PartOf=softswitch.target
        machine.wait_for(unit, "ActiveState", "inactive", timeout=40)
    machine.run(["systemctl", "start", TARGET], timeout=120)
    for unit in [CONTROL, *(bearer(n) for n in bearers)]:
        assert machine.show(unit, "ActiveState") == "active", unit
        assert machine.show(unit, "SubState") == "running", unit
        assert machine.show(unit, "Type") == "notify", unit
        assert machine.show(unit, "WatchdogUSec") == "10s", unit
        # Sent with READY=1: proof the notification came from the daemon.
        assert machine.show(unit, "StatusText") != "", unit
    for n in bearers:
        pid = machine.show(bearer(n), "MainPID")
        cmdline = machine.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
        assert cmdline[1:4] == ["/usr/bin/softswitch-bearer", "--instance", str(n)], cmdline


def test_each_bearer_is_pinned_to_its_own_core(machine: Container, bearers: list[int]) -> None:
    wanted = machine.run(["systemctl", "list-dependencies", "--plain", "--no-pager", TARGET])
    assert [bearer(n) in wanted.stdout for n in bearers] == [True] * len(bearers), wanted.stdout
    for n in bearers:
        pid = machine.show(bearer(n), "MainPID")
        status = machine.run(["cat", f"/proc/{pid}/status"]).stdout
        assert re.search(rf"^Cpus_allowed_list:\s+{n}$", status, re.M), status


def test_two_phones_register_and_call_with_rtp(
    machine: Container, phones: dict[str, Phone]
) -> None:
    call_with_audio(phones["alice"], phones["bob"])
    call_with_audio(phones["bob"], phones["alice"])


def test_recordings_land_in_the_spool_readable_by_the_group_only(machine: Container) -> None:
    """alice is recorded: ProtectSystem=strict leaves the spool writable, UMask=0027."""
    deadline = time.monotonic() + 10
    while True:
        listing = machine.sh(
            "find /var/spool/softswitch/recordings -name '*.wav' -size +1k -printf '%u:%g %m %f\\n'"
        ).split("\n")
        wavs = [line for line in listing if line]
        if len(wavs) >= 2:
            break
        assert time.monotonic() < deadline, f"recordings: {wavs}"
        time.sleep(0.5)
    for line in wavs:
        assert line.startswith("softswitch:softswitch 640 "), wavs


def test_killed_bearer_is_restarted_and_new_calls_succeed(
    machine: Container, bearers: list[int], phones: dict[str, Phone]
) -> None:
    unit = bearer(0)
    before = int(machine.show(unit, "NRestarts"))
    old_pid = machine.show(unit, "MainPID")
    machine.run(["systemctl", "kill", "-s", "KILL", unit])
    machine.wait_for(unit, "NRestarts", str(before + 1), timeout=30)
    machine.wait_for(unit, "SubState", "running", timeout=30)
    assert machine.show(unit, "MainPID") != old_pid
    time.sleep(3)  # control sees the new epoch in the next heartbeat
    for _ in bearers:  # one call per bearer: least-loaded choice reaches the new one
        call_with_audio(phones["alice"], phones["bob"], seconds=1.0)


def test_stalled_bearer_is_restarted_by_the_watchdog(
    machine: Container, bearers: list[int]
) -> None:
    unit = bearer(bearers[-1])
    before = int(machine.show(unit, "NRestarts"))
    machine.run(["systemctl", "kill", "-s", "STOP", unit])
    # WatchdogSec=10s, then SIGABRT (and SIGCONT) and RestartSec=1s.
    machine.wait_for(unit, "NRestarts", str(before + 1), timeout=40)
    machine.wait_for(unit, "SubState", "running", timeout=30)
    assert "Watchdog timeout" in machine.journal(unit)


def test_reload_applies_a_setting_and_keeps_registrations(
    machine: Container, phones: dict[str, Phone]
) -> None:
    pid = machine.show(CONTROL, "MainPID")
    conf = "/etc/softswitch/softswitch.conf"
    machine.run(["sed", "-i", "s/^sip_trace = false$/sip_trace = true/", conf])
    assert "\nsip_trace = true\n" in machine.run(["cat", conf]).stdout
    since = machine.run(["date", "+%Y-%m-%d %H:%M:%S"]).stdout.strip()
    machine.run(["systemctl", "reload", CONTROL])
    machine.wait_for(CONTROL, "SubState", "running")
    assert machine.show(CONTROL, "MainPID") == pid, "reload restarted the daemon"
    # sip_trace now on: the next REGISTER shows up in the journal.
    deadline = time.monotonic() + 10
    while True:
        assert phones["alice"].register(REGISTRAR, "alice", USERS["alice"][0], DOMAIN) == 200
        if "REGISTER sip:" in machine.journal(CONTROL, since=since):
            break
        assert time.monotonic() < deadline, machine.journal(CONTROL, since=since)
        time.sleep(0.5)
    reloaded = machine.journal(CONTROL, since=since)
    assert re.search(r"configuration reloaded: changed .*sip_trace", reloaded), reloaded
    regs = json.loads(machine.run(["softswitchctl", "--json", "registrations"]).stdout)
    assert {r["aor"] for r in regs} >= {f"alice@{DOMAIN}", f"bob@{DOMAIN}"}, regs


def test_optional_features_absent_are_reported_not_fatal(machine: Container) -> None:
    """Installed without Recommends: no uvloop, no aiortc; the switch runs and says so."""
    status = json.loads(machine.run(["softswitchctl", "--json", "status"]).stdout)
    assert status["feature_uvloop"] is False and status["feature_aiortc"] is False, status
    assert status["state"] == "serving", status


def test_reinstall_keeps_key_settings_and_registrations(
    machine: Container, deb: Path, bearers: list[int]
) -> None:
    """The upgrade path (postinst configure with an old version): daemons restart."""
    key = machine.run(["cat", "/etc/softswitch/control.key"]).stdout
    machine.sh("echo '# edited by the administrator' >>/etc/softswitch/bearer.conf")
    pids = {u: machine.show(u, "MainPID") for u in [CONTROL, *(bearer(n) for n in bearers)]}
    machine.run(["apt-get", "install", "-y", "-q", "--reinstall", f"/debs/{deb.name}"], timeout=120)
    assert machine.run(["cat", "/etc/softswitch/control.key"]).stdout == key
    edited = machine.run(["cat", "/etc/softswitch/bearer.conf"]).stdout
    assert edited.endswith("# edited by the administrator\n"), edited
    for unit, pid in pids.items():
        machine.wait_for(unit, "SubState", "running")
        assert machine.show(unit, "MainPID") != pid, f"{unit} was not restarted"
    # Registrations survive a control restart (the database has them).
    regs = json.loads(machine.run(["softswitchctl", "--json", "registrations"]).stdout)
    assert {r["aor"] for r in regs} >= {f"alice@{DOMAIN}", f"bob@{DOMAIN}"}, regs


def test_journal_shows_the_daemons_log_lines(machine: Container, bearers: list[int]) -> None:
    for unit, ident in [(CONTROL, "softswitch-control"), (bearer(0), "softswitch-bearer")]:
        out = machine.run(
            ["journalctl", "--no-pager", "-o", "cat", "-u", unit, f"SYSLOG_IDENTIFIER={ident}"]
        ).stdout
        assert re.search(r"^(INFO|WARNING|ERROR|DEBUG) \S+: ", out, re.M), (unit, out[-2000:])


def test_bans_reach_the_kernel_with_cap_net_admin_and_nothing_more(machine: Container) -> None:
    """Five wrong passwords from 127.0.0.2 (in the container's network): the
    address lands in the switch's nftables set, as the hardened unit allows;
    ``bans del`` takes it out. The daemon holds CAP_NET_ADMIN and no other."""
    assert "bans also go into nftables table inet softswitch" in machine.journal(CONTROL)
    pid = machine.show(CONTROL, "MainPID")
    caps = machine.run(["grep", "^CapEff", f"/proc/{pid}/status"]).stdout.split()[1]
    assert int(caps, 16) == 1 << 12, caps  # CAP_NET_ADMIN (12) alone
    guess = (
        "from tests.integration.control.test_guard import attempt;"
        "print([attempt(5060, f'guess{i}', '127.0.0.2') for i in range(6)])"
    )
    assert machine.netns is not None
    out = subprocess.run(
        ["ip", "netns", "exec", machine.netns, sys.executable, "-c", guess],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[3], check=True,
    ).stdout  # fmt: skip
    assert out.strip() == str([401] * 5 + [None]), out
    listing = (
        "import nftables; n = nftables.Nftables();"
        "print(n.cmd('list set inet softswitch banned4')[1])"
    )
    assert "127.0.0.2" in machine.run(["python3", "-c", listing]).stdout
    machine.run(["softswitchctl", "bans", "del", "127.0.0.2"])
    deadline = time.monotonic() + 5
    while "127.0.0.2" in machine.run(["python3", "-c", listing]).stdout:
        assert time.monotonic() < deadline, "still in the kernel's set"
        time.sleep(0.2)


def test_nftables_off_leaves_control_with_no_capability(machine: Container) -> None:
    """[security] nftables = "off" and a daemon-reload: the generator's
    drop-in takes CAP_NET_ADMIN away; back to "auto", the daemon has it again."""
    conf = "/etc/softswitch/softswitch.conf"

    def switch_to(value: str) -> int:
        machine.sh(f"sed -i 's/^nftables = .*/nftables = \"{value}\"/' {conf}")
        machine.run(["systemctl", "daemon-reload"])
        machine.run(["systemctl", "restart", CONTROL], timeout=60)
        machine.wait_for(CONTROL, "SubState", "running")
        pid = machine.show(CONTROL, "MainPID")
        return int(machine.run(["grep", "^CapEff", f"/proc/{pid}/status"]).stdout.split()[1], 16)

    try:
        assert switch_to("off") == 0
        shown = machine.run(["systemctl", "cat", CONTROL]).stdout
        assert "50-no-nftables.conf" in shown, shown
    finally:
        assert switch_to("auto") == 1 << 12  # CAP_NET_ADMIN again


def test_purge_leaves_no_unit_process_or_file(machine: Container) -> None:
    machine.run(["apt-get", "purge", "-y", "-q", "softswitch"], timeout=120)
    units = machine.run(
        ["systemctl", "list-units", "--all", "--no-legend", "--plain", "softswitch*"]
    ).stdout
    assert units.strip() == "", units
    leftovers = machine.sh(
        "ls -d /lib/systemd/system/softswitch* /lib/systemd/system-generators/softswitch*"
        " /etc/systemd/system/*softswitch* /etc/systemd/system/*/softswitch*"
        " /run/systemd/generator/*/softswitch* /etc/softswitch /var/lib/softswitch"
        " /var/spool/softswitch /var/log/softswitch /run/softswitch /usr/share/softswitch"
        " /usr/bin/softswitch* 2>/dev/null; true"
    )
    assert leftovers.strip() == "", leftovers
    owned = machine.sh("find / -xdev -user softswitch 2>/dev/null; true")
    assert owned.strip() == "", owned
    procs = machine.sh(
        'for p in /proc/[0-9]*; do [ "$(stat -c %U $p 2>/dev/null)" = softswitch ]'
        " && cat $p/cmdline | tr '\\0' ' ' && echo; done; true"
    )
    assert procs.strip() == "", procs
