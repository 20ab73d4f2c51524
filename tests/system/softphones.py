"""Debian's own softphones, headless, for the system tests: baresip and linphonec.

Both are driven through their console: commands on stdin, events read from
stdout by a reader thread, so a test waits for the line that says a thing
happened ("200 OK", "Call established", "connected.") instead of sleeping.
Every wait has a deadline and fails with the phone's output.

Audio goes through files, no sound card:

- baresip 1.0.0: ``aufile`` plays a WAV into the call; ``sndfile`` dumps what
  the decoder hands over to ``dump-<time>-dec.wav`` in the config dir.
  (1.0's ``aufile`` has no player side.) SIP and RTP bind to 127.0.0.1
  (``net_interface``); without it libre picks eth0's address.
- linphonec 5.1: ``soundcard use files``, then ``play`` / ``record`` WAVs
  during the call. ``HOME`` is the phone's own directory, and
  ``~/.local/share/linphone`` must exist: without its database directory
  the 5.1 core stays in ``LinphoneGlobalStartup`` and never opens a port.

Processes die with the test process (PR_SET_PDEATHSIG) and at interpreter
exit; ``close`` quits them politely first.
"""

from __future__ import annotations

import atexit
import os
import queue
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import numpy as np

from bench.harness.control import free_sip_port
from softswitch.daemonkit.runtime import die_with_parent
from tests.audio import read_wav, tone, write_wav

_live: weakref.WeakSet[ConsolePhone] = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for phone in list(_live):
        phone.kill()


