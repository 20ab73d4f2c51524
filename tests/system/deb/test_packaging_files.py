"""The packaging's own files, checked without root or a container (fast).

The full proof is test_installed_appliance.py; these catch the cheap
mistakes first: the generator's reading of bearer.conf, man pages that
drift from ``--help``, units that lose their hardening.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
GENERATOR = ROOT / "systemd" / "softswitch-generator"
UNITS = ROOT / "systemd"
MAN = ROOT / "debian" / "man"
COMMANDS = {
    "softswitch-control": ["softswitch.daemon.main"],
    "softswitch-bearer": ["bearer.daemon"],
    "softswitchctl": ["softswitch.cli.ctl"],
}


def generate(
    tmp_path: Path, conf_text: str | None, nproc: int = 2, control_text: str | None = None
) -> tuple[list[str], str]:
    """Run the generator on a bearer.conf (and a softswitch.conf): the
    instances it wants, and its stderr."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ)
    control = tmp_path / "softswitch.conf"
    if control_text is not None:
        control.write_text(control_text)
    env["SOFTSWITCH_CONTROL_CONF"] = str(control)
    if conf_text is not None:
        conf = tmp_path / "bearer.conf"
        conf.write_text(conf_text)
        env["SOFTSWITCH_BEARER_CONF"] = str(conf)
    else:
        env["SOFTSWITCH_BEARER_CONF"] = str(tmp_path / "absent.conf")
    # A fake getconf decides how many cores "auto" sees.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "getconf"
    fake.write_text(f"#!/bin/sh\necho {nproc}\n")
    fake.chmod(0o755)
    if mawk := shutil.which("mawk"):  # Debian's default awk: no gawk extensions
        (bin_dir / "awk").symlink_to(mawk)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    cp = subprocess.run(
        ["sh", str(GENERATOR), str(out), str(out), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert cp.returncode == 0, cp.stderr
    wants = out / "softswitch.target.wants"
    names = sorted(p.name for p in wants.iterdir()) if wants.exists() else []
    for name in names:
        assert os.readlink(wants / name) == "/lib/systemd/system/softswitch-bearer@.service"
    return [n.removeprefix("softswitch-bearer@").removesuffix(".service") for n in names], cp.stderr


@pytest.mark.parametrize(
    ("conf", "nproc", "expect"),
    [
        (None, 2, ["0", "1"]),  # no bearer.conf at all: the default
        ('[bearer]\nmedia_address = "10.0.0.1"\n', 8, ["0", "1"]),  # auto: at most two
        ('[bearer]\ninstances = "auto"\n', 1, ["0"]),  # one core, one bearer
        ("[bearer]\ninstances = [1, 3]\n", 2, ["1", "3"]),
        ("[bearer]\ninstances=[2,1,]  # trailing comma\n", 2, ["1", "2"]),
        (
            "[ bearer ]  # comment\ninstances = [\n  0,  # first\n  12,\n]\nport_min = 30000\n",
            2,
            ["0", "12"],
        ),
        ("[bearer]\ninstances = []\n", 2, []),
        ('[bearer]\ninstances = "none"\n', 2, []),  # a control-only server
        ("[bearer]\ninstances = 'None'\n", 2, []),  # literal string, any case (as the daemon)
        ('[bearer]\ninstances = "Auto"  # default\n', 2, ["0", "1"]),
        ("[bearer]\n# instances = [5]\n[log]\ninstances = [7]\n", 2, ["0", "1"]),  # not ours
        ('[bearer]\nkey_file = "/k"\n\n[log]\nlevel = "info"\n', 1, ["0"]),
    ],
)
def test_generator_wants_the_instances_bearer_conf_lists(
    tmp_path: Path, conf: str | None, nproc: int, expect: list[str]
) -> None:
    assert generate(tmp_path, conf, nproc) == (expect, "")


@pytest.mark.parametrize(
    ("control", "dropin"),
    [
        (None, False),  # no softswitch.conf: the default, "auto"
        ('[security]\nnftables = "auto"\n', False),
        ('[security]\nnftables = "on"\n', False),
        ('[security]\nnftables = "off"\n', True),
        ("[ security ]\nnftables='Off'  # no kernel bans here\n", True),
        ('[sip]\nnftables = "off"\n[security]\nban_time = 60\n', False),  # not ours
        ('[security]\n# nftables = "off"\n', False),
    ],
)
def test_generator_takes_the_capability_away_when_nftables_is_off(
    tmp_path: Path, control: str | None, dropin: bool
) -> None:
    """[security] nftables = "off": control needs no CAP_NET_ADMIN, so a
    drop-in empties the unit's capability sets and its netlink family."""
    assert generate(tmp_path, None, 2, control) == (["0", "1"], "")
    path = tmp_path / "out" / "softswitch-control.service.d" / "50-no-nftables.conf"
    assert path.exists() is dropin
    unit = (UNITS / "softswitch-control.service").read_text()
    assert "AmbientCapabilities=CAP_NET_ADMIN" in unit and "AF_NETLINK" in unit
    if dropin:
        lines = path.read_text().splitlines()
        assert "CapabilityBoundingSet=" in lines and "AmbientCapabilities=" in lines
        assert lines[-1] == "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"


def test_generator_starts_no_bearer_on_a_bad_value_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "spaces").mkdir()
    instances, stderr = generate(tmp_path, '[bearer]\ninstances = "first"\n')
    assert instances == []
    assert stderr == (
        f"softswitch-generator: {tmp_path / 'bearer.conf'}: [bearer] instances: expected"
        ' "auto", "none" or an array of core numbers, got "first"; no bearer started\n'
    )
    # what the daemons refuse as TOML the generator refuses too: INI spellings,
    # a string for the array, leading zeros, an array never closed
    for n, bad in enumerate(
        ["auto", "0, 1", "[0 1]", '"0, 1"', "[01]", "[0, 1", '["0"]', "", "[0] x"]
    ):
        (tmp_path / f"{n}").mkdir()
        instances, stderr = generate(tmp_path / f"{n}", f"[bearer]\ninstances = {bad}\n")
        assert instances == [] and "no bearer started" in stderr, (bad, stderr)


def help_options(module: str) -> set[str]:
    """Every --option a command's --help mentions (subcommands included for ctl)."""
    texts = [
        subprocess.run(
            [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())", *a],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        ).stdout
        for a in (
            [["--help"]]
            if module != "softswitch.cli.ctl"
            else [
                ["--help"],
                *[["user", a, "--help"] for a in ("add", "del", "list", "passwd", "set")],
                ["cdr", "--help"],
            ]
        )
    ]
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", "\n".join(texts)))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_man_page_documents_every_option_of_help(command: str) -> None:
    page = (MAN / f"{command}.8").read_text().replace("\\-", "-")
    options = help_options(COMMANDS[command][0])
    assert "--help" in options and len(options) > 1, options
    missing = sorted(o for o in options if o not in page)
    assert not missing, f"{command}.8 does not mention {missing}"


@pytest.mark.parametrize("unit", ["softswitch-control.service", "softswitch-bearer@.service"])
def test_units_keep_their_hardening(unit: str) -> None:
    text = (UNITS / unit).read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    directives: dict[str, list[str]] = {}
    for ln in lines:
        if "=" in ln:
            k, v = ln.split("=", 1)
            directives.setdefault(k, []).append(v)
    expect = {
        "Type": ["notify"],
        "Restart": ["on-failure"],
        "User": ["softswitch"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "PrivateTmp": ["yes"],
        "ProtectHome": ["yes"],
        "SystemCallFilter": ["@system-service", "~@privileged"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "RuntimeDirectory": ["softswitch"],
        "RuntimeDirectoryPreserve": ["yes"],
    }
    if unit == "softswitch-control.service":  # CAP_NET_ADMIN for its nftables bans only
        expect["CapabilityBoundingSet"] = expect["AmbientCapabilities"] = ["CAP_NET_ADMIN"]
        expect["RestrictAddressFamilies"] = ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    else:
        expect["CapabilityBoundingSet"] = expect["AmbientCapabilities"] = [""]
        expect["RestrictAddressFamilies"] = ["AF_UNIX AF_INET AF_INET6"]
    for key, value in expect.items():
        assert directives.get(key) == value, (key, directives.get(key))
    assert "WatchdogSec" in directives and "LimitNOFILE" in directives
    assert int(directives["LimitNOFILE"][0]) >= 500 * 6 + 64


def test_system_test_fails_without_root_naming_what_to_do(monkeypatch) -> None:
    from tests.system.deb import harness

    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.fail.Exception, match="needs root"):
        harness.require_prerequisites()


def test_system_test_fails_on_a_missing_tool_naming_the_package(monkeypatch) -> None:
    from tests.system.deb import harness

    real = harness.shutil.which
    monkeypatch.setattr(harness.os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        harness.shutil, "which", lambda t: None if t in ("nsenter", "debootstrap") else real(t)
    )
    with pytest.raises(pytest.fail.Exception, match="apt-get install debootstrap util-linux"):
        harness.require_prerequisites()


def test_sysctl_file_is_shipped_and_raises_the_unix_datagram_queue() -> None:
    """The .deb raises net.unix.max_dgram_qlen (10 by default) for the control
    channel; postinst applies it before the units start, tolerating a container."""
    conf = (UNITS / "sysctl.d" / "50-softswitch.conf").read_text()
    settings = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in conf.splitlines())
        if k.strip() and not k.lstrip().startswith("#")
    )
    assert settings == {"net.unix.max_dgram_qlen": "512"}
    install = (ROOT / "debian" / "softswitch.install").read_text().split("\n")
    assert "systemd/sysctl.d/50-softswitch.conf usr/lib/sysctl.d/" in install
    postinst = (ROOT / "debian" / "softswitch.postinst").read_text()
    applied = postinst.index("systemd-sysctl /usr/lib/sysctl.d/50-softswitch.conf ||")
    assert applied < postinst.index("#DEBHELPER#")  # before the units (re)start
