"""`make run`: the whole switch in the foreground, from a checkout.

Why a launcher instead of systemd: a new user's first contact with the project
is one command on a laptop. This writes a development configuration under
./var/etc/ (SIP on 127.0.0.1:5060, SQLite, sockets and recordings under
./var/), starts the control daemon and two bearers as child processes (bearer
N pinned to core N when the machine has that many), and stops all of them on
Ctrl-C. `softswitchctl` run from the same directory finds ./var/etc/ by itself
(see softswitch.daemonkit.config.resolve_config_dir), so no flags are needed.

Existing files under ./var/etc/ are kept: edit them to experiment.

Supervision, as the installed units do it (systemd/*.service,
``Restart=on-failure``): a daemon that dies (a non-zero exit status, or a
signal such as SIGKILL, SIGSEGV or SIGABRT) is started again after a back-off
(RESTART_FIRST seconds, doubling up to RESTART_MAX, back to RESTART_FIRST once
it has stayed up STABLE seconds), with one line saying which daemon, how it
ended and when it comes back.  So what a crash does under systemd happens
here too: a restarted bearer is found again by control's heartbeats and the
calls of a dead one move to the other bearer (softswitch/calls/failover.py);
a restarted control reloads its registrations and CDRs from the database and
its crash journal.  Three cases are not restarted, as systemd would not (or
would soon give up): a clean exit (status 0, or SIGTERM/SIGINT/SIGHUP/SIGPIPE:
somebody stopped that daemon on purpose), exit status 2 (bad usage or
configuration: restarting cannot fix it; everything is stopped), and a daemon
that died START_LIMIT times in a row without staying up STABLE seconds
(systemd's start limit; everything is stopped, exit status 1).

Only Ctrl-C (SIGINT) or SIGTERM to the launcher stops everything, in the
units' order: control first (it hangs up calls and tells the bearers), then
the bearers.  The daemons run in their own process group, so the terminal's
Ctrl-C reaches the launcher alone and the order holds; a second Ctrl-C kills
whatever is still running.  Each daemon also gets SIGTERM if the launcher
itself dies (PR_SET_PDEATHSIG), so none is left behind.
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
from dataclasses import dataclass, field
from pathlib import Path

from softswitch.daemon.settings import TLS_CERTIFICATE_FILE, TLS_KEY_FILE
from softswitch.daemon.tls import TlsError, make_self_signed
from softswitch.daemonkit.config import dumps
from softswitch.daemonkit.runtime import die_with_parent

BEARERS = 2
#: Seconds before the first restart of a daemon that died; doubled at each
#: further death in a row, up to RESTART_MAX (systemd's units: RestartSec=1s).
RESTART_FIRST = 0.1
RESTART_MAX = 2.0
#: A daemon up this long counts as started: its next death restarts it after
#: RESTART_FIRST again, and its count of deaths in a row starts over.
STABLE = 10.0
#: Deaths in a row (each before STABLE) after which the launcher gives up.
START_LIMIT = 8
#: Seconds a daemon gets to stop after SIGTERM before SIGKILL (TimeoutStopSec).
STOP_TIMEOUT = 30.0
#: Exit status meaning bad usage or configuration (both daemons): not restarted.
EXIT_CONFIG = 2
#: Signals that end a daemon cleanly for Restart=on-failure (systemd.service(5)).
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})
_POLL = 0.05
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
    _dev_certificate(etc)
    control = etc / "softswitch.conf"
    if not control.exists():
        control.write_text(
            dumps(
                {
                    # TLS next to the SIP port; tls.crt/tls.key ("auto") beside this file.
                    "sip": {"listen": ["127.0.0.1"], "port": sip_port, "tls_port": sip_port + 1},
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
                    # Bans stay in-process: a checkout must not change the
                    # host's firewall (the appliance's unit may).
                    "security": {"nftables": "off"},
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


def _dev_certificate(etc: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (tls.crt, tls.key: what
    ``[sip] tls_certificate = "auto"`` loads) if there is none, so SIP over
    TLS works under ``make run`` too.  Without openssl, TLS is simply off."""
    certificate, key = etc / TLS_CERTIFICATE_FILE, etc / TLS_KEY_FILE
    if certificate.exists():
        return
    try:
        make_self_signed(certificate, key, ["127.0.0.1", "localhost"])
    except TlsError as exc:
        print(f"make run: no SIP over TLS: {exc}", file=sys.stderr)
        return
    print(f"make run: made a self-signed TLS certificate: {certificate}", file=sys.stderr)


def how_it_ended(returncode: int) -> str:
    """What a child's return code says, as a person would (Popen: -N is signal N).

    >>> how_it_ended(-9), how_it_ended(1)
    ('was killed by SIGKILL', 'exited with status 1')
    """
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def ended_cleanly(returncode: int) -> bool:
    """Whether Restart=on-failure leaves this ending alone (status 0 or a clean signal)."""
    return returncode == 0 or (returncode < 0 and -returncode in CLEAN_SIGNALS)


@dataclass
class Backoff:
    """When a daemon that died starts again: systemd's Restart=on-failure with a
    RestartSec that doubles while it keeps dying, and a start limit.

    Doubling keeps a daemon that crashes at once from spinning a core, yet
    the first restart is quick, so a crash costs the calls and phones little.
    """

    first: float = RESTART_FIRST
    cap: float = RESTART_MAX
    stable: float = STABLE
    limit: int = START_LIMIT
    deaths: int = 0  # in a row, each within ``stable`` seconds of its start

    def after_death(self, uptime: float) -> float | None:
        """Seconds to wait before the restart of a daemon that died after ``uptime``
        seconds up; None when it has died ``limit`` times in a row: give up."""
        if uptime >= self.stable:
            self.deaths = 0
        self.deaths += 1
        if self.deaths >= self.limit:
            return None
        return min(self.first * 2 ** (self.deaths - 1), self.cap)


