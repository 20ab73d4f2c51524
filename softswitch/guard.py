"""Brute-force and flood defence per source address, sans-I/O.

Theory of operation
-------------------
``Guard`` is consulted by ``Switch.receive_sip`` for every datagram or framed
TCP message, *before* it is parsed (``admit``), and told the outcome of every
digest check (``auth_result``).  It has no socket and no clock: the caller
passes ``now`` (wall-clock seconds, as everywhere in the switch).  What the
kernel should also drop (the daemon's nftables set) comes out of
``kernel_changes()``; the daemon edge applies it.

**Rate limit** (like Kamailio's pike, but it never bans): one token bucket
per source host, ``rate`` tokens a second up to ``burst``.  Each message
costs a token; without one it is dropped and counted.  A log line says when
a source starts being limited and one when it stops (``QUIET`` seconds
without a drop), never one per packet.  Rate alone never bans: an office of
phones behind one NAT address that reboots at once looks like a flood for a
few seconds, and a ban would cut the whole office off for 15 minutes;
dropping the excess is enough to protect everyone else, and SIP's
retransmissions recover what was dropped.  The default, 100 messages/s with
a burst of 400, is sized for an office of a few hundred phones behind one
NAT address: 200 of them re-registering at the same instant after a power
cut (two messages each, with the challenge; the rest get through on SIP's
retransmissions within seconds), ~50 call set-ups at once or ~12 new calls
a second sustained (~8 messages each with the digest round and the BYE),
and keep-alives every 30 s from 400 phones use 13 of the 100.  A single
source flooding at 5,000/s gets 2% of that through.

**Authentication failures.**  A failure is a verdict on a guessed secret;
anything else is not one (``COUNTED``, with the reason for each
``AuthFailure`` beside it).  Failures are kept per source host with the
username they named; ``max_failures`` of them within ``window`` seconds ban
the source for ``ban_time``, doubled on each repeat ban of the same source
(up to ``ban_time_max``); the repeat count is forgotten after the source has
been free of bans for ``ban_time_max``.  A success by user U forgives that
source's failures for U only: a phone that mistypes its password and then
gets it right is not banned, while an attacker who owns one account cannot
wash away the failures of its guesses at the others by logging in between.

**IPv6 sources are judged per /64**, rate buckets, failures, bans and the
allow-list alike: a host is given a whole /64 (RFC 6177), so a guesser
could otherwise take a new address for every guess, and a /64 is one site,
as an IPv4 address behind a NAT is.  An allow-list entry narrower than /64
exempts its /64.

**Allow-list**: CIDRs never banned and never rate-limited.  Empty by
default: the defence is on wherever the switch runs (``make run`` on
loopback included); load tests from one address list it there.

**Memory is bounded**: at most ``max_sources`` rate buckets, failure records
and bans each; the oldest entry goes first when a table is full, so a scan
from many addresses costs a constant amount of memory.  Full buckets (a
source idle long enough to have refilled) are swept every ``SWEEP`` seconds.

Banned sources are dropped silently: an answer would tell the attacker
that it was caught, and cost us a send.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import logging
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from softswitch.sip.digest import AuthFailure

__all__ = ["COUNTED", "Ban", "Guard", "parse_networks", "source_key"]

log = logging.getLogger("softswitch.guard")

#: Which digest failures count towards a ban, and why.
COUNTED: dict[AuthFailure, bool] = {
    # A password was tested and was wrong: the guess itself.
    AuthFailure.BAD_RESPONSE: True,
    # A username was tried that does not exist.  Answered exactly like a wrong
    # password (no enumeration), and counted alike: a scanner guessing
    # usernames is as much an attack, and counting it differently would let
    # the ban timing tell the two apart.
    AuthFailure.UNKNOWN_USER: True,
    # The password was right, only the nonce was old (RFC 7616 §3.3).
    AuthFailure.STALE_NONCE: False,
    # A nonce that is not ours: every phone after a restart of the switch
    # (a new secret), and nothing is tested before it is refused.
    AuthFailure.BAD_NONCE: False,
    # Unparsable, a realm, algorithm, uri or userhash we refuse: refused
    # before any password is looked at, so no guess is tested, and a
    # misconfigured phone that retries must not get its whole office banned.
    AuthFailure.MALFORMED: False,
    AuthFailure.WRONG_REALM: False,
    AuthFailure.UNSUPPORTED_ALGORITHM: False,
    AuthFailure.URI_MISMATCH: False,
    AuthFailure.USERHASH_UNSUPPORTED: False,
    # The password was right; the nonce count was not higher (a phone's
    # retransmission, or a replayed capture that gains nothing).
    AuthFailure.REPLAY: False,
}

#: Seconds without a drop before a rate-limited source is said to have stopped.
QUIET = 10.0
#: Seconds between sweeps of idle rate buckets.
SWEEP = 30.0


@functools.lru_cache(maxsize=4096)
def _v6_key(host: str) -> str:
    try:
        ip = ipaddress.IPv6Address(host.strip("[]").partition("%")[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def source_key(host: str) -> str:
    """What a source is judged as: an IPv4 address itself, an IPv6 one's /64
    ("2001:db8:1:2::/64"); a cached lookup for IPv6, nothing for IPv4."""
    return _v6_key(host) if ":" in host else host


def parse_networks(
    items: Iterable[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the bad one."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR: {item!r}") from None
    return tuple(out)


@dataclass(slots=True)
class Ban:
    """One banned source: what ``softswitchctl bans`` shows."""

    address: str
    reason: str
    since: float
    until: float
    failures: int
    strike: int  # 1 for the first ban, 2 for the next (twice as long) ...

    def row(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "reason": self.reason,
            "since": self.since,
            "until": self.until,
            "failures": self.failures,
            "ban": self.strike,
        }


class _Bucket:
    """A source's token bucket; ``exempt`` caches the allow-list verdict."""

    __slots__ = ("dropped", "exempt", "limited", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float, exempt: bool) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.exempt = exempt
        self.limited: float | None = None  # time of the last drop while limited
        self.dropped = 0


