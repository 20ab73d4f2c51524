"""Control benchmark: REGISTERs/s, call attempts/s, set-up delay and RSS of softswitch-control.

Usage: python -m bench.control [--quick] [--users N] [--output PATH]

A real ``softswitch-control`` and two real ``softswitch-bearer`` processes are
started with bench/harness (the harness the integration tests use too, so
the configuration is written the way the tests write it), SIP on
127.0.0.1, bearers on UNIX sockets, SQLite.  With two or more cores the
control daemon (every thread of it) runs alone on core 0; the two bearers
and every SIPp process share core 1.  As root all of them run at nice -20
(still CFS: other processes on a shared machine keep a share).  The switch
keeps its default digest setting (``[sip] digest_algorithms = ["MD5"]``),
which SIPp 3.6.1 needs: it does only MD5 and reads only the first challenge.

The load generator is SIPp (Debian ``sip-tester``) with the scenarios in
bench/sipp/; users and credentials come from ``-inf`` CSV files.  The users
(100,000 by default) are inserted into the database in bulk before the
daemon starts, so it loads them as it would in production.

(a) REGISTER with digest: ``register.xml``, one SIPp call = REGISTER -> 401
    -> REGISTER with credentials -> 200, each call a different user.  The
    rate is stepped up; a step *fits* when every registration succeeded, SIPp
    retransmitted nothing (a retransmission means an answer took > 500 ms or
    was lost), the rate achieved was >= 95 % of the target and the
    authorised REGISTER's response time p99 (SIPp, 1 ms resolution) stayed
    under 100 ms.  The ramp stops at the first step that does not fit, or
    after a step where the control daemon used >= 95 % of its core.  The
    figure is the largest fitting rate; each registration is two
    transactions (the challenge and the authorised REGISTER).  Afterwards the
    users not yet registered are registered too, so (d) sees one binding per
    user.
(b) Call attempts: ``uac_call.xml`` from one SIPp UAC (each call a different
    caller) to one callee, a SIPp UAS (``uas_answer.xml``) registered by
    ``register.xml`` from its own port: INVITE -> 100 -> 407 -> ACK -> INVITE
    with credentials -> 100 -> 180 -> 200 -> ACK -> hold -> BYE -> 200, the
    switch allocating a bearer session for each call (ALLOCATE, UPDATE,
    DELETE; no RTP is sent: this is signalling).  Steps fit as in (a), with
    0 failed calls on both SIPp sides; the response time is the authorised
    INVITE to the 180 (both switch traversals plus the UAS's turn-around).
(c) Set-up delay at 100 calls/s, the switch's share of "A's INVITE in ->
    INVITE out to B", measured two ways:
    * SIPp message logs (``-trace_msg``, microsecond wall-clock stamps from
      both SIPp processes on the same clock): the UAC's "sent" stamp of the
      authorised INVITE to the UAS's "received" stamp of the INVITE the
      switch sent (matched by the caller's user name, unique per call).
      This is the switch's work (digest check, routing, the bearer ALLOCATE
      round trip, building the B-leg INVITE) plus two loopback hops and the
      wake-ups of the switch and of the UAS SIPp.  A baseline run, SIPp UAC
      -> SIPp UAS directly (``direct_uac.xml``/``direct_uas.xml``) at the
      same rate, measures the hops and SIPp's own stamping; "added" is the
      difference of the percentiles.
    * the daemon's own histogram (``softswitch_call_setup_delay_seconds``
      on the Prometheus endpoint, when the daemon has one): the same span
      by the switch's clock, from reading the authorised INVITE to sending
      the INVITEs, at bucket resolution (p50/p99 interpolated inside the
      bucket, as Prometheus' ``histogram_quantile`` does).
(d) RSS of softswitch-control (/proc/PID/status VmRSS, and VmHWM, the peak):
    a daemon with no users at all; the users loaded and no registration;
    every user registered over SIP a moment ago (the DB write-back queue
    drained, but the completed transactions still held for Timer J, 32 s
    on UDP); and after a restart, users and registrations restored from
    the database: what is held, without the registration traffic's
    transient state.  That one is the figure.  Last, a leak check: rounds
    of calls at 100/s, each followed by Timer J's wait; the growth from one
    round to the next, per call, is what calls leave behind.

Per step: target and achieved rate, successes/failures/retransmissions,
response time p50/p99, CPU % of softswitch-control (all threads, /proc), of
the SIPp processes (rusage) and of the bearers, the daemon's counters, and
its garbage-collector pauses: unless --no-gc-trace, the daemon starts with
bench/gctrace/ first on its PYTHONPATH, a sitecustomize that times each
collection through ``gc.callbacks`` (about a microsecond each) and logs the
ones over 1 ms or that found cyclic garbage; a step reports those over
10 ms (count, how many were full gen2 collections, the longest, the total)
and the objects all collections found (``cyclic_garbage_objects``): the
request and call paths should make no reference cycles at all, which the
daemon's frozen heap could never reclaim (softswitch/daemonkit/gctune.py).
Results go to bench/results/control.json with the load average and CPU
pressure before and after (``machine_busy`` when the load exceeded the two
cores we use).
"""

from bench.control.run import main

__all__ = ["main"]
