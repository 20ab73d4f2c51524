"""A Debian 12 machine with systemd as PID 1, for testing the installed .deb.

Theory of operation
-------------------
``base_rootfs()`` debootstraps a minimal bookworm root file system once and
keeps it under ``CACHE`` (a lock makes concurrent runs wait for one build).
``build_deb()`` builds the package from the working tree with
``dpkg-buildpackage -us -uc -b`` in a scratch copy, so the checkout never
sees build artefacts.  ``Container`` then:

1. copies the base into a fresh root (hard to break, cheap to throw away);
2. lets apt resolve the .deb's dependencies and download them into a shared
   archive cache (``systemd-nspawn --pipe``, no init, host network: the only
   step that needs the Debian mirror);
3. boots the root with ``systemd-nspawn -b`` on a *private network* (only
   ``lo``), so the switch listens on its default 127.0.0.1:5060 and RTP ports
   without meeting anything else on this host, and phones join that network
   namespace (``ip netns attach``);
4. is entered with ``nsenter`` on its PID 1 (nspawn runs with
   ``--register=no``: there need not be a host systemd or system bus).

Cleanup (``close``) always runs: poweroff, then SIGKILL for whatever is
left in the run's own cgroups, the cgroups removed, the namespace name
detached, the root deleted.

Every missing prerequisite is a ``pytest.fail`` naming the Debian package to
install: a system test that skips silently proves nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("SOFTSWITCH_TEST_CACHE", "/var/cache/softswitch-tests"))
SUITE = "bookworm"
#: In the base image: systemd as init, dbus for systemctl's friends, man-db so
#: `systemd-analyze verify` can check Documentation=man: and man pages are read.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "man-db")
#: What Debian's PATH looks like (no pyenv/virtualenv python3 first).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: command -> Debian package that provides it.
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "git": "git",
    "dpkg-buildpackage": "dpkg-dev",
    "dpkg-checkbuilddeps": "dpkg-dev",
    "fakeroot": "fakeroot",
    "lintian": "lintian",
}


class HarnessError(AssertionError):
    """The machinery (not the product) failed; the text says where."""


# ---------------------------------------------------------------- prerequisites


def require_prerequisites() -> None:
    """Fail (never skip) unless this process can build and boot a container."""
    if os.geteuid() != 0:
        pytest.fail(
            "the .deb system test needs root (debootstrap, systemd-nspawn, cgroups): "
            "run it as root, e.g. sudo make test-system"
        )
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(f"the .deb system test needs: apt-get install {' '.join(missing)}")
    if not cgroup_roots():
        pytest.fail("no writable cgroup hierarchy under /sys/fs/cgroup (mount cgroup2 there)")


def cgroup_roots() -> list[Path]:
    """The hierarchies a run gets its own cgroup in (hybrid: unified + name=systemd)."""
    fs = Path("/sys/fs/cgroup")
    hybrid = [fs / "unified", fs / "systemd"]
    roots = [p for p in hybrid if (p / "cgroup.procs").exists()]
    if roots:
        return roots
    return [fs] if (fs / "cgroup.controllers").exists() else []


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """A host command with a deadline; a failure shows the command and its output."""
    try:
        cp = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        # The partial output is bytes even under text=True (see TimeoutExpired).
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        raise HarnessError(
            f"timed out after {timeout:g} s: {' '.join(argv)}\n{out or ''}"
        ) from None
    if check and cp.returncode != 0:
        raise HarnessError(
            f"exit {cp.returncode}: {' '.join(argv)}\n--- stdout ---\n{cp.stdout[-4000:]}"
            f"\n--- stderr ---\n{cp.stderr[-4000:]}"
        )
    return cp


@contextmanager
def locked(name: str, timeout: float = 600.0) -> Iterator[None]:
    """An flock on CACHE/name, so two runs never build or download at once."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / name, "w") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"{CACHE / name}: still locked after {timeout:g} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- base image and .deb


