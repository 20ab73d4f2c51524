"""Bearer benchmark: how many calls one bearer core relays with 0 loss and p99 < 5 ms.

Usage: python -m bench.bearer_relay [--quick] [--scenario relay|recorded|conference ...]

A real ``softswitch-bearer`` is started (pinned to core 0 when the machine
has two or more cores; the load generator pins itself to core 1), calls are
set up through the control protocol (ALLOCATE with the caller's address,
UPDATE with the callee's), and N concurrent calls are driven both ways at 50
packets/s of 160-byte G.711 payload.  Every packet carries its send time;
the generator's kernel receive timestamp gives the latency (bench.loadgen).
The same generator is also run against itself, without the bearer, at the
same packet rate: that baseline is the loopback hop plus the generator's own
scheduling, reported beside the bearer figures so the difference is what the
bearer adds.

Per step: loss %, latency p50/p99 (raw and the baseline's), bearer CPU %
(/proc/PID/stat over the window), bearer RSS, generator CPU % and schedule
lag.  A step whose generator was saturated is flagged ``generator_saturated``
and does not count.  Steps stop at the first that does not fit (loss > 0 or
p99 >= 5 ms) or at the end of the list.  Scenarios:

* ``relay``: plain calls;
* ``srtp``: the same calls with SRTP (SDES keys, AES_CM_128_HMAC_SHA1_80) on
  both legs: each "phone" stream is protected with its own key, the bearer
  decrypts it with that key and re-encrypts it with the key it made for the
  other leg, and the generator authenticates, decrypts and checks every
  packet it gets back (bench.loadgen ``set_srtp``);
* ``recorded``: the same with one call in ten recorded (WAV files in a
  temporary directory, written by the bearer's writer thread);
* ``conference``: rooms of ten participants; each participant sends 50
  packets/s and receives the bearer's mix; a step fits when every
  participant received its 50 packets/s (0 loss) and the mix packets'
  inter-arrival times stayed within 5 ms of 20 ms at p99.

Results go to bench/results/bearer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bearerctl import BearerUnderTest
from bench.loadgen import Generator, cpu_seconds_of, rss_kib_of
from softswitch.protocol import (
    Allocate,
    Allocated,
    AllocFlags,
    Join,
    LegSpec,
    PayloadType,
    Record,
    SrtpKey,
    SrtpSuite,
    Update,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bearer.json"
PCMU = PayloadType(0, "PCMU", 8000)
TEL = PayloadType(101, "telephone-event", 8000)
P99_LIMIT_MS = 5.0

FULL_STEPS = {
    "relay": [100, 250, 500, 750, 1000, 1250, 1500, 1750, 2000],
    "srtp": [100, 150, 200, 250, 300, 350, 400, 500],
    "recorded": [100, 250, 500, 750, 1000, 1250, 1500],
    "conference": [10, 25, 50, 75, 100, 125, 150],
}
QUICK_STEPS = {"relay": [50], "srtp": [20], "recorded": [20], "conference": [2]}
S80 = SrtpSuite.AES_CM_128_HMAC_SHA1_80


def _spec(addr: tuple[str, int] | None) -> LegSpec:
    host, port = addr if addr is not None else ("0.0.0.0", 0)
    return LegSpec(host, port, (PCMU, TEL), 0, 101)


def _pin(cpu: int | None, nice: int = 0) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cross_core_rtt(a_cpu: int | None, b_cpu: int | None, rounds: int = 2000) -> dict[str, float]:
    """UDP ping-pong between a process on the bearer's core and one on the generator's.

    Both block in recv, as an idle bearer blocks in epoll_wait: the round trip
    is two cross-CPU wake-ups.  On a VM this is where milliseconds of the
    latency tail come from whatever the relay does, so it is measured and
    reported beside the relay's figures.
    """
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    b.settimeout(5)
    a.settimeout(5)
    pid = os.fork()
    if pid == 0:  # the echo side, on the bearer's core
        try:
            _pin(a_cpu)
            for _ in range(rounds):
                data, addr = b.recvfrom(64)
                b.sendto(data, addr)
        finally:
            os._exit(0)
    rtts = []
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            a.sendto(b"x", b.getsockname())
            a.recv(64)
            rtts.append(time.perf_counter() - t)
            time.sleep(0.001)
    except OSError:
        pass
    finally:
        os.waitpid(pid, 0)
        a.close()
        b.close()
    if not rtts:
        return {}
    q = np.percentile(np.array(rtts) * 1000.0, [50, 99, 100])
    return {"p50_ms": round(q[0], 3), "p99_ms": round(q[1], 3), "max_ms": round(q[2], 3)}


def _cpu_pressure() -> float | None:
    """Share of the last 60 s in which some task waited for a CPU (PSI), percent."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split()[2].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


