"""Prometheus metrics of the control daemon, served over HTTP on ``[metrics] listen``.

Theory of operation
-------------------
Nothing here runs on the main loop.  The switch already counts what an
operator wants to see, in plain ints and ``Counter`` dicts it updates as it
works (``Switch.counters``/``drops``/``rx_codes``/``tx_codes``/
``tx_methods``/``dispositions``, ``Registrar.refusals``,
``CallManager.counters`` and its ``setup_delay`` buckets, the ``BearerPool``'s
``Bearer`` records, the ``Location`` and ``UserDirectory`` sizes, the DB
thread's backlog).  ``SwitchCollector`` is a custom collector that turns them
into metric families when Prometheus scrapes, so the cost per SIP message is
a dict increment or two, never a prometheus-client object.

The HTTP server (``MetricsServer``: the stdlib WSGI server with
prometheus-client's WSGI app, one daemon thread per request) runs beside the
main loop.  A scrape therefore reads structures the main thread is changing:
it only takes ``len()`` of containers, reads int/float attributes, and copies
dicts and lists in one C-level call (``dict(d)``, ``tuple(d.values())``)
before looping over the copy, which the GIL makes atomic against the main
thread.  Figures from different structures may be a message apart; each one
is consistent.  One section failing (a bug) costs that section in this
scrape, logged once, never the whole scrape.

The registry is this module's own ``CollectorRegistry`` (never the global
one): the switch's families, plus the standard ``process_*`` (CPU, memory,
file descriptors, from /proc at scrape time) and ``python_info``.

Set-up delay is measured by the switch's own clock readings (the time each
batch of input was read): from the caller's authenticated INVITE to the
INVITEs forked to the callee, so it covers routing, the bearer ALLOCATE
round trip and queueing inside control, not time spent in the kernel's
socket buffers.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from softswitch.model.cdr import Disposition
from softswitch.sip.message import KNOWN_METHODS
from softswitch.switch import ALLOWED

__all__ = ["MetricsServer", "SwitchCollector", "exposition", "make_registry"]

log = logging.getLogger("softswitch.daemon.metrics")

#: Switch.counters keys that are not SIP methods although they start with rx_.
_RX_TOTALS = frozenset({"rx_messages", "rx_requests", "rx_responses", "rx_keepalives"})


class SwitchCollector:
    """Reads a running control daemon at scrape time; see the module docstring.

    ``source`` has a ``switch`` attribute (a ``softswitch.switch.Switch``) and
    a ``db`` attribute (a ``DbThread``); either may be missing while the
    daemon starts, and the families that need it are then left out.
    """

    def __init__(self, source: Any) -> None:
        self.source = source
        self._failed: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        sw = getattr(self.source, "switch", None)
        db = getattr(self.source, "db", None)
        sections: list[tuple[str, Callable[[], Iterable[Metric]]]] = []
        if sw is not None:
            sections += [
                ("state", lambda: _state(sw)),
                ("registrations", lambda: _registrations(sw)),
                ("sip", lambda: _sip(sw)),
                ("bearers", lambda: _bearers(sw.bearers)),
                ("guard", lambda: _guard(sw.guard)),
            ]
            if sw.calls is not None:
                sections.append(("calls", lambda: _calls(sw, sw.calls)))
        if db is not None:
            sections.append(("database", lambda: _database(db)))
        for name, section in sections:
            try:
                families = list(section())
            except Exception:
                if name not in self._failed:  # once, not once per scrape
                    self._failed.add(name)
                    log.exception("metrics: the %s section failed and is left out", name)
                continue
            yield from families


# --------------------------------------------------------------------------- sections


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    family = kind(name, doc, labels=[label])
    for key in sorted(values):
        family.add_metric([key], values[key])
    return family


def _state(sw: Any) -> Iterator[Metric]:
    yield _gauge(
        "softswitch_serving",
        "1 while serving (users loaded, not stopping), else 0.",
        1 if sw.loaded and not sw.stopping else 0,
    )
    yield _gauge(
        "softswitch_start_time_seconds", "When the control daemon started (Unix time).", sw.started
    )
    counters = dict(sw.counters)
    yield _counter(
        "softswitch_internal_errors_total",
        "Bugs caught in a handler (each cost one request, logged with a traceback).",
        counters.get("internal_errors", 0),
    )


def _registrations(sw: Any) -> Iterator[Metric]:
    registrar = sw.registrar
    yield _gauge("softswitch_users", "Users in memory (from the database).", len(sw.directory))
    yield _gauge("softswitch_registrations", "Registered contacts (bindings).", len(sw.location))
    yield _gauge(
        "softswitch_registered_aors",
        "Users with at least one registered contact.",
        sw.location.aor_count,
    )
    yield _counter(
        "softswitch_registers_accepted_total",
        "REGISTER requests answered 200.",
        registrar.accepted,
    )
    yield _labelled(
        CounterMetricFamily,
        "softswitch_registers_refused_total",
        "REGISTER requests refused, by reason (a digest challenge counts as one).",
        "reason",
        dict(registrar.refusals),
    )
    yield _counter(
        "softswitch_registrations_expired_total",
        "Bindings removed because they expired.",
        dict(sw.counters).get("bindings_expired", 0),
    )


def _sip(sw: Any) -> Iterator[Metric]:
    counters = dict(sw.counters)
    rx_codes = dict(sw.rx_codes)
    tx_codes = dict(sw.tx_codes)
    tx_methods = dict(sw.tx_methods)
    drops = dict(sw.drops)

    messages = CounterMetricFamily(
        "softswitch_sip_messages",
        "SIP messages received (every datagram or framed TCP message, keep-alives "
        "included) and sent (retransmissions included).",
        labels=["direction"],
    )
    messages.add_metric(["received"], counters.get("rx_messages", 0))
    messages.add_metric(["sent"], counters.get("tx_messages", 0))
    yield messages

    requests = CounterMetricFamily(
        "softswitch_sip_requests",
        "SIP requests by method (methods we do not know: other).",
        labels=["direction", "method"],
    )
    received = {m: 0 for m in ALLOWED}
    for key, n in counters.items():
        if key.startswith("rx_") and key not in _RX_TOTALS:
            method = key[3:]
            if method in KNOWN_METHODS or method == "other":
                received[method] = n
    for method in sorted(received):
        requests.add_metric(["received", method], received[method])
    for method, n in sorted(tx_methods.items()):
        requests.add_metric(["sent", method.decode("ascii", "replace")], n)
    yield requests

    responses = CounterMetricFamily(
        "softswitch_sip_responses", "SIP responses by status code.", labels=["direction", "code"]
    )
    for code, n in sorted(rx_codes.items()):
        responses.add_metric(["received", str(code)], n)
    for raw, n in sorted(tx_codes.items()):
        responses.add_metric(["sent", raw.decode("ascii", "replace")], n)
    yield responses

    yield _counter(
        "softswitch_sip_keepalives_total",
        "CRLF keep-alives received (RFC 5626).",
        counters.get("rx_keepalives", 0),
    )
    yield _counter(
        "softswitch_sip_malformed_answered_total",
        "Malformed requests answered statelessly (400, 505 ...).",
        counters.get("malformed_answered", 0),
    )
    yield _labelled(
        CounterMetricFamily,
        "softswitch_sip_refused",
        "Requests the core refused before any module saw them, by reason.",
        "reason",
        {k[len("refused_") :]: v for k, v in counters.items() if k.startswith("refused_")},
    )
    failures = CounterMetricFamily(
        "softswitch_sip_server_transaction_failures",
        "Server transactions that ended without an ACK or delivery (RFC 3261 timer H/J, "
        "transport errors).",
        labels=["reason"],
    )
    failures.add_metric(["timeout"], counters.get("server_timeouts", 0))
    failures.add_metric(["transport_error"], counters.get("server_transport_errors", 0))
    yield failures
    yield _gauge("softswitch_sip_transactions", "SIP transactions in memory.", len(sw.layer))
    yield _labelled(
        CounterMetricFamily,
        "softswitch_dropped",
        "Datagrams and messages dropped without an answer, by reason (unparsable, "
        "stray responses, STUN, bearer protocol errors, socket errors, TCP limits).",
        "reason",
        drops,
    )
    yield _labelled(
        CounterMetricFamily,
        "softswitch_tls_handshake_failures",
        "TLS connections that never completed their handshake, by reason (OpenSSL's "
        "reason, timeout, closed): counted here, never logged one by one.",
        "reason",
        {k[len("tls_handshake_") :]: v for k, v in drops.items() if k.startswith("tls_handshake_")},
    )


def _guard(guard: Any) -> Iterator[Metric]:
    """softswitch/guard.py: bans and what the rate limit dropped."""
    yield _labelled(
        CounterMetricFamily,
        "softswitch_bans",
        "Source addresses banned, by reason (auth-failures: wrong passwords or unknown users).",
        "reason",
        {"auth-failures": 0, **dict(guard.bans_total)},
    )
    yield _labelled(
        CounterMetricFamily,
        "softswitch_unbans",
        "Bans lifted, by how (expired, by operator, allow-listed, evicted).",
        "how",
        dict(guard.unbans_total),
    )
    yield _gauge("softswitch_bans_active", "Source addresses banned now.", guard.active)
    yield _labelled(
        CounterMetricFamily,
        "softswitch_guard_dropped",
        "SIP messages dropped unparsed, by reason (banned source, over its rate limit).",
        "reason",
        {"banned": 0, "rate_limited": 0, **dict(guard.drops)},
    )
    yield _counter(
        "softswitch_rate_limited_sources",
        "Times a source address started being rate-limited.",
        guard.limited_total,
    )
    yield _counter(
        "softswitch_auth_failures",
        "Authentication failures counted towards a ban (wrong password, unknown user).",
        guard.failures_total,
    )


def _calls(sw: Any, calls: Any) -> Iterator[Metric]:
    states = calls.state_counts()
    yield _gauge(
        "softswitch_calls_active", "Calls in progress (set-up or answered).", sum(states.values())
    )
    yield _labelled(
        GaugeMetricFamily,
        "softswitch_calls_by_state",
        "Calls in progress by state (allocating, calling, connecting, confirmed ...).",
        "state",
        states,
    )
    yield _gauge("softswitch_conference_rooms", "Conference rooms open.", calls.rooms)
    dispositions = {d.value: 0 for d in Disposition}
    dispositions.update(dict(sw.dispositions))
    yield _labelled(
        CounterMetricFamily,
        "softswitch_calls",
        "Call attempts ended, by disposition (one per CDR).",
        "disposition",
        dispositions,
    )
    counters = dict(calls.counters)
    yield _labelled(
        CounterMetricFamily,
        "softswitch_call_refusals",
        "INVITEs refused or calls ended by the switch, by reason (challenge, not_found, "
        "no_bearer ...).",
        "reason",
        {k[len("refused_") :]: v for k, v in counters.items() if k.startswith("refused_")},
    )
    yield _labelled(
        CounterMetricFamily,
        "softswitch_calls_bearer_failover",
        "Live calls whose bearer died or restarted: moved to another bearer (re-INVITEd) "
        "or lost (hung up: not movable, or the move failed).",
        "outcome",
        {k: counters.get(f"bearer_{k}", 0) for k in ("moved", "lost")},
    )
    yield _labelled(
        CounterMetricFamily,
        "softswitch_call_auth_failures",
        "INVITE credentials refused, by reason.",
        "reason",
        {k[len("auth_") :]: v for k, v in counters.items() if k.startswith("auth_")},
    )
    buckets, total = calls.setup_delay.snapshot()
    yield HistogramMetricFamily(
        "softswitch_call_setup_delay_seconds",
        "Delay added by the switch to call set-up: the caller's authenticated INVITE in "
        "to the INVITEs out to the callee's phones (bearer ALLOCATE included).",
        buckets=[(floatToGoString(b), n) for b, n in buckets],
        sum_value=total,
    )


def _bearers(pool: Any) -> Iterator[Metric]:
    bearers = tuple(pool.bearers)
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "up": GaugeMetricFamily(
            "softswitch_bearer_up",
            "1 if the bearer is up (heartbeats answered).",
            labels=["bearer"],
        ),
        "auth": GaugeMetricFamily(
            "softswitch_bearer_auth_failed",
            "1 if the bearer's datagrams fail HMAC (it holds another key).",
            labels=["bearer"],
        ),
        "sessions": GaugeMetricFamily(
            "softswitch_bearer_sessions",
            "Media sessions on the bearer, as control counts them (its last load report "
            "and the requests since).",
            labels=["bearer"],
        ),
        "capacity": GaugeMetricFamily(
            "softswitch_bearer_capacity", "Sessions the bearer says it can hold.", labels=["bearer"]
        ),
        "cpu": GaugeMetricFamily(
            "softswitch_bearer_cpu_ratio",
            "The bearer's CPU load from its last heartbeat (0-1).",
            labels=["bearer"],
        ),
        "pps": GaugeMetricFamily(
            "softswitch_bearer_packets_per_second",
            "RTP packets per second the bearer reported.",
            labels=["bearer"],
        ),
        "since": GaugeMetricFamily(
            "softswitch_bearer_state_since_seconds",
            "When the bearer last went up or down (Unix time).",
            labels=["bearer"],
        ),
        "restarts": CounterMetricFamily(
            "softswitch_bearer_restarts",
            "Bearer restarts seen (a new epoch: its sessions were lost).",
            labels=["bearer"],
        ),
        "timeouts": CounterMetricFamily(
            "softswitch_bearer_request_timeouts",
            "Requests to the bearer never answered.",
            labels=["bearer"],
        ),
        "errors": CounterMetricFamily(
            "softswitch_bearer_error_replies", "Requests the bearer refused.", labels=["bearer"]
        ),
    }
    for b in bearers:
        label = [b.name]
        families["up"].add_metric(label, 1 if b.up else 0)
        families["auth"].add_metric(label, 1 if b.auth_failed else 0)
        families["sessions"].add_metric(label, b.sessions)
        families["capacity"].add_metric(label, b.capacity)
        families["cpu"].add_metric(label, b.cpu / 100.0)
        families["pps"].add_metric(label, b.pps)
        families["since"].add_metric(label, b.since)
        families["restarts"].add_metric(label, b.restarts)
        families["timeouts"].add_metric(label, b.timeouts)
        families["errors"].add_metric(label, b.errors)
    yield from families.values()


def _database(db: Any) -> Iterator[Metric]:
    yield _gauge(
        "softswitch_db_up",
        "1 if the database answered the DB thread's last attempt, else 0.",
        1 if db.healthy else 0,
    )
    yield _gauge(
        "softswitch_db_write_queue",
        "Registration and CDR writes waiting for the database.",
        db.backlog,
    )
    yield _counter(
        "softswitch_db_writes_dropped_total",
        "Writes lost: the queue was full during an outage, or the database refused the row.",
        db.dropped,
    )
    yield _counter(
        "softswitch_db_spool_errors_total",
        "Times the journal of pending writes ([database] spool_dir) could not be written.",
        db.spool_errors,
    )


# --------------------------------------------------------------------------- registry and server


def make_registry(source: Any, *, process: bool = True) -> CollectorRegistry:
    """A registry of our own with the switch's families (and ``process_*``, ``python_info``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwitchCollector(source))  # type: ignore[arg-type]
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


def exposition(source: Any, *, process: bool = False) -> bytes:
    """The text a scrape would get (tests, benchmarks)."""
    return generate_latest(make_registry(source, process=process))


class _Handler(WSGIRequestHandler):
    """No access log: a scrape every few seconds is not news."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper never holds the daemon's exit

    def server_bind(self) -> None:
        """Bind without HTTPServer's ``getfqdn()``: no DNS lookup at start."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class MetricsServer:
    """The HTTP endpoint: ``start`` binds (OSError if it cannot), ``close`` stops."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_MetricsServer", (_Server,), {"address_family": family})
        self._httpd = make_server(
            self.host, self.port, make_wsgi_app(self.registry), server_class, _Handler
        )
        self.port = self._httpd.server_address[1]  # the real one when 0 was asked for
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="softswitch-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()  # waits for serve_forever to return (one poll at most)
        self._httpd.server_close()
        self._httpd = None