class ConsolePhone:
    """A phone program whose console is a pipe; lines are kept for the failure message."""

    #: Lines that only repeat a call's status (baresip prints one per second).
    NOISE: tuple[str, ...] = ()
    #: The console command that exits.
    QUIT = "quit"

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: dict[str, str]):
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = env
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            cwd=self.workdir,
            env=self.env,
            preexec_fn=die_with_parent(os.getpid()),
        )
        _live.add(self)
        threading.Thread(target=self._read, name=f"{self.name}-stdout", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\r\n")
            if line.strip() and not any(n in line for n in self.NOISE):
                self.lines.append(line)
                self._new.put(line)
        self._new.put(None)  # EOF

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(
        self,
        text: str,
        timeout: float,
        *,
        poll: str | None = None,
        fail: Sequence[str] = (),
    ) -> str:
        """The next line containing ``text``; ``poll`` is sent every 0.3 s while
        waiting, and a line containing one of ``fail`` ends the wait at once."""
        deadline = time.monotonic() + timeout
        next_poll = 0.0
        while True:  # bounded by the deadline
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"{self.name}: no {text!r} in {timeout:g} s\n{self.tail()}")
            if poll is not None and now >= next_poll:
                self.send(poll)
                next_poll = now + 0.3
            try:
                line = self._new.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"{self.name} exited waiting for {text!r}\n{self.tail()}")
            if text in line:
                return line
            for bad in fail:
                if bad in line:
                    raise AssertionError(
                        f"{self.name}: {line!r} waiting for {text!r}\n{self.tail()}"
                    )

    def tail(self, n: int = 40) -> str:
        return f"--- {self.name} ---\n" + "\n".join(self.lines[-n:])

    def close(self, timeout: float = 5.0) -> int | None:
        """Quit; returns the exit code, or None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        try:
            self.send(self.QUIT)
            self.proc.stdin.close()  # type: ignore[union-attr]
            return self.proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def tone_file(path: Path, hz: float, seconds: float = 30.0) -> Path:
    """A WAV (8 kHz, 16 bit, mono) of one tone, longer than any call here."""
    return write_wav(path, tone(hz, seconds))


def heard(path: Path, trim: float = 0.3) -> np.ndarray:
    """What a file-recording phone heard, less ``trim`` s at each end (the
    jitter buffer's first fill, and the tail after the hang-up)."""
    samples, rate = read_wav(path)
    assert rate == 8000, f"{path}: {rate} Hz"
    cut = round(trim * rate)
    return samples[cut : len(samples) - cut]


class Baresip(ConsolePhone):
    """baresip 1.0.0 (Debian 12) with ``stdio`` as its console."""

    NOISE = (" audio=", "[0:0")  # "[0:00:03] audio=0/0 (bit/s)" every second
    QUIT = "/quit"

    def __init__(
        self,
        workdir: Path,
        *,
        user: str,
        password: str,
        server: str,
        tone_hz: float,
        auto_answer: bool = False,
    ) -> None:
        """``server`` is the switch's "host:port"; the account's AOR is
        user@server, so REGISTERs and calls go there with no outbound proxy."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.source = tone_file(workdir / "source.wav", tone_hz)
        (workdir / "config").write_text(
            "poll_method epoll\n"
            "net_interface 127.0.0.1\n"
            f"sip_listen 127.0.0.1:{free_sip_port()}\n"
            f"audio_source aufile,{self.source}\n"
            f"audio_alert aufile,{self.source}\n"  # no ringing device either
            "rtp_ports 16000-19999\n"
            f"snd_path {workdir}\n"
            "module_path /usr/lib/baresip/modules\n"
            "module stdio.so\n"
            "module g711.so\n"
            "module aufile.so\n"
            "module sndfile.so\n"
            "module_app account.so\n"
            "module_app menu.so\n"
        )
        answer = ";answermode=auto" if auto_answer else ""
        (workdir / "accounts").write_text(
            f"<sip:{user}@{server}>;auth_pass={password};regint=300;audio_codecs=PCMU{answer}\n"
        )
        super().__init__(
            "baresip", ["baresip", "-4", "-f", str(workdir)], workdir, dict(os.environ)
        )

    def wait_registered(self, timeout: float = 10.0) -> str:
        """The 200 line ("alice@host: {0/UDP/v4} 200 OK (softswitch) [1 binding]")."""
        return self.expect(" 200 OK ", timeout, fail=("Register: ", "401 Unauthorized"))

    def dial(self, uri: str) -> None:
        self.send(f"/dial {uri}")

    def wait_established(self, timeout: float = 10.0) -> str:
        return self.expect("Call established", timeout, fail=("terminated", "Call failed"))

    def hangup(self, timeout: float = 5.0) -> str:
        self.send("/hangup")
        return self.expect("terminated", timeout)

    def recording(self) -> Path:
        """The decoder's dump of the (one) call: what this phone heard."""
        (path,) = sorted(self.workdir.glob("dump-*-dec.wav"))
        return path


class Linphonec(ConsolePhone):
    """linphonec 5.1 (Debian 12's linphone-cli) with WAV files for audio."""

    def __init__(self, workdir: Path, *, tone_hz: float, auto_answer: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        self.source = tone_file(workdir / "source.wav", tone_hz)
        self.heard_path = workdir / "heard.wav"
        rc = workdir / "linphonerc"
        rc.write_text(
            f"[sip]\nsip_port={free_sip_port()}\nsip_tcp_port=0\nsip_tls_port=0\n"
            "[rtp]\naudio_rtp_port=16000-19999\n"
        )
        argv = ["linphonec", "-c", str(rc), "-d", "4", "-l", str(workdir / "linphone.log")]
        if auto_answer:
            argv.append("-a")
        env = dict(os.environ, HOME=str(workdir))
        super().__init__("linphonec", argv, workdir, env)

    def start(self) -> Self:
        super().start()
        self.send("soundcard use files")
        self.expect("Using wav files", 10)
        return self

    def register(self, user: str, password: str, domain: str, proxy: str) -> None:
        self.send(f"register sip:{user}@{domain} {proxy} {password}")

    def wait_registered(self, timeout: float = 10.0) -> str:
        return self.expect("registered, identity=", timeout, poll="status register")

    def call(self, uri: str) -> None:
        self.send(f"call {uri}")

    def wait_connected(self, timeout: float = 10.0) -> str:
        line = self.expect(" connected.", timeout, fail=(" ended ", "failed"))
        # Media from now on: the tone into the call, the call into a file.
        self.send(f"play {self.source}")
        self.send(f"record {self.heard_path}")
        return line

    def hangup(self, timeout: float = 5.0) -> str:
        self.send("terminate")
        return self.expect(" ended ", timeout)
