"""Password guessing with a real tool: sipvicious's svcrack against the switch.

1. On loopback: a dictionary of 50 wrong passwords ending in the right one.
   svcrack does not find it, and its address is in ``softswitchctl bans``.
2. In network namespaces, with ``[security] nftables = "on"``: the same
   attack from another host puts the attacker into the switch's nftables set,
   the kernel drops its packets (the rule's counter moves), ``bans del``
   takes it out of the set, and the table is gone after the daemon stops.
   Never on the host's own ruleset.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bench.harness.control import (
    CONTROL_EXE,
    CTL_EXE,
    ROOT,
    add_users,
    start_switch,
    write_control_config,
)
from softswitch.daemon.admin import AdminClient, AdminError
from tests.system.netns import Topology, require_root, wait_until

#: svcrack reads only the first challenge and knows MD5 alone.
MD5_FIRST = {"digest_algorithms": ["MD5", "SHA-256"]}


@pytest.fixture
def dictionary(tmp_path: Path) -> Path:
    path = tmp_path / "passwords.txt"
    path.write_text("".join(f"wrong{i}\n" for i in range(50)) + "secret\n")
    return path


def svcrack(dictionary: Path, target: str, port: int, prefix: Sequence[str] = ()) -> str:
    """svcrack -u alice (run after ``prefix``, e.g. ``ip netns exec NS``); it
    gives up 2 s after the last answer. Its output."""
    argv = [*prefix, "svcrack", "-u", "alice", "-d", str(dictionary), "-p", str(port)]
    argv += ["--maximumtime", "2", target]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=dictionary.parent)
    return p.stdout + p.stderr


def test_svcrack_does_not_find_the_password_and_is_banned(tmp_path: Path, dictionary: Path) -> None:
    control, _ = start_switch(tmp_path, bearers=0, security={"allow": []}, sip=MD5_FIRST)
    try:
        out = svcrack(dictionary, "127.0.0.1", control.port)
        assert "secret" not in out and "found nothing" in out, out
        rows = control.admin("bans")
        assert [(r["address"], r["failures"]) for r in rows] == [("127.0.0.1", 5)]
        assert "127.0.0.1" in control.ctl("bans").stdout
        status = control.admin("status")
        assert status["rx_REGISTER"] == 6  # the first, unauthenticated, and 5 guesses
        assert status["guard_dropped_banned"] > 0  # what it sent after: unparsed
    finally:
        assert control.stop() == 0, control.log()
    assert "Traceback" not in control.log()


@pytest.fixture
def net() -> Iterator[Topology]:
    require_root()
    with Topology(("ctl", "attacker")) as topology:
        yield topology


def test_bans_go_into_nftables_in_a_namespace(
    net: Topology, tmp_path: Path, dictionary: Path
) -> None:
    if importlib.util.find_spec("nftables") is None:
        pytest.fail("python3-nftables is not importable in this venv: run `make nftables-link`")
    ctl, attacker = net.addr("ctl"), net.addr("attacker")
    etc = write_control_config(
        tmp_path,
        5060,
        [],
        sip={"listen": [ctl], "domain": "127.0.0.1", **MD5_FIRST},
        security={"allow": [], "nftables": "on"},
    )
    add_users(tmp_path, {"alice": "secret"})
    env = {
        k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "SOFTSWITCH_CONFIG_DIR")
    }
    admin = AdminClient(tmp_path / "run" / "admin.sock", timeout=5)

    def serving() -> bool:
        try:
            return bool(admin.call("status")["state"] == "serving")
        except AdminError:
            return False

    def nft(*args: str) -> str:
        return str(net.run("ctl", ["nft", *args]).stdout)

    log_path = tmp_path / "control.log"
    with open(log_path, "wb") as log:
        proc = net.popen("ctl", [str(CONTROL_EXE), "--config-dir", str(etc)], stdout=log,
                         stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip
    try:
        assert wait_until(serving, 20), log_path.read_text()
        assert "table inet softswitch" in nft("list", "tables")

        out = svcrack(dictionary, ctl, 5060, prefix=["ip", "netns", "exec", net.ns("attacker")])
        assert "secret" not in out, out
        assert [r["address"] for r in admin.call("bans")] == [attacker]
        assert attacker in nft("list", "set", "inet", "softswitch", "banned4")
        # The kernel dropped what svcrack sent after the ban: the rule counted it.
        chain = nft("list", "chain", "inet", "softswitch", "input")
        dropped = [int(n) for n in re.findall(r"counter packets (\d+)", chain)]
        assert dropped and dropped[0] > 0, chain

        lifted = subprocess.run([str(CTL_EXE), "--config-dir", str(etc), "bans", "del", attacker],
                                capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
        assert lifted.returncode == 0, lifted.stderr
        assert wait_until(
            lambda: attacker not in nft("list", "set", "inet", "softswitch", "banned4"), 5
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    text = log_path.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert "bans also go into nftables" in text and f"banned {attacker} for 900 s" in text
    assert "softswitch" not in nft("list", "tables")  # removed at stop


#: Run inside a fresh namespace: ban one IPv4 address and one IPv6 /64 in
#: the switch's table, then send a datagram to the SIP port from a banned and
#: a free source of each family; print what arrived, the sets, and the
#: tables left after close.
KERNEL_DROP = r"""
import json, socket, subprocess
from softswitch.daemon.nft import NftBans