class Scenario:
    """Sets up calls (or rooms) incrementally on one bearer and measures each step."""

    def __init__(self, kind: str, bearer: BearerUnderTest, gen: Generator) -> None:
        self.kind = kind
        self.bearer = bearer
        self.gen = gen
        self.ctl = bearer.control
        self.dests: list[tuple[str, int]] = []
        self.sessions = 0
        self.send_keys: list[bytes] = []  # per stream: the key its "phone" offered
        self.recv_keys: list[bytes] = []  # per stream: the bearer's key where it comes out

    def grow(self, n: int) -> None:
        """Bring the bearer to n calls (or n rooms of ten)."""
        me = self.gen.addr
        if self.kind == "conference":
            want = n * 10
            new = list(range(self.sessions, want))
            allocs = [
                Allocate(i + 1, f"conf-{i}", (_spec(me),), AllocFlags.CONFERENCE) for i in new
            ]
            replies = self.ctl.many(allocs)
            joins = [Join(f"room-{i // 10}", i + 1) for i in new]
            for r in self.ctl.many(joins):
                assert type(r).__name__ == "Joined", r
            for r in replies:
                assert isinstance(r, Allocated), r
                self.dests.append(("127.0.0.1", r.ports[0]))
            self.sessions = want
        elif self.kind == "srtp":
            new = list(range(self.sessions, n))
            keys = {i: (os.urandom(30), os.urandom(30)) for i in new}
            allocs = [
                Allocate(
                    i + 1,
                    f"call-{i}",
                    (
                        _spec(me).with_srtp(SrtpKey(S80, keys[i][0]), S80),
                        _spec(None).with_srtp(None, S80),
                    ),
                )
                for i in new
            ]
            replies = self.ctl.many(allocs)
            updates = [
                Update(i + 1, 1, _spec(me).with_srtp(SrtpKey(S80, keys[i][1]), S80)) for i in new
            ]
            for r in self.ctl.many(updates):
                assert type(r).__name__ == "Updated", r
            for i, r in zip(new, replies, strict=True):
                assert isinstance(r, Allocated) and len(r.keys) == 2, r
                k0, k1 = r.keys
                assert k0 is not None and k1 is not None
                self.dests.extend(("127.0.0.1", p) for p in r.ports)
                # Stream 2i goes into leg 0 and comes out of leg 1, and the other way round.
                self.send_keys += [keys[i][0], keys[i][1]]
                self.recv_keys += [k1.key, k0.key]
            self.sessions = n
            self.gen.set_streams(self.dests)
            self.gen.set_srtp(self.send_keys, self.recv_keys)
            return
        else:
            new = list(range(self.sessions, n))
            allocs = [Allocate(i + 1, f"call-{i}", (_spec(me), _spec(None))) for i in new]
            replies = self.ctl.many(allocs)
            updates = [Update(i + 1, 1, _spec(me)) for i in new]
            for r in self.ctl.many(updates):
                assert type(r).__name__ == "Updated", r
            if self.kind == "recorded":
                recs = [Record(i + 1, True, f"call-{i}.wav") for i in new if i % 10 == 0]
                for r in self.ctl.many(recs):
                    assert type(r).__name__ == "RecordReply" and r.recording, r  # type: ignore[attr-defined]
            for r in replies:
                assert isinstance(r, Allocated), r
                self.dests.extend(("127.0.0.1", p) for p in r.ports)
            self.sessions = n
        self.gen.set_streams(self.dests)

    def measure(self, warmup: float, window: float) -> dict[str, Any]:
        pid = self.bearer.pid
        cpu: list[float] = []
        before = self.ctl.stats()

        def on_window(opening: bool) -> None:
            cpu.append(cpu_seconds_of(pid))

        r = self.gen.run(
            warmup,
            window,
            on_window=on_window,
            collect_foreign=self.kind == "conference",
            on_idle=self.ctl.pump,
        )
        after = self.ctl.stats()
        row: dict[str, Any] = {
            "streams": self.gen.n,
            "packets_per_second_in": round(self.gen.n / self.gen.interval),
            "bearer_cpu_percent": round(100.0 * (cpu[1] - cpu[0]) / window, 1)
            if len(cpu) == 2
            else None,
            "bearer_rss_mib": round(rss_kib_of(pid) / 1024, 1),
            "generator_cpu_percent": round(r.gen_cpu_percent, 1),
            "generator_work_percent": round(r.gen_work_percent, 1),
            "generator_max_lag_ms": round(r.max_lag_ms, 2),
            "generator_lag_p99_ms": round(r.lag_p99_ms, 3),
            "generator_saturated": r.saturated,
            "bearer_drops": {
                k: after[k] - before.get(k, 0)
                for k in after
                if k.startswith("drop_") and after[k] != before.get(k, 0)
            },
            "bearer_late_ticks": after.get("late_ticks", 0) - before.get("late_ticks", 0),
        }
        if self.kind == "conference":
            f = r.foreign
            expected = self.gen.n * window / self.gen.interval
            row["mix_packets_expected"] = int(expected)
            row["mix_packets_received"] = f["count"]
            row["mix_packets_missing"] = f["missing"]
            row["mix_streams"] = f["sources"]
            row["loss_percent"] = round(100.0 * f["missing"] / max(f["count"] + f["missing"], 1), 4)
            row["mix_interarrival_dev_p99_ms"] = round(f["dev_p99_ms"], 3)
            row["fits"] = (
                row["loss_percent"] == 0.0 and f["dev_p99_ms"] < P99_LIMIT_MS and not r.saturated
            )
        else:
            row["sent"] = r.sent
            row["received"] = r.received
            if self.kind == "srtp":
                row["srtp_auth_failures"] = self.gen.srtp_errors
                row["payload_errors"] = self.gen.payload_errors
            row["loss_percent"] = round(r.loss_percent, 4)
            row["latency_p50_ms"] = round(r.latency_ms(50), 3)
            row["latency_p99_ms"] = round(r.latency_ms(99), 3)
            row["latency_max_ms"] = round(r.latency_ms(100), 3)
            row["fits"] = (
                r.loss_percent == 0.0 and r.latency_ms(99) < P99_LIMIT_MS and not r.saturated
            )
        return row