def debian_mirror() -> str:
    """The host's Debian mirror (deb822 or one-line sources), for debootstrap."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if "://" in p)
    return "http://deb.debian.org/debian"


def base_rootfs() -> Path:
    """The cached bookworm root file system (debootstrap once, ~45 s)."""
    stamp = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:8]
    base = CACHE / f"{SUITE}-base-{stamp}"
    if (base / "lib/systemd/systemd").exists():
        return base
    with locked("base.lock"):
        if (base / "lib/systemd/systemd").exists():
            return base
        tmp = base.with_name(base.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        debs = CACHE / "debootstrap-debs"
        debs.mkdir(parents=True, exist_ok=True)
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                f"--cache-dir={debs}",
                SUITE,
                str(tmp),
                debian_mirror(),
            ],
            timeout=600,
        )
        # The container's apt uses the host's Debian sources (and keyring).
        host_sources = Path("/etc/apt/sources.list.d/debian.sources")
        if host_sources.exists():
            (tmp / "etc/apt/sources.list").unlink(missing_ok=True)
            shutil.copy(host_sources, tmp / "etc/apt/sources.list.d/debian.sources")
        tmp.rename(base)
    return base


def source_files(root: Path = ROOT) -> list[str]:
    """The working tree as git sees it: tracked and new files, ignored ones left out."""
    out = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        timeout=30,
    ).stdout
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def build_deb(outdir: Path, root: Path = ROOT) -> Path:
    """dpkg-buildpackage -us -uc -b on a scratch copy of the working tree."""
    src = outdir / "src"
    for rel in source_files(root):
        dst = src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dst, follow_symlinks=False)
    env = dict(os.environ, PATH=SYSTEM_PATH, DEB_BUILD_OPTIONS="nocheck")
    env.pop("VIRTUAL_ENV", None)
    missing = run(["dpkg-checkbuilddeps"], cwd=src, env=env, timeout=60, check=False)
    if missing.returncode != 0:
        pytest.fail(f"cannot build the .deb: {missing.stderr.strip()} (apt-get install them)")
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env, timeout=600)
    debs = sorted(outdir.glob("softswitch_*_all.deb"))
    if len(debs) != 1:
        raise HarnessError(f"expected one softswitch_*_all.deb in {outdir}, found {debs}")
    return debs[0]


# ---------------------------------------------------------------- the container

PREFIX = "sstdeb"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove what a killed earlier run left: its container, cgroups and netns name.

    Every trace carries the creating test process's pid (``sstdebPID``); a
    trace whose pid is gone is stale.  Returns what was removed.
    """
    names: set[str] = set()
    for where in [CACHE, *cgroup_roots(), Path("/run/netns")]:
        if where.exists():
            for p in where.iterdir():
                m = re.match(rf"^({PREFIX}(\d+))(-|$)", p.name)
                if m and not _pid_alive(int(m.group(2))):
                    names.add(m.group(1))
    for name in sorted(names):
        for workdir in [*CACHE.glob(f"{name}-*"), None]:
            Container(None, name, workdir=workdir).close()
    return sorted(names)