def ip(*a): subprocess.run(["ip", *a], check=True)
def nft(*a): return subprocess.run(["nft", *a], capture_output=True, text=True).stdout
ip("link", "set", "lo", "up")
for a in ("2001:db8:1:2::5", "2001:db8:1:3::5"):
    ip("-6", "addr", "add", a + "/128", "dev", "lo", "nodad")
bans = NftBans([5060])
bans.open()
bans.apply([("add", "127.0.0.2", 60), ("add", "2001:db8:1:2::/64", 60)])
got = []
for family, dst, sources in ((socket.AF_INET, "127.0.0.1", ("127.0.0.2", "127.0.0.3")),
                             (socket.AF_INET6, "::1", ("2001:db8:1:2::5", "2001:db8:1:3::5"))):
    rx = socket.socket(family, socket.SOCK_DGRAM); rx.bind((dst, 5060)); rx.settimeout(0.3)
    for src in sources:
        tx = socket.socket(family, socket.SOCK_DGRAM); tx.bind((src, 0))
        tx.sendto(src.encode(), (dst, 5060)); tx.close()
    while True:
        try: got.append(rx.recv(100).decode())
        except OSError: break
    rx.close()
sets = nft("list", "table", "inet", "softswitch")
bans.apply([("del", "127.0.0.2", 0), ("del", "2001:db8:1:2::/64", 0), ("del", "127.0.0.9", 0)])
after = nft("list", "table", "inet", "softswitch")
bans.close()
left = nft("list", "tables")
print(json.dumps(dict(got=got, sets=sets, after=after, failures=bans.failures, left=left)))
"""


def test_the_kernel_drops_banned_sources_of_both_families(net: Topology) -> None:
    if importlib.util.find_spec("nftables") is None:
        pytest.fail("python3-nftables is not importable in this venv: run `make nftables-link`")
    out = net.run("ctl", [sys.executable, "-c", KERNEL_DROP], cwd=ROOT, timeout=30).stdout
    result = json.loads(out)
    assert sorted(result["got"]) == ["127.0.0.3", "2001:db8:1:3::5"], result
    assert "127.0.0.2" in result["sets"] and "2001:db8:1:2::/64" in result["sets"], result
    assert "127.0.0.2" not in result["after"] and "2001:db8:1:2::" not in result["after"]
    assert result["failures"] == 0 and "softswitch" not in result["left"], result