def baseline(streams: int, warmup: float, window: float, cpu: int | None) -> dict[str, Any]:
    """The generator against itself: loopback hop + generator scheduling, no bearer."""
    gen = Generator([("127.0.0.1", 9)])
    try:
        gen.set_streams([gen.addr] * streams)
        r = gen.run(warmup, window)
        return {
            "loss_percent": round(r.loss_percent, 4),
            "latency_p50_ms": round(r.latency_ms(50), 3),
            "latency_p99_ms": round(r.latency_ms(99), 3),
            "generator_cpu_percent": round(r.gen_cpu_percent, 1),
            "generator_work_percent": round(r.gen_work_percent, 1),
            "generator_saturated": r.saturated,
        }
    finally:
        gen.close()


def run_scenario(
    kind: str,
    steps: list[int],
    warmup: float,
    window: float,
    bearer_cpu: int | None,
    gen_cpu: int | None,
    nice: int = 0,
) -> dict[str, Any]:
    biggest = max(steps)
    sessions = biggest * (10 if kind == "conference" else 1)
    legs = sessions * (1 if kind == "conference" else 2)
    bearer = BearerUnderTest(
        ports=2 * legs + 200, max_sessions=sessions + 10, cpu=bearer_cpu, nice=nice
    )
    gen = Generator([("127.0.0.1", 9)])
    rows = []
    try:
        sc = Scenario(kind, bearer, gen)
        for n in steps:
            t0 = time.monotonic()
            sc.grow(n)
            row: dict[str, Any] = {"n": n, "setup_seconds": round(time.monotonic() - t0, 2)}
            row.update(sc.measure(warmup, window))
            if kind != "conference":
                base = baseline(gen.n, min(warmup, 1.0), min(window, 3.0), gen_cpu)
                row["baseline"] = base
                row["added_latency_p50_ms"] = round(
                    row["latency_p50_ms"] - base["latency_p50_ms"], 3
                )
                row["added_latency_p99_ms"] = round(
                    row["latency_p99_ms"] - base["latency_p99_ms"], 3
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not row["fits"]:
                break
        if kind == "recorded":
            wavs = list(bearer.recordings.glob("*.wav"))
            rows[-1]["recording_files"] = len(wavs)
    finally:
        gen.close()
        code = bearer.stop()
    fitting = [row["n"] for row in rows if row["fits"]]
    return {
        "unit": "rooms of 10" if kind == "conference" else "calls (2 legs, 50 pps each way)",
        "steps": rows,
        "largest_fitting": max(fitting) if fitting else 0,
        "bearer_exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bearer_relay", description=__doc__.splitlines()[0]
    )
    p.add_argument("--quick", action="store_true", help="a few seconds of smoke test")
    p.add_argument("--scenario", action="append", choices=sorted(FULL_STEPS), help="run only these")
    p.add_argument("--steps", help="comma-separated N values (overrides the default list)")
    p.add_argument("--window", type=float, help="measurement seconds per step")
    p.add_argument("--output", default=str(RESULTS), help="where to write the JSON results")
    p.add_argument(
        "--no-renice", action="store_true", help="do not raise bearer/generator priority"
    )
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    bearer_cpu, gen_cpu = (0, 1) if cores >= 2 else (None, None)
    # On a shared machine other processes would take turns on our cores and the
    # figure would measure them; as root, bearer and generator run at nice -20
    # (still CFS: others keep a share) unless --no-renice.
    nice = -20 if os.geteuid() == 0 and not args.no_renice else 0
    saved = (os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, 0))
    _pin(gen_cpu, nice)
    try:
        return _run(args, cores, bearer_cpu, gen_cpu, nice)
    finally:
        # main() may be called in-process (a test): give the caller its CPUs back.
        os.sched_setaffinity(0, saved[0])
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, saved[1])


