"""A real switch for the end-to-end phone suites, and the checks they share.

``E2eSwitch`` starts two real ``softswitch-bearer`` processes and one real
``softswitch-control`` on loopback (bench/harness's processes and
config writer), adds the suite's users with the real ``softswitchctl user
add``, and reads the CDRs the calls leave behind straight from the database
(SQLite or MariaDB) with SQLAlchemy.

The phone-side checks live here too, so every scenario asserts the same
things the same way: each side hears the other's tone and not its own, for
at least 90 % of the answered time (``assert_two_way``), and the CDR row a
call produced has the right disposition, final code and packet counts
(``assert_cdr``).
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import signal
import subprocess
import time
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from bench.harness.bearer import BearerProcess, start_bearer
from bench.harness.control import (
    DOMAIN,
    ControlProcess,
    free_sip_port,
    write_control_config,
)
from softswitch.db.schema import cdrs, make_engine
from tests.audio import Delay, Recording, assert_hears, measure_delay
from tests.system.phone import Phone

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"

#: The suite's users: password, own tone (Hz, < 2200 so the delay markers
#: stay clear), whether their calls are recorded and their SRTP policy.
USERS: dict[str, dict[str, Any]] = {
    "alice": {"password": "alice-pw-1", "tone": 440.0},
    "bob": {"password": "bob-pw-2", "tone": 1000.0},
    "carol": {"password": "carol-pw-3", "tone": 1700.0},
    "dave": {"password": "dave-pw-4", "tone": 700.0},
    "erin": {"password": "erin-pw-5", "tone": 1300.0},
    "rita": {"password": "rita-pw-6", "tone": 600.0, "record": True},
    "sam": {"password": "sam-pw-7", "tone": 1500.0, "srtp": "mandatory"},
    "olga": {"password": "olga-pw-8", "tone": 850.0, "srtp": "off"},
}

#: Short enough to test "callee doesn't answer" in a few seconds.
NO_ANSWER_TIMEOUT = 5

_live: list[subprocess.Popen[bytes]] = []


@atexit.register
def _kill_leftovers() -> None:
    for proc in _live:
        if proc.poll() is None:
            proc.kill()


class E2eSwitch:
    """Control + two bearers in ``tmp``, users added with softswitchctl.

    ``db_url`` selects the database (default: SQLite under ``tmp``); extra
    config sections (``calls={...}``) are merged into softswitch.conf.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        db_url: str | None = None,
        users: dict[str, dict[str, Any]] = USERS,
        **sections: dict[str, Any],
    ) -> None:
        self.tmp = tmp
        self.db_url = db_url or f"sqlite:///{tmp / 'softswitch.db'}"
        self.users = users
        self.sections = {
            "calls": {"no_answer_timeout": NO_ANSWER_TIMEOUT},
            **sections,
            "database": {"url": self.db_url, "sync_interval": 0.5, **sections.get("database", {})},
        }
        self.recordings = tmp / "recordings"
        self.bearers: list[BearerProcess] = []
        self.control: ControlProcess | None = None
        self.engine: sa.engine.Engine | None = None

    # life cycle ----------------------------------------------------------------

    def start(self) -> E2eSwitch:
        try:
            self.bearers = [start_bearer(self.tmp / f"b{i}") for i in range(2)]
            for b in self.bearers:
                _live.append(b.proc)
            self.recordings.mkdir(parents=True, exist_ok=True)
            port = free_sip_port()
            etc = write_control_config(self.tmp, port, self.bearers, **self.sections)
            self.control = ControlProcess(self.tmp, etc, port)
            self._add_users()
            self.control.start()
            assert self.control.proc is not None
            _live.append(self.control.proc)
            self.engine = make_engine(self.db_url)
        except BaseException:
            self.stop()
            raise
        return self

    def _add_users(self) -> None:
        """`softswitchctl user add` for each user: the first alone (it creates the
        schema), the rest in parallel (each is a short transaction)."""
        assert self.control is not None
        names = list(self.users)

        def argv(name: str) -> list[str]:
            u = self.users[name]
            extra = ["--record"] if u.get("record") else []
            if u.get("srtp"):
                extra += ["--srtp", u["srtp"]]
            return ["user", "add", name, "--password", u["password"], *extra]

        done = self.control.ctl(*argv(names[0]))
        assert done.returncode == 0, done.stderr
        procs = [(n, self._ctl_popen(*argv(n))) for n in names[1:]]
        for name, proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"user add {name}: {err}"

    def _ctl_popen(self, *argv: str) -> subprocess.Popen[str]:
        from bench.harness.control import CTL_EXE

        assert self.control is not None
        return subprocess.Popen(
            [str(CTL_EXE), "--config-dir", str(self.control.etc), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def stop(self) -> list[str]:
        """Stop everything; returns the problems seen (bad exit codes, tracebacks)."""
        problems = []
        if self.control is not None and self.control.proc is not None:
            code = self.control.stop(signal.SIGTERM)
            if code != 0:
                problems.append(f"control exited {code}")
            if "Traceback" in self.control.log():
                problems.append("control logged a traceback")
        for i, b in enumerate(self.bearers):
            code = b.stop()
            if code != 0:
                problems.append(f"bearer {i} exited {code}")
            if "Traceback" in b.log():
                problems.append(f"bearer {i} logged a traceback")
        if self.engine is not None:
            self.engine.dispose()
        return problems

    def logs(self) -> str:
        parts = []
        if self.control is not None:
            parts.append("--- control ---\n" + "\n".join(self.control.log().splitlines()[-60:]))
        for i, b in enumerate(self.bearers):
            parts.append(f"--- bearer {i} ---\n" + "\n".join(b.log().splitlines()[-20:]))
        return "\n".join(parts)

    # addresses -------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self.control is not None
        return self.control.port

    @property
    def registrar(self) -> str:
        return f"sip:{DOMAIN}:{self.port}"

    def uri(self, user: str) -> str:
        """What a phone dials to reach ``user`` (or a ``conf<room>``) through the switch."""
        return f"sip:{user}@{DOMAIN}:{self.port}"

    # live state and records ---------------------------------------------------------

    def ctl_json(self, *argv: str) -> Any:
        assert self.control is not None
        done = self.control.ctl(*argv, "--json")
        assert done.returncode == 0, f"softswitchctl {' '.join(argv)}: {done.stderr}"
        return json.loads(done.stdout)

    def cdr_mark(self) -> CdrMark:
        """Where a scenario's CDRs begin: after the last row so far, and no
        older than now (a late row of an earlier call cannot pass for ours)."""
        assert self.engine is not None
        with self.engine.connect() as conn:
            last = int(conn.execute(sa.select(sa.func.max(cdrs.c.id))).scalar() or 0)
        return CdrMark(last, time.time())

    def cdrs_since(self, mark: CdrMark | int) -> list[dict[str, Any]]:
        assert self.engine is not None
        if isinstance(mark, int):
            mark = CdrMark(mark, 0.0)
        # DATETIME columns hold naive UTC; MariaDB's keep whole seconds.
        since = dt.datetime.fromtimestamp(int(mark.time), dt.UTC).replace(tzinfo=None)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(cdrs)
                .where(cdrs.c.id > mark.last_id, cdrs.c.start_time >= since)
                .order_by(cdrs.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def wait_cdrs(
        self, mark: CdrMark, count: int = 1, timeout: float = 10.0, **match: str
    ) -> list[dict[str, Any]]:
        """The CDRs written after ``mark`` whose columns start with ``match``
        (e.g. caller="alice@"), once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:  # bounded
            rows = [
                r
                for r in self.cdrs_since(mark)
                if all(str(r[k]).startswith(v) for k, v in match.items())
            ]
            if len(rows) >= count:
                time.sleep(0.3)  # one more batch: a duplicate would show now
                return [
                    r
                    for r in self.cdrs_since(mark)
                    if all(str(r[k]).startswith(v) for k, v in match.items())
                ]
            time.sleep(0.1)
        raise AssertionError(
            f"{count} CDR(s) matching {match} expected after {mark}, got {rows}; "
            f"all since: {self.cdrs_since(mark)}\n{self.logs()}"
        )


@dataclass(frozen=True)
class CdrMark:
    last_id: int
    time: float


# ------------------------------------------------------------------------------ phones


def start_phones(specs: Sequence[dict[str, Any]], workdir: Path) -> list[Phone]:
    """Spawn every phone at once (pjsua start-up costs CPU), then wait for all."""
    made = []
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name")
        spec.setdefault("workdir", workdir / name)
        made.append(Phone(name, **spec))
    try:
        for p in made:
            p.spawn()
        for p in made:
            p.wait_ready(20)
    except BaseException:
        for p in made:
            p.kill()
        raise
    return made


def register(phone: Phone, switch: E2eSwitch, user: str, password: str | None = None) -> int:
    """REGISTER ``phone`` as ``user``; returns the final status."""
    pw = USERS[user]["password"] if password is None else password
    return phone.register(switch.registrar, user, pw, DOMAIN, expires=300, timeout=8)


# ------------------------------------------------------------------------------ checks


def hang_up(a: Phone, ca: int, b: Phone, cb: int) -> None:
    """A hangs up call ``ca``; both ends reach DISCONNECTED."""
    a.hangup(ca)
    assert a.wait_state("DISCONNECTED", 5, call=ca)["state"] == "DISCONNECTED"
    assert b.wait_state("DISCONNECTED", 5, call=cb)["state"] == "DISCONNECTED"


def assert_two_way(a: Phone, ca: int, b: Phone, cb: int) -> tuple[Recording, Recording]:
    """Each side heard the other's tone, not its own, with sound ≥ 90 % of the time."""
    heard_by_a, heard_by_b = a.recording(ca), b.recording(cb)
    assert_hears(heard_by_b, a.tone_hz, not_hz=[b.tone_hz])
    assert_hears(heard_by_a, b.tone_hz, not_hz=[a.tone_hz])
    return heard_by_a, heard_by_b


def one_way_delay(sender: Phone, call: int, receiver_rec: Recording) -> Delay:
    return measure_delay(sender.sent_markers(call), receiver_rec)


def assert_cdr(
    row: dict[str, Any],
    disposition: str,
    code: int,
    *,
    answered: bool,
    recorded: bool = False,
    legs: int = 2,
) -> None:
    """The CDR says how the call ended; answered calls carried packets on every
    leg (``legs=1`` for a conference member: its one leg is A)."""
    got = (row["disposition"], row["sip_code"])
    assert got == (disposition, code), f"CDR {got}, expected {(disposition, code)}: {row}"
    if answered:
        assert row["answer_time"] is not None and row["duration"] > 0, row
        assert row["a_packets"] > 0, f"no packets on leg A: {row}"
        if legs == 2:
            assert row["b_packets"] > 0, f"no packets on leg B: {row}"
    else:
        assert row["answer_time"] is None and row["duration"] == 0, row
    if recorded:
        assert row["recording"], f"no recording in CDR: {row}"


def band_db(samples: np.ndarray, freq: float) -> float:
    from tests.audio import band_energy_db

    return band_energy_db(samples, 8000, freq)


def read_stereo_wav(path: str | Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(left, right, rate) of a 16-bit stereo WAV, as the bearer's recorder writes it."""
    with wave.open(str(path), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        assert (channels, width) == (2, 2), f"{path}: {channels} channels of {8 * width} bits"
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return data[0::2].astype(np.int16), data[1::2].astype(np.int16), rate


def assert_mix(
    samples: np.ndarray,
    expect_hz: Iterable[float],
    not_hz: Iterable[float],
    *,
    what: str,
    within_db: float = 12,
) -> None:
    """A conference listener heard every ``expect_hz`` (each within ``within_db``
    of the loudest, none missing) and none of ``not_hz`` (20 dB below the
    quietest expected), with sound for at least 90 % of the time."""
    from tests.audio import describe, sound_fraction

    assert len(samples) > 8000, f"{what}: only {len(samples)} samples"
    levels = {f: round(band_db(samples, f), 1) for f in expect_hz}
    loudest, quietest = max(levels.values()), min(levels.values())
    problems = []
    if loudest - quietest > within_db:
        problems.append(f"unbalanced mix {levels}")
    if quietest < -40:
        problems.append(f"a tone is missing {levels}")
    for f in not_hz:
        got = band_db(samples, f)
        if got > quietest - 20:
            problems.append(f"{f:g} Hz (own tone) at {got:.1f} dBFS, expected tones {levels}")
    frac = sound_fraction(samples)
    if frac < 0.9:
        problems.append(f"sound in only {100 * frac:.0f}% of the time")
    assert not problems, f"{what}: {'; '.join(problems)}. Heard: {describe(samples)}"


FRAME_MS = 20.0


@dataclass
class DelayReport:
    """The one-way delay the switch adds: via the switch minus direct, same phones.

    A marker's delay is path + the receiving phone's jitter-buffer depth + the
    fixed phase between the two phones' 20 ms clocks. The phase cancels
    between a direct and a switched call of the same phone processes. The
    adaptive jitter buffers, though, step by whole 20 ms frames whenever the
    shared CPU delays a packet, in direct calls as much as in switched ones.
    So each call is summarised by its *minimum* (the buffer at its
    shallowest), and the difference is split into whole frames of buffer
    depth (``buffer_frames``) and the remainder within ±10 ms (``added_ms``),
    which is the path: control + bearer relay on loopback. A path that held
    packets for exactly a whole frame would hide in ``buffer_frames``; the
    raw difference (``raw_ms``) is reported beside it for that reason.
    """

    direct: dict[str, Delay]
    switched: dict[str, Delay]

    def raw_ms(self, k: str) -> float:
        return float(self.switched[k].delays_ms.min() - self.direct[k].delays_ms.min())

    def buffer_frames(self, k: str) -> int:
        return round(self.raw_ms(k) / FRAME_MS)

    @property
    def added_ms(self) -> dict[str, float]:
        return {k: self.raw_ms(k) - FRAME_MS * self.buffer_frames(k) for k in self.switched}

    def write(self, path: Path = RESULTS / "e2e_delay.json") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)

        def summary(d: Delay) -> dict[str, Any]:
            return {
                "min_ms": round(float(d.delays_ms.min()), 3),
                "median_ms": round(d.median_ms, 3),
                "markers_ms": [round(float(x), 2) for x in d.delays_ms],
            }

        data = {
            "what": "one-way audio delay between two pjsua2 phones on loopback (marker "
            "into A's encoder -> out of B's decoder); added = through the switch "
            "(control + bearer relay) minus a direct call between the same two phone "
            "processes, on each call's minimum over its markers, less whole 20 ms frames "
            "of jitter-buffer depth (see tests/system/loopback_switch.py DelayReport)",
            "added_ms": {k: round(v, 3) for k, v in self.added_ms.items()},
            "raw_difference_ms": {k: round(self.raw_ms(k), 3) for k in self.switched},
            "jitter_buffer_frames_difference": {k: self.buffer_frames(k) for k in self.switched},
            "direct": {k: summary(v) for k, v in self.direct.items()},
            "switched": {k: summary(v) for k, v in self.switched.items()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def __str__(self) -> str:
        return "; ".join(
            f"{k}: added {self.added_ms[k]:+.2f} ms (min direct "
            f"{self.direct[k].delays_ms.min():.2f} / via switch "
            f"{self.switched[k].delays_ms.min():.2f} ms, jitter buffer "
            f"{self.buffer_frames(k):+d} frames; median "
            f"{self.direct[k].median_ms:.2f} / {self.switched[k].median_ms:.2f} ms)"
            for k in self.switched
        )