@dataclass
class Child:
    """One supervised daemon."""

    name: str
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None  # dead, to be started again at this time
    backoff: Backoff = field(default_factory=Backoff)


class Supervisor:
    """Starts the daemons, restarts those that die, stops them all in order.

    ``step`` is called every few tens of milliseconds from the launcher's
    loop with the monotonic time; everything it does is one line on stderr.
    """

    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.stop_requests = 0  # Ctrl-C / SIGTERM to the launcher

    def say(self, text: str) -> None:
        print(f"softswitch: {text}", file=sys.stderr, flush=True)

    def start(self, child: Child, now: float, *, again: bool = False) -> None:
        child.proc = subprocess.Popen(
            child.command,
            env=self.env,
            process_group=0,  # the terminal's Ctrl-C is the launcher's to handle
            preexec_fn=die_with_parent(os.getpid()),
        )
        child.started = now
        child.restart_at = None
        self.say(f"{child.name} {'restarted' if again else 'started'} (pid {child.proc.pid})")

    def step(self, now: float) -> int | None:
        """Handle deaths and due restarts; an exit status when the launcher must
        stop everything, else None."""
        for child in self.children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                child.proc = None
                code = proc.returncode
                uptime = now - child.started
                what = f"{child.name} (pid {proc.pid}) {how_it_ended(code)} after {uptime:.1f} s"
                if ended_cleanly(code):
                    self.say(f"{what}; not restarting it (a clean stop, as Restart=on-failure)")
                    continue
                if code == EXIT_CONFIG:
                    self.say(f"{what} (bad usage or configuration); stopping everything")
                    return 1
                delay = child.backoff.after_death(uptime)
                if delay is None:
                    self.say(
                        f"{what}, its {child.backoff.deaths}th death in a row within "
                        f"{STABLE:g} s of starting; giving up, stopping everything"
                    )
                    return 1
                child.restart_at = now + delay
                self.say(f"{what}; restarting it in {delay:g} s")
            elif child.restart_at is not None and now >= child.restart_at:
                self.start(child, now, again=True)
        if all(c.proc is None and c.restart_at is None for c in self.children):
            self.say("every daemon has stopped")
            return 0
        return None

    def stop(self) -> None:
        """Control first (it hangs up calls and tells the bearers), then the
        bearers; SIGKILL after STOP_TIMEOUT or at a second Ctrl-C."""
        for child in self.children:
            child.restart_at = None
        control = [c for c in self.children if c.name == "control"]
        bearers = [c for c in self.children if c.name != "control"]
        for group in (control, bearers):
            procs = [c.proc for c in group if c.proc is not None and c.proc.poll() is None]
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while any(p.poll() is None for p in procs):  # bounded by the deadline
                if time.monotonic() > deadline or self.stop_requests > 1:
                    for p in procs:
                        if p.poll() is None:
                            p.kill()
                            p.wait()
                    break
                time.sleep(_POLL)


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
    sip_port = args.sip_port
    tls_port = 5061
    for name in ("softswitch.conf", "bearer.conf"):
        try:
            conf = tomllib.loads((etc / name).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            print(
                f"softswitch: {etc / name} is not TOML ({exc}); if an older `make run` "
                "wrote it (as INI), move it aside and a TOML one is written",
                file=sys.stderr,
            )
            return 2
        if name == "softswitch.conf":  # a kept configuration says where SIP is
            sip_port = conf.get("sip", {}).get("port", sip_port)
            tls_port = conf.get("sip", {}).get("tls_port", 5061)
    env = dict(os.environ, SOFTSWITCH_CONFIG_DIR=str(etc), PYTHONUNBUFFERED="1")
    bindir = Path(sys.executable).parent
    cores = len(os.sched_getaffinity(0))

    # Bearers first, as the units order them: control finds them at once.
    children = []
    for i in range(BEARERS):
        cmd = [str(bindir / "softswitch-bearer"), "--instance", str(i)]
        if cores > i:
            cmd = ["taskset", "-c", str(i), *cmd]
        children.append(Child(f"bearer {i}", cmd))
    children.append(Child("control", [str(bindir / "softswitch-control")]))
    supervisor = Supervisor(children, env)

    def stop(signum: int, frame: object) -> None:
        supervisor.stop_requests += 1

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    tls = ""
    if (etc / TLS_CERTIFICATE_FILE).exists():
        tls = f", TLS on {tls_port} (trust {etc / TLS_CERTIFICATE_FILE})"
    print(
        f"softswitch: configuration in {etc}; SIP on 127.0.0.1:{sip_port}{tls}; "
        "a daemon that dies is restarted; Ctrl-C stops",
        file=sys.stderr,
    )
    rc: int | None = None
    try:
        for child in children:
            supervisor.start(child, time.monotonic())
        while rc is None and not supervisor.stop_requests:
            rc = supervisor.step(time.monotonic())
            time.sleep(_POLL)
    finally:
        if supervisor.stop_requests:
            supervisor.say("stopping: control first, then the bearers")
        supervisor.stop()
    return rc or 0


if __name__ == "__main__":
    raise SystemExit(main())