def _run(
    args: argparse.Namespace, cores: int, bearer_cpu: int | None, gen_cpu: int | None, nice: int
) -> int:
    warmup, window = (0.3, 1.0) if args.quick else (2.0, 10.0)
    if args.window:
        window = args.window
    table = QUICK_STEPS if args.quick else FULL_STEPS
    kinds = args.scenario or ["relay", "srtp", "recorded", "conference"]
    load_before = _loadavg()
    pressure_before = _cpu_pressure()
    wakeup = cross_core_rtt(bearer_cpu, gen_cpu, 300 if args.quick else 2000)
    out: dict[str, Any] = {
        "benchmark": "bearer_relay",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "machine": {
            "cores": cores,
            "bearer_cpu": bearer_cpu,
            "generator_cpu": gen_cpu,
            "nice": nice,
            "cross_core_udp_rtt": wakeup,
        },
        "criteria": {"loss_percent": 0, "latency_p99_ms_below": P99_LIMIT_MS},
        "warmup_seconds": warmup,
        "window_seconds": window,
        "load_average_before": load_before,
        "cpu_pressure_avg60_before": pressure_before,
        "scenarios": {},
    }
    for kind in kinds:
        steps = [int(x) for x in args.steps.split(",")] if args.steps else table[kind]
        print(f"-- {kind}: steps {steps}", flush=True)
        out["scenarios"][kind] = run_scenario(
            kind, steps, warmup, window, bearer_cpu, gen_cpu, nice
        )
    out["load_average_after"] = _loadavg()
    out["cpu_pressure_avg60_after"] = _cpu_pressure()
    # Before and after only: a load above the two cores we use means neighbours
    # competed with bearer or generator, and the figures understate the bearer.
    out["machine_busy"] = max(load_before[0], out["load_average_after"][0]) > 2.5
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for kind, res in out["scenarios"].items():
        print(f"{kind}: largest fitting N = {res['largest_fitting']} {res['unit']}")
    print(f"results: {path}")
    ok = all(res["bearer_exit_code"] == 0 for res in out["scenarios"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
