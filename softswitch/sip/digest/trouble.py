"""Why a phone's digest authentication cannot work, said once in the log.

A phone that cannot authenticate usually just shows "registration failed".
The switch knows why, so it says so, in words a phone admin can act on:

- the phone answered with an algorithm this switch does not offer, or one
  the user has no stored hash for;
- it answered for another realm;
- it asked for a qop or for ``userhash`` that this switch does not support;
- it sent credentials that cannot be parsed;
- it was challenged again (``challenges`` times within ``window`` seconds,
  same source and AOR) and never answered with credentials at all:
  typically a phone that knows none of the algorithms offered, such as
  baresip 1.0 (libre) facing a SHA-256 challenge. A working phone answers
  its first challenge, which clears the count; baresip 1.0 gives up and
  tries again 30-60 s later (measured), so the default (twice in five
  minutes) names it within about a minute.

A wrong password or an unknown user is not reported here: both look alike
on the wire (no username probing), and counting them per source is the
brute-force defence's job.

Every line names the source address, the user when known and the reason.
Lines are rate-limited so a scanner cannot flood the log: at most one per
source and reason every ``quiet`` seconds, and at most ``burst`` lines a
minute over all sources; what is held back is counted and the count
is appended to the next line that is written. The tables are bounded
(``max_entries`` each, oldest first out). Sans-I/O: ``now`` is a parameter.

The answers on the wire are not this module's business and stay as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from softswitch.sip.digest.algorithms import _algorithm
from softswitch.sip.digest.headers import parse_credentials
from softswitch.sip.digest.server import AuthFailure, AuthResult
from softswitch.sip.errors import SipError

log = logging.getLogger("softswitch.sip.digest")

#: Digest failures that cannot come right by retrying with the same settings.
_HOPELESS = frozenset(
    {
        AuthFailure.UNSUPPORTED_ALGORITHM,
        AuthFailure.WRONG_REALM,
        AuthFailure.USERHASH_UNSUPPORTED,
        AuthFailure.MALFORMED,
    }
)

_MAX_SHOWN = 40  # characters of a phone-supplied value quoted in a log line


def _shown(text: str | None) -> str:
    """A phone-supplied value, quoted, printable and short (it goes into a log)."""
    if text is None:
        return '""'
    clean = "".join(c if c.isprintable() else "?" for c in text[:_MAX_SHOWN])
    return f'"{clean}{"..." if len(text) > _MAX_SHOWN else ""}"'


class DigestTrouble:
    """Log lines for digest attempts that cannot succeed; owned by ``DigestServer``."""

    def __init__(
        self,
        offered: Sequence[str],
        realm: str,
        *,
        challenges: int = 2,
        window: float = 300.0,
        quiet: float = 300.0,
        burst: int = 20,
        max_entries: int = 10_000,
        logger: logging.Logger = log,
    ) -> None:
        self.offered = tuple(offered)
        self.realm = realm
        self.challenges = challenges
        self.window = window
        self.quiet = quiet
        self.burst = burst
        self.max_entries = max_entries
        self.log = logger
        # (source, aor) -> (first unanswered challenge, count) in the window.
        self._unanswered: dict[tuple[str, str], tuple[float, int]] = {}
        # (source, reason) -> when a line last went out; insertion order = time order.
        self._said: dict[tuple[str, str], float] = {}
        self._burst_start = float("-inf")
        self._burst_lines = 0
        self.suppressed = 0  # lines held back since the last one written

    # ------------------------------------------------------------------ events

    def challenged(self, source: str, aor: str, now: float) -> None:
        """A request without credentials from ``source`` for ``aor`` was challenged."""
        key = (source, aor)
        table = self._unanswered
        first, count = table.pop(key, (now, 0))
        if now - first > self.window:
            first, count = now, 0
        count += 1
        table[key] = (first, count)  # re-inserted: the table stays in time order
        if len(table) > self.max_entries:
            del table[next(iter(table))]
        if count >= self.challenges:
            user = aor.partition("@")[0] or None
            offered = ", ".join(self.offered)
            self._say(
                source,
                user,
                "no-credentials",
                f"was challenged {count} times within {self.window:g} s and never answered "
                f"with credentials: it may support none of the offered algorithms: {offered}",
                now,
            )

    def answered(self, source: str, aor: str) -> None:
        """Credentials came from ``source`` for ``aor``: it can read our challenges."""
        if self._unanswered:
            self._unanswered.pop((source, aor), None)

    def refused(self, source: str, credentials: str, result: AuthResult, now: float) -> None:
        """``verify`` refused ``credentials``; log why if retrying cannot help."""
        reason = result.reason
        if reason not in _HOPELESS:
            return
        try:
            c = parse_credentials(credentials)
        except SipError:
            c = None
        user = result.username
        offered = ", ".join(self.offered)
        if c is None:
            key, why = "malformed", "sent digest credentials that cannot be parsed"
        elif reason is AuthFailure.USERHASH_UNSUPPORTED:
            key = "userhash"
            why = (
                "asked for userhash=true (RFC 7616 username hashing), which this switch "
                "does not support: turn username hashing off on the phone"
            )
        elif reason is AuthFailure.WRONG_REALM:
            key = "realm"
            why = (
                f"answered for realm {_shown(c.realm)}, but this switch's realm is "
                f'"{self.realm}": set the phone\'s domain / realm to that'
            )
        elif reason is AuthFailure.UNSUPPORTED_ALGORITHM:
            key = "algorithm"
            try:
                base = _algorithm(c.algorithm)[1]
            except ValueError:
                base = None
            name = result.algorithm or _shown(c.algorithm)
            if base in self.offered:  # offered, but the user has no hash for it
                why = (
                    f"answered with algorithm {name}, but the user has no {base} password "
                    "hash stored: set the password again (softswitchctl user passwd)"
                )
            else:
                why = (
                    f"answered with algorithm {name}, which is not offered (offered: "
                    f"{offered}): set [sip] digest_algorithms or the phone's algorithm"
                )
        else:  # MALFORMED but parseable: the qop is what verify refused
            key = "qop"
            qop = "none (RFC 2069)" if c.qop is None else f"qop={_shown(c.qop)}"
            why = f"answered with {qop}; this switch supports qop=auth and qop=auth-int"
        self._say(source, user, key, why, now)

    # ------------------------------------------------------------------ output

    def _say(self, source: str, user: str | None, reason: str, why: str, now: float) -> None:
        said = self._said
        key = (source, reason)
        last = said.get(key)
        if last is not None and now - last < self.quiet:
            return
        if now - self._burst_start >= 60.0:
            self._burst_start, self._burst_lines = now, 0
        if self._burst_lines >= self.burst:
            self.suppressed += 1
            return
        self._burst_lines += 1
        said.pop(key, None)
        said[key] = now
        while len(said) > self.max_entries:
            del said[next(iter(said))]
        while now - next(iter(said.values())) >= self.quiet:  # ends: ``key`` is now
            del said[next(iter(said))]
        who = f"{source} (user {_shown(user)})" if user else source
        held, self.suppressed = self.suppressed, 0
        more = f" [{held} similar lines suppressed]" if held else ""
        self.log.warning("digest auth from %s cannot succeed: the phone %s%s", who, why, more)