class _Record:
    """A source's recent failures and its ban history."""

    __slots__ = ("failures", "last_ban_end", "strikes")

    def __init__(self, max_failures: int) -> None:
        self.failures: deque[tuple[float, str]] = deque(maxlen=max_failures)
        self.strikes = 0
        self.last_ban_end = 0.0


class Guard:
    """Per-source rate limit and authentication-failure bans; see the module docstring."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        failure_window: float = 60.0,
        ban_time: float = 900.0,
        ban_time_max: float = 86400.0,
        allow: Iterable[str] = (),
        rate_limit: float = 100.0,
        rate_burst: float = 400.0,
        max_sources: int = 65536,
    ) -> None:
        self.max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}
        self._records: dict[str, _Record] = {}
        self._bans: dict[str, Ban] = {}
        self._expiries: list[tuple[float, str]] = []  # heap, stale entries skipped
        self._next_sweep: float | None = None
        #: Messages dropped, by reason ("banned", "rate_limited").
        self.drops: Counter[str] = Counter()
        #: Bans made, by reason; bans lifted, by how.
        self.bans_total: Counter[str] = Counter()
        self.unbans_total: Counter[str] = Counter()
        #: Sources that started being rate-limited.
        self.limited_total = 0
        #: Authentication failures counted towards a ban.
        self.failures_total = 0
        #: Whether the daemon applies kernel_changes() (nftables); off: none kept.
        self.kernel = False
        self._changes: list[tuple[str, str, float]] = []
        self.allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self.rate = self.burst = -1.0  # set by configure
        self.configure(
            max_failures=max_failures,
            failure_window=failure_window,
            ban_time=ban_time,
            ban_time_max=ban_time_max,
            allow=allow,
            rate_limit=rate_limit,
            rate_burst=rate_burst,
        )

    @classmethod
    def from_config(cls, security: Any) -> Guard:
        """From softswitch.conf's [security] section."""
        guard = cls()
        guard.reconfigure(security)
        return guard

    def reconfigure(self, security: Any) -> None:
        """Apply a (re-read) [security] section; bans and counts are kept."""
        self.configure(
            max_failures=security.max_auth_failures,
            failure_window=security.failure_window,
            ban_time=security.ban_time,
            ban_time_max=security.ban_time_max,
            allow=security.allow,
            rate_limit=security.rate_limit,
            rate_burst=security.rate_burst,
        )

    def configure(
        self,
        *,
        max_failures: int,
        failure_window: float,
        ban_time: float,
        ban_time_max: float,
        allow: Iterable[str],
        rate_limit: float,
        rate_burst: float,
    ) -> None:
        if max_failures < 1 or failure_window <= 0 or ban_time <= 0:
            raise ValueError("need max_failures >= 1, failure_window > 0 and ban_time > 0")
        self.max_failures = max_failures
        self.window = float(failure_window)
        self.ban_time = float(ban_time)
        self.ban_time_max = max(float(ban_time_max), self.ban_time)
        new = (parse_networks(allow), float(rate_limit), max(float(rate_burst), 1.0))
        if new != (self.allow, self.rate, self.burst):
            # Verdicts cached under the old allow-list and bounds are void.
            self._buckets.clear()
        self.allow, self.rate, self.burst = new  # rate 0: no rate limit
        for record in self._records.values():
            old = list(record.failures)
            record.failures = deque(old[-max_failures:], maxlen=max_failures)
        for address in [a for a in self._bans if self.allowed(address=a)]:
            self._lift(address, "allow-listed")

    # ------------------------------------------------------------------ the hot path

    def admit(self, host: str, now: float) -> bool:
        """Whether one message from ``host`` may be parsed: a dict lookup and
        some arithmetic (see the module docstring)."""
        if ":" in host:
            host = _v6_key(host)
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._new_bucket(host, now)
        if bucket.exempt:
            return True
        if self._bans:
            ban = self._bans.get(host)
            if ban is not None and now < ban.until:
                self.drops["banned"] += 1
                return False
        rate = self.rate
        if not rate:
            return True
        elapsed = now - bucket.stamp
        if elapsed > 0:
            tokens = bucket.tokens + elapsed * rate
            bucket.tokens = tokens if tokens < self.burst else self.burst
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.drops["rate_limited"] += 1
        bucket.dropped += 1
        if bucket.limited is None:
            self.limited_total += 1
            log.warning(
                "rate-limiting %s: over %g messages/s (burst %g); excess dropped",
                host,
                rate,
                self.burst,
            )
            self._arm_sweep(now + QUIET)
        bucket.limited = now
        return False

    def _new_bucket(self, host: str, now: float) -> _Bucket:
        buckets = self._buckets
        if len(buckets) >= self.max_sources:
            # The oldest goes, in O(1): a sweep here would cost the whole table
            # per datagram of a flood from spoofed sources.  Idle buckets are
            # swept on the timer.
            del buckets[next(iter(buckets))]
        bucket = _Bucket(self.burst, now, self.allowed(address=host))
        buckets[host] = bucket
        self._arm_sweep(now + SWEEP)
        return bucket

    def allowed(self, *, address: str) -> bool:
        """Whether ``address`` (or the /64 it is judged by) is on the
        allow-list: never banned, never limited."""
        if not self.allow:
            return False
        try:
            net = ipaddress.ip_network(source_key(address.strip("[]")), strict=False)
        except ValueError:
            return False
        return any(net.version == a.version and net.overlaps(a) for a in self.allow)

    def banned(self, host: str, now: float) -> bool:
        """Whether ``host`` is banned now (the daemon refuses its TCP connections)."""
        ban = self._bans.get(source_key(host))
        return ban is not None and now < ban.until

    # ------------------------------------------------------------------ authentication

    def auth_result(
        self, host: str, username: str | None, failure: AuthFailure | None, now: float
    ) -> None:
        """One digest check from ``host``: ``failure`` None for a success."""
        host = source_key(host)
        if failure is None:
            record = self._records.get(host)
            if record is not None and record.failures:
                kept = [f for f in record.failures if f[1] != username]
                record.failures = deque(kept, maxlen=self.max_failures)
            return
        if not COUNTED.get(failure, False) or self.allowed(address=host):
            return
        if self.banned(host, now):
            return  # in flight when the ban began
        self.failures_total += 1
        records = self._records
        record = records.pop(host, None)  # re-inserted last: the table is LRU
        if record is None:
            if len(records) >= self.max_sources:
                del records[next(iter(records))]
            record = _Record(self.max_failures)
        records[host] = record
        if record.strikes and now - record.last_ban_end > self.ban_time_max:
            record.strikes = 0  # quiet long enough: the doubling starts over
        failures = record.failures
        failures.append((now, username or ""))
        if len(failures) >= self.max_failures and now - failures[0][0] <= self.window:
            self._ban(host, record, now)

    def _ban(self, host: str, record: _Record, now: float) -> None:
        duration = min(self.ban_time * 2**record.strikes, self.ban_time_max)
        record.strikes += 1
        count = len(record.failures)
        record.failures.clear()
        record.last_ban_end = now + duration
        bans = self._bans
        bans.pop(host, None)  # an expired one the timer has not lifted yet
        if len(bans) >= self.max_sources:
            self._lift(next(iter(bans)), "evicted")  # the oldest (insertion order)
        ban = Ban(host, "auth-failures", now, now + duration, count, record.strikes)
        bans[host] = ban
        expiries = self._expiries
        if len(expiries) > 2 * len(bans) + 1024:  # lifted and evicted bans pile up
            expiries[:] = [(b.until, a) for a, b in bans.items()]
            heapq.heapify(expiries)
        heapq.heappush(expiries, (ban.until, host))
        self.bans_total[ban.reason] += 1
        if self.kernel:
            self._changes.append(("add", host, duration))
        log.warning(
            "banned %s for %d s: %d authentication failures within %g s (ban %d)",
            host,
            duration,
            count,
            self.window,
            record.strikes,
        )

    # ------------------------------------------------------------------ admin

    def bans(self, now: float) -> list[Ban]:
        """Bans in force, oldest first."""
        bans = list(self._bans.values())  # one C-level copy: the metrics thread reads too
        return sorted((b for b in bans if now < b.until), key=lambda b: b.since)

    def unban(self, address: str, now: float) -> bool:
        """``softswitchctl bans del``: lift a ban (the repeat count is kept);
        False when ``address`` was not banned.  ValueError for a bad address.
        For IPv6, any address in the banned /64, or the /64 as listed."""
        text = address.strip().strip("[]")
        net = ipaddress.ip_network(text, strict=False)
        key = source_key(str(net.network_address)) if net.version == 6 else str(net)
        if net.version == 4:
            if net.prefixlen != 32:
                raise ValueError(f"not an address: {address!r}")
            key = str(net.network_address)
        if not self.banned(key, now):
            return False
        self._lift(key, "by operator")
        return True

    def _lift(self, address: str, how: str) -> None:
        ban = self._bans.pop(address, None)
        if ban is None:
            return
        record = self._records.get(address)
        if record is not None:
            record.last_ban_end = min(record.last_ban_end, ban.until)
        self.unbans_total[how] += 1
        if self.kernel:
            self._changes.append(("del", address, 0.0))
        # Evictions come in floods (a scan from many addresses): counted, not logged.
        (log.debug if how == "evicted" else log.warning)(
            "unbanned %s (%s) after %d failures", address, how, ban.failures
        )

    @property
    def kernel_pending(self) -> bool:
        """Whether kernel_changes() has anything (a cheap check per flush)."""
        return bool(self._changes)

    def kernel_changes(self) -> list[tuple[str, str, float]]:
        """("add", address, seconds) and ("del", address, 0) since the last call,
        for the daemon's nftables set (expiry is the kernel's own timeout)."""
        out, self._changes = self._changes, []
        return out

    @property
    def tracked(self) -> int:
        """Entries in the three tables (each bounded by max_sources)."""
        return len(self._buckets) + len(self._records) + len(self._bans)

    @property
    def active(self) -> int:
        """Bans held (expired ones leave at their timer, so this is current)."""
        return len(self._bans)

    @property
    def limited_now(self) -> int:
        return sum(1 for b in self._buckets.values() if b.limited is not None)

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """Next ban expiry or sweep; None when there is nothing to do."""
        deadline = self._next_sweep
        if self._expiries:
            first = self._expiries[0][0]
            if deadline is None or first < deadline:
                deadline = first
        return deadline

    def handle_timer(self, now: float) -> None:
        """Lift expired bans (with their log line), say which sources stopped
        being limited, forget idle buckets."""
        expiries, bans = self._expiries, self._bans
        while expiries and expiries[0][0] <= now:
            until, host = heapq.heappop(expiries)
            ban = bans.get(host)
            if ban is not None and ban.until == until:
                del bans[host]
                self.unbans_total["expired"] += 1
                log.warning(
                    "unbanned %s: ban of %d s over (%d failures)",
                    host,
                    ban.until - ban.since,
                    ban.failures,
                )
        if self._next_sweep is not None and now >= self._next_sweep:
            self._next_sweep = None
            self._sweep(now)

    def _arm_sweep(self, at: float) -> None:
        if self._next_sweep is None or at < self._next_sweep:
            self._next_sweep = at

    def _sweep(self, now: float) -> None:
        """Report sources no longer limited; drop buckets that have refilled
        (forgetting one loses nothing: a new bucket starts full)."""
        full_after = self.burst / self.rate if self.rate else 0.0
        forget = []
        busy = False
        for host, b in self._buckets.items():
            if b.limited is not None:
                if now - b.limited >= QUIET:
                    log.warning("%s no longer rate-limited: %d messages dropped", host, b.dropped)
                    b.limited = None
                    b.dropped = 0
                else:
                    busy = True
                    continue
            if now - b.stamp >= full_after:
                forget.append(host)
        for host in forget:
            del self._buckets[host]
        if busy:
            self._arm_sweep(now + QUIET / 2)
        elif self._buckets:
            self._arm_sweep(now + SWEEP)
