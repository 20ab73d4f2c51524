"""`make run`: the whole switch in the foreground, from a checkout.

Why a launcher instead of systemd: a new user's first contact with the project
is one command on a laptop. This writes a development configuration under
./var/etc/ (SIP on 127.0.0.1:5060, SQLite, sockets and recordings under
./var/), starts the control daemon and two bearers as child processes (bearer
N pinned to core N when the machine has that many), and stops all of them on
Ctrl-C. `softswitchctl` run from the same directory finds ./var/etc/ by itself
(see softswitch.daemonkit.config.resolve_config_dir), so no flags are needed.

Existing files under ./var/etc/ are kept: edit them to experiment.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import cast

from softswitch.daemonkit.config import dumps

BEARERS = 2
_HEADER = """\
# Development configuration written by `make run`; edit freely (TOML).
# Every option and its default: etc/softswitch/{name}
"""


def write_dev_config(
    var: Path, *, sip_port: int = 5060, metrics_listen: str = "127.0.0.1:9464"
) -> Path:
    """Create ./var/etc/{softswitch,bearer}.conf and the control key if absent."""
    etc, run, rec = var / "etc", var / "run", var / "recordings"
    for d in (etc, run, rec):
        d.mkdir(parents=True, exist_ok=True)
    key = etc / "control.key"
    if not key.exists():
        key.write_text(secrets.token_hex(32) + "\n")
        key.chmod(0o600)
    control = etc / "softswitch.conf"
    if not control.exists():
        control.write_text(
            dumps(
                {
                    "sip": {"listen": ["127.0.0.1"], "port": sip_port},
                    "database": {
                        "url": f"sqlite:///{var}/softswitch.db",
                        "spool_dir": str(var / "spool"),
                    },
                    "bearers": {
                        "endpoints": [f"unix:{run}/bearer-{i}.sock" for i in range(BEARERS)],
                        "local": f"unix:{run}/control.sock",
                        "key_file": str(key),
                    },
                    "admin": {"socket": f"{run}/admin.sock"},
                    "recording": {"dir": str(rec)},
                    "metrics": {"listen": metrics_listen},
                },
                header=_HEADER.format(name="softswitch.conf"),
            )
        )
    bearer = etc / "bearer.conf"
    if not bearer.exists():
        bearer.write_text(
            dumps(
                {
                    "bearer": {
                        "control": f"unix:{run}/bearer-%i.sock",
                        "key_file": str(key),
                        "recordings_dir": str(rec),
                    }
                },
                header=_HEADER.format(name="bearer.conf"),
            )
        )
    return etc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("--var", default="var", help="state directory (default ./var)")
    parser.add_argument("--sip-port", type=int, default=5060)
    parser.add_argument(
        "--metrics-listen",
        default="127.0.0.1:9464",
        help='Prometheus endpoint of a new configuration (default 127.0.0.1:9464; "" for none)',
    )
    args = parser.parse_args(argv)

    var = Path(args.var).resolve()
    etc = write_dev_config(var, sip_port=args.sip_port, metrics_listen=args.metrics_listen)
    for name in ("softswitch.conf", "bearer.conf"):
        try:
            tomllib.loads((etc / name).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            print(
                f"softswitch: {etc / name} is not TOML ({exc}); if an older `make run` "
                "wrote it (as INI), move it aside and a TOML one is written",
                file=sys.stderr,
            )
            return 2
    env = dict(os.environ, SOFTSWITCH_CONFIG_DIR=str(etc), PYTHONUNBUFFERED="1")
    bindir = Path(sys.executable).parent
    cores = len(os.sched_getaffinity(0))

    commands = []
    for i in range(BEARERS):
        cmd = [str(bindir / "softswitch-bearer"), "--instance", str(i)]
        if cores > i:
            cmd = ["taskset", "-c", str(i), *cmd]
        commands.append(cmd)
    commands.append([str(bindir / "softswitch-control")])

    print(f"softswitch: configuration in {etc}; SIP on 127.0.0.1:{args.sip_port}; Ctrl-C stops")
    children = [subprocess.Popen(cmd, env=env) for cmd in commands]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    rc = 0
    while not stopping:
        dead = [c for c in children if c.poll() is not None]
        if dead:
            for c in dead:
                command = " ".join(cast("list[str]", c.args))  # one of ``commands``
                print(f"softswitch: {command} exited with {c.returncode}", file=sys.stderr)
            rc = 1
            break
        time.sleep(0.2)
    for c in reversed(children):  # control first, so it can tell bearers goodbye
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for c in children:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
