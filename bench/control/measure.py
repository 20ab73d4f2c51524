"""Measurement: percentiles, what a step costs (``Probe``), whether a step
fits, and the set-up delay's sources (SIPp message stamps, the daemon's
Prometheus histogram)."""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.control.machine import LOADS, loadavg
from bench.control.switch import Switch
from bench.loadgen import cpu_seconds_of, rss_kib_of

RESPONSE_P99_LIMIT_MS = 100.0


CPU_SATURATED_PERCENT = 95.0


ACHIEVED_FRACTION = 0.95


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def rounded(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def achieved_rate(rtt: list[tuple[float, float]]) -> float | None:
    if len(rtt) < 2:
        return None
    stamps = sorted(t for t, _ in rtt)
    span = (stamps[-1] - stamps[0]) / 1000
    return (len(stamps) - 1) / span if span > 0 else None


def fits(row: dict[str, Any], all_done: bool) -> bool:
    achieved = row["achieved_per_second"] or 0
    p99 = row["response_p99_ms"]
    return (
        all_done
        and row["failed"] == 0
        and row["retransmissions"] == 0
        and row["sipp_exit_code"] == 0
        and achieved >= ACHIEVED_FRACTION * row["target_per_second"]
        and p99 is not None
        and p99 < RESPONSE_P99_LIMIT_MS
    )


@dataclass
class Probe:
    """CPU of control and bearers, and the daemon's counters, across a step."""

    sw: Switch
    t0: float = 0.0
    cpu0: float = 0.0
    bearer_cpu0: list[float] = field(default_factory=list)
    status0: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> Probe:
        self.status0 = self.sw.status()
        self.epoch0 = time.time()
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds_of(self.sw.pid)
        self.bearer_cpu0 = [cpu_seconds_of(b.proc.pid) for b in self.sw.bearers]
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.cpu = cpu_seconds_of(self.sw.pid) - self.cpu0
        self.bearer_cpu = [
            cpu_seconds_of(b.proc.pid) - c0
            for b, c0 in zip(self.sw.bearers, self.bearer_cpu0, strict=True)
        ]
        self.status1 = self.sw.status()
        self.gc = self.sw.gc_pauses(self.epoch0, time.time())

    def row(self) -> dict[str, Any]:
        deltas = {}
        for k, v in self.status1.items():
            if isinstance(v, int) and not isinstance(v, bool) and k not in ("users",):
                d = v - self.status0.get(k, 0)
                if d and (k.startswith(("drop_", "register_refused_", "db_")) or "fail" in k):
                    deltas[k] = d
        LOADS.append(loadavg()[0])
        return {
            "load_average_1m": LOADS[-1],
            "control_cpu_percent": round(100 * self.cpu / self.wall, 1),
            "bearer_cpu_percent": [round(100 * c / self.wall, 1) for c in self.bearer_cpu],
            "control_rss_mib": round(rss_kib_of(self.sw.pid) / 1024, 1),
            "control_counters": deltas,
            **({"control_gc_pauses": self.gc} if self.gc is not None else {}),
        }


_ENTRY = re.compile(
    r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(?:UDP|TCP) message (sent|received)[^\n]*\n\n",
    re.M,
)


FROM_USER = re.compile(r"^From:\s*<sip:([^@>]+)@", re.M)


CALL_ID = re.compile(r"^Call-ID:\s*(\S+)", re.M)


def message_stamps(
    path: Path, direction: str, method: str, key: re.Pattern[str], cseq: str | None = None
) -> dict[str, float]:
    """First stamp per key (From user or Call-ID) of the requests ``method``
    logged as ``direction`` in a SIPp -trace_msg file."""
    text = path.read_text(errors="replace")
    marks = list(_ENTRY.finditer(text))
    out: dict[str, float] = {}
    for i, m in enumerate(marks):
        if m.group(2) != direction:
            continue
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end() : end]
        if not body.startswith(method + " "):
            continue
        if cseq is not None and f"CSeq: {cseq}" not in body:
            continue
        k = key.search(body)
        if k is None or k.group(1) in out:
            continue
        stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out[k.group(1)] = stamp
    return out


def largest_burst(stamps: list[float], within: float) -> int:
    """The most stamps inside any window of ``within`` seconds (stamps sorted)."""
    best, lo = 0, 0
    for hi, s in enumerate(stamps):
        while s - stamps[lo] > within:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def delays_ms(sent: dict[str, float], received: dict[str, float]) -> list[float]:
    return [(received[k] - t) * 1000 for k, t in sent.items() if k in received]


def summary(delays: list[float]) -> dict[str, Any]:
    return {
        "samples": len(delays),
        "p50_ms": rounded(percentile(delays, 50)),
        "p90_ms": rounded(percentile(delays, 90)),
        "p99_ms": rounded(percentile(delays, 99)),
        "max_ms": rounded(max(delays) if delays else None),
    }


def scrape_histogram(url: str, name: str) -> tuple[list[tuple[float, float]], float] | None:
    """Cumulative (le, count) buckets and the count of a histogram, or None."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    buckets = []
    count = None
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
    if not buckets or count is None:
        return None
    return sorted(buckets), count


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket holding the rank."""
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return lower  # above the last finite bound: all we know
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cum
    return None