class Container:
    """A booted copy of the base image; every method has a deadline."""

    def __init__(
        self, base: Path | None, name: str | None = None, workdir: Path | None = None
    ) -> None:
        """A new container from ``base``; with ``workdir``, adopt a dead run's (to remove it)."""
        self.name = name or f"{PREFIX}{os.getpid()}"
        CACHE.mkdir(parents=True, exist_ok=True)
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=CACHE))
        self.workdir = workdir
        self.root = self.workdir / "root"
        self.log_path = self.workdir / "nspawn.log"
        self.base = base
        self.cgroups = [r / self.name for r in cgroup_roots()]
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        # The name a network namespace would have (close() removes it if it exists).
        self.netns: str | None = self.name

    # -------------------------------------------------------------- life cycle

    def prepare(self, deb: Path) -> None:
        """Copy the base image and download what the .deb depends on (host network)."""
        assert self.base is not None
        run(["cp", "-a", "--reflink=auto", str(self.base), str(self.root)], timeout=120)
        (self.root / "debs").mkdir()
        shutil.copy(deb, self.root / "debs" / deb.name)
        archives = CACHE / "apt-archives"
        (archives / "partial").mkdir(parents=True, exist_ok=True)
        script = (
            "set -e; export DEBIAN_FRONTEND=noninteractive;"
            " apt-get update -qq || echo 'apt-get update failed: using cached lists' >&2;"
            " apt-get install -y -qq --download-only --no-install-recommends"
            f" /debs/{deb.name} >/dev/null"
        )
        with locked("apt.lock"):
            self._in_cgroup_run(
                [
                    "systemd-nspawn",
                    "-q",
                    "-D",
                    str(self.root),
                    f"-M{self.name}-apt",
                    "--register=no",
                    "--keep-unit",
                    "--pipe",
                    f"--bind={archives}:/var/cache/apt/archives",
                    "sh",
                    "-c",
                    script,
                ],
                timeout=300,
            )
            # The booted container installs from these, with no network at all.
            dest = self.root / "var/cache/apt/archives"
            for f in archives.glob("*.deb"):
                target = dest / f.name
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy2(f, target)

    def boot(self, timeout: float = 60.0) -> None:
        """systemd-nspawn -b on a private network; returns once the system is running."""
        for cg in self.cgroups:
            cg.mkdir(exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed by the child's exit
        argv = [
            "systemd-nspawn",
            "-q",
            "-D",
            str(self.root),
            f"-M{self.name}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=pipe",
            "-b",
        ]
        self.nspawn = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._join_cgroups,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while self.leader is None:
            self.leader = self._find_leader()
            self._check_alive(deadline, "systemd to start in the container")
        while not self.exists("/run/systemd/private"):
            self._check_alive(deadline, "/run/systemd/private")
        left = max(1.0, deadline - time.monotonic())
        state = self.run(
            ["systemctl", "is-system-running", "--wait"], check=False, timeout=left
        ).stdout.strip()
        if state not in ("running", "degraded"):
            raise HarnessError(f"container state {state!r}\n{self.log_tail()}")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            raise HarnessError(f"container booted degraded: {failed}")
        run(["ip", "netns", "attach", self.name, str(self.leader)], timeout=10)

    def close(self) -> None:
        """Power off (or kill) the container and remove every trace of it."""
        if self.netns is not None:
            if Path("/run/netns", self.netns).exists():
                run(["ip", "netns", "delete", self.netns], timeout=10, check=False)
            self.netns = None
        proc = self.nspawn
        if proc is not None and proc.poll() is None:
            if self.leader is not None:
                with suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)  # systemd: poweroff
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                with suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self._kill_cgroups()
        self._remove_cgroups()
        if self._mounted_below(self.workdir):
            raise HarnessError(f"{self.workdir}: still has mounts; not deleting it")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- inside

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the container (all its namespaces, its PATH)."""
        assert self.leader is not None, "container not booted"
        env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        return run(
            ["nsenter", "-t", str(self.leader), "-a", "--", *argv],
            check=check,
            timeout=timeout,
            env=env,
            input=input,
        )

    def sh(self, script: str, *, check: bool = True, timeout: float = 60.0) -> str:
        return self.run(["sh", "-c", script], check=check, timeout=timeout).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False, timeout=10).returncode == 0

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, as `systemctl show -p PROP --value`."""
        return self.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()

    def wait_for(self, unit: str, prop: str, value: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            got = self.show(unit, prop)
            if got == value:
                return
            if time.monotonic() > deadline:
                status = self.run(
                    ["systemctl", "status", "--no-pager", "-n", "20", unit], check=False
                ).stdout
                raise AssertionError(f"{unit} {prop}={got!r}, wanted {value!r}\n{status}")
            time.sleep(0.1)

    def journal(self, unit: str, since: str | None = None) -> str:
        argv = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since:
            argv += ["--since", since]
        return self.run(argv, check=False).stdout

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "--- container console ---\n" + "\n".join(text.splitlines()[-lines:])

    # -------------------------------------------------------------- plumbing

    def _join_cgroups(self) -> None:
        """In the child, before exec: our own cgroups, so cleanup can find everything."""
        pid = str(os.getpid())
        for cg in self.cgroups:
            (cg / "cgroup.procs").write_text(pid)

    def _in_cgroup_run(self, argv: Sequence[str], timeout: float) -> None:
        for cg in self.cgroups:
            cg.mkdir(exist_ok=True)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._join_cgroups,
                env=dict(os.environ, PATH=SYSTEM_PATH),
            )
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                raise HarnessError(
                    f"timed out after {timeout:g} s: {' '.join(argv)}\n{out!r}"
                ) from None
            if proc.returncode != 0:
                text = out.decode(errors="replace")[-4000:]
                raise HarnessError(f"exit {proc.returncode}: {' '.join(argv)}\n{text}")
        finally:
            self._kill_cgroups()

    def _find_leader(self) -> int | None:
        """The container's PID 1 as the host sees it: nspawn's child named systemd."""
        assert self.nspawn is not None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid == self.nspawn.pid and comm == "systemd":
                return int(entry.name)
        return None

    def _check_alive(self, deadline: float, what: str) -> None:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise HarnessError(f"systemd-nspawn exited {self.nspawn.returncode}\n{self.log_tail()}")
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out waiting for {what}\n{self.log_tail()}")
        time.sleep(0.05)

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for cg in self.cgroups:
            for procs in cg.rglob("cgroup.procs") if cg.exists() else ():
                with suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def _kill_cgroups(self) -> None:
        for _ in range(50):
            pids = self._pids()
            if not pids:
                return
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _remove_cgroups(self) -> None:
        for cg in self.cgroups:
            if not cg.exists():
                continue
            dirs = sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, cg]:
                with suppress(OSError):
                    d.rmdir()

    @staticmethod
    def _mounted_below(path: Path) -> bool:
        prefix = str(path.resolve()) + "/"
        with open("/proc/self/mounts") as f:
            return any(line.split()[1].startswith(prefix) for line in f)
