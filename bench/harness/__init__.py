"""The harness that starts real daemons and drives them, used by the
benchmarks and by tests/.

``bearer``: a real softswitch-bearer in a temporary directory, a synchronous
control-protocol client, RTP phones.  ``control``: a real softswitch-control
beside real bearers (configuration, users, admin socket, CDRs).  ``sip``:
phones on the project's own SIP stack and the call set-up the integration
tests share.  ``sipp``: SIPp as a bounded tool, in a network namespace or
not, with its statistics, logs, response times and CPU time.

It lives under bench/ because the benchmarks are its first user and the
layout has no other place for code that is neither production nor a test:
tests/ import it from here, and bench/ imports nothing from tests/.
"""
