"""softswitch-control: the asyncio edge around the sans-I/O ``Switch``.

Theory of operation
-------------------
Everything that decides lives in ``softswitch.switch.Switch``; this module only
moves bytes and time in and out of it (DESIGN.md principles 3 and 5):

* SIP over UDP and TCP on every ``[sip] listen`` address, and the bearer
  control socket (UNIX datagram at ``[bearers] local``, or UDP with every
  datagram HMAC-tagged under ``[bearers] key_file``; without a readable key
  the daemon refuses to start): softswitch/daemon/transports.py.
* SIP over TLS on ``[sip] tls_port`` when ``[sip] tls_certificate`` is set
  (softswitch/daemon/tls.py): the certificate and key are loaded before the
  loop starts, so a bad one is a one-line error (exit 2); each reload loads
  them again into a new context for new connections (established ones and
  their calls stay), and one that cannot be loaded is logged while the
  running one stays.
* The DB thread (softswitch/db/thread.py): results come back through
  ``loop.call_soon_threadsafe``; nothing is served before its ``Loaded``.
* The admin socket (softswitch/daemon/admin.py) for softswitchctl.
* Bans (softswitch/guard.py decides): with ``[security] nftables`` on or
  permitted, mirrored into the kernel (softswitch/daemon/nft.py) from one
  worker thread; TCP connections from a banned address are closed at once.
* The Prometheus endpoint (softswitch/daemon/metrics.py) on ``[metrics] listen``:
  its own HTTP thread, which reads the Switch's counters at scrape time;
  bound in ``main`` before the loop starts, so a taken port is a one-line
  error (exit 2).  It stays where it is on SIGHUP (the log says a changed
  ``listen`` needs a restart).
* Optional packages (uvloop, aiortc for Opus) are found at start and
  said in one log line, as ``softswitchctl status`` reports them; a missing
  one is never an ImportError.
* One timer handle, re-armed from ``Switch.get_timer()`` after every input.
  Outputs are flushed once per loop iteration however many datagrams came in.
* systemd: READY=1 once listening with users loaded, WATCHDOG=1 from the
  loop, STATUS= with registrations and calls.  SIGTERM/SIGINT stop
  gracefully (calls hung up, in-flight transactions given a few seconds,
  queued registrations and CDRs flushed by the DB thread, exit 0); SIGHUP
  reloads the configuration and reopens the log file.

Exit codes: 0 after a clean stop, 2 for bad usage or configuration (one line
on stderr, never a traceback; a metrics address that cannot be bound is one),
1 for any other failure to start or run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import queue
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from softswitch.daemon.admin import AdminError, AdminServer
from softswitch.daemon.metrics import MetricsServer, make_registry
from softswitch.daemon.nft import NftBans, NftError
from softswitch.daemon.settings import load_control_config
from softswitch.daemon.tls import TlsError, key_mode_warning, server_context
from softswitch.daemon.transports import BearerLink, SipTransports
from softswitch.daemonkit.config import CONFIG_DIR_ENV, ConfigError, resolve_config_dir
from softswitch.daemonkit.logsetup import LogSetup
from softswitch.daemonkit.sdnotify import Notifier
from softswitch.daemonkit.startup import StartupError
from softswitch.db.messages import (
    DbFatal,
    DeleteBinding,
    Loaded,
    SaveBinding,
    UpdateUser,
    WriteCdr,
)
from softswitch.db.thread import DbThread
from softswitch.protocol import KeyFileError, load_key
from softswitch.switch import Switch

__all__ = ["ControlDaemon", "StartupError", "main"]

log = logging.getLogger("softswitch.daemon.main")

#: Seconds a graceful stop waits for in-flight transactions.
STOP_GRACE = 5.0
#: Seconds the DB thread gets to write what is queued at stop.
DB_STOP_TIMEOUT = 10.0
#: Timer wake-ups are at least this far apart, so thousands of transaction
#: timers expiring a few microseconds apart cost a few wake-ups, not thousands
#: (Linux "timer slack"; every SIP and bearer timer tolerates it).
TIMER_SLACK = 0.002
#: sys.setswitchinterval for the daemon (see main()).
SWITCH_INTERVAL = 0.001
#: Seconds between STATUS= updates and idle-connection sweeps.
HOUSEKEEPING = 5.0


class ControlDaemon:
    """One control daemon process: sockets, threads and the Switch."""

    def __init__(
        self,
        cfg: SimpleNamespace,
        config_path: Path,
        *,
        required: bool,
        key: bytes | None,
        logs: LogSetup | None = None,
        notifier: Notifier | None = None,
        features: dict[str, bool] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.tls_context = tls_context
        self.config_path = config_path
        self.required = required
        self.key = key
        self.logs = logs
        self.notifier = notifier or Notifier()
        self.features = features or {}
        self.exit_code = 0
        self.switch: Switch
        self.db: DbThread
        self.loop: asyncio.AbstractEventLoop
        self._stop = asyncio.Event()
        self._loaded = asyncio.Event()
        self._sip: SipTransports | None = None
        self._bearers: BearerLink | None = None
        self._admin: AdminServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._last_fire = 0.0
        self._flush_pending = False
        self._nft: NftBans | None = None
        self._nft_worker: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ start

    async def run(self) -> int:
        """Start everything, serve until stopped, stop cleanly; the exit code."""
        self.loop = asyncio.get_running_loop()
        cfg = self.cfg
        now = time.time()
        self.switch = Switch(
            cfg,
            now,
            epoch=time.time_ns(),
            bearer_key=self.key,
            bearer_endpoints=_resolve_endpoints(cfg.bearers.endpoints),
            features=self.features,
        )
        # Bound once the users are loaded; until then SIP datagrams to send
        # count as "no_udp_socket_for_family" drops, as they always have.
        self._sip = SipTransports(self.loop, self.switch.receive_sip, self._kick, self.switch.drops)
        guard = self.switch.guard
        self._sip.refuse = lambda host: guard.banned(host, time.time())
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.reload),
        ):
            self.loop.add_signal_handler(sig, handler)
        try:
            self._open_bearer_socket()
            self._open_nftables()
            self._start_db()
            self._admin = AdminServer(cfg.admin.socket, self._admin_handlers())
            try:
                await self._admin.start()
            except (AdminError, OSError) as exc:
                raise StartupError(f"admin socket {cfg.admin.socket}: {exc}") from None
            self._rearm()
            log.info("waiting for the database to load users")
            await _first(self._loaded.wait(), self._stop.wait())
            if self._loaded.is_set() and not self._stop.is_set():
                from softswitch.daemonkit import gctune

                gctune.start(self.loop)  # the users are loaded: freeze them
                await self._open_sip()
                self._serving()
                self._housekeeping()
                await self._stop.wait()
        finally:
            await self._shutdown()
        return self.exit_code

    def _open_nftables(self) -> None:
        """The kernel's copy of the bans ([security] nftables); see softswitch/daemon/nft.py."""
        mode = self.cfg.security.nftables
        if mode == "off":
            return
        if mode == "auto" and "INVOCATION_ID" not in os.environ:
            # "auto" means the appliance: started by systemd (which sets
            # INVOCATION_ID for every service), never a checkout or a test.
            log.info("nftables: not started by systemd, banned addresses are dropped in-process")
            return
        sip = self.cfg.sip
        ports = [sip.port] + [p for p in [getattr(sip, "tls_port", None)] if p]
        nft = NftBans(ports)
        try:
            nft.open()
        except NftError as exc:
            if mode == "on":
                raise StartupError(f'[security] nftables = "on": {exc}') from None
            log.info("nftables unavailable (%s): banned addresses are dropped in-process", exc)
            return
        self._nft = nft
        self._nft_worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nft")
        self.switch.guard.kernel = True
        log.info("bans also go into nftables table inet softswitch (ports %s)", nft.ports)

    def _start_db(self) -> None:
        url = self.cfg.database.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            directory = Path(url[len("sqlite:///") :]).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"database directory {directory}: {exc.strerror}") from None
        self.db = DbThread(
            url,
            lambda: self.loop.call_soon_threadsafe(self._drain_db),
            sync_interval=self.cfg.database.sync_interval,
            write_queue_max=self.cfg.database.write_queue_max,
            spool_dir=self.cfg.database.spool_dir,
        )
        self.db.start()

    def _open_bearer_socket(self) -> None:
        self._bearers = BearerLink(
            self.loop,
            self.cfg.bearers.local,
            self.switch.receive_bearer,
            self._kick,
            self.switch.drops,
        )
        self._bearers.open()

    async def _open_sip(self) -> None:
        sip = self.cfg.sip
        assert self._sip is not None
        await self._sip.open(sip.listen, sip.port, sip.transports)
        if self.tls_context is not None:
            await self._sip.open_tls(sip.listen, sip.tls_port, self.tls_context)

    def _serving(self) -> None:
        sw = self.switch
        where = ", ".join(la.host_port for la in sw.locals)
        transports = list(self.cfg.sip.transports)
        if self.tls_context is not None:
            transports.append(f"tls on port {self.cfg.sip.tls_port}")
        log.info(
            "serving SIP (%s) on %s for domain %s: %d users, %d registrations, %d bearers",
            "/".join(transports),
            where,
            sw.domain,
            len(sw.directory),
            len(sw.location),
            len(sw.bearers),
        )
        self.notifier.ready(self._status_line())

    # ------------------------------------------------------------------ inputs

    def _drain_db(self) -> None:
        now = time.time()
        for _ in range(10_000):  # bounded; the thread notifies again for more
            try:
                result = self.db.results.get_nowait()
            except queue.Empty:
                break
            self.switch.apply_db_result(result, now)
            if type(result) is Loaded:
                self._loaded.set()
            elif type(result) is DbFatal:
                self.exit_code = 1
                self.request_stop()
        self._kick()

    def _on_timer(self) -> None:
        self._timer = None
        now = max(time.time(), self._timer_at)
        self._last_fire = now
        try:
            self.switch.handle_timer(now)
        finally:
            self._flush()

    # ------------------------------------------------------------------ outputs

    def _kick(self) -> None:
        """Flush once at the end of this loop iteration, whatever came in."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        sw = self.switch
        sip = self._sip
        if sip is not None:
            for data, peer in sw.sip_datagrams_to_send():
                sip.send(data, peer)
        bearers = self._bearers
        if bearers is not None and bearers.outbox is not None:  # open, not closed yet
            bearers.send(sw.bearer_datagrams_to_send())
        if self._nft_worker is not None and sw.guard.kernel_pending:
            assert self._nft is not None
            self._nft_worker.submit(self._nft.apply, sw.guard.kernel_changes())
        self._hand_to_db()
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.switch.get_timer()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # an earlier wake-up is armed; it re-arms when it fires
            self._timer.cancel()
        deadline = max(deadline, self._last_fire + TIMER_SLACK)
        delay = max(0.0, deadline - time.time())
        self._timer_at = deadline
        self._timer = self.loop.call_at(self.loop.time() + delay, self._on_timer)

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        if self._stop.is_set():
            return
        now = time.time()
        self.notifier.status(self._status_line())
        if self._sip is not None:
            self._sip.close_idle(now, self.switch.location.has_source)
        self.loop.call_later(HOUSEKEEPING, self._housekeeping)
        if self.notifier.interval is not None:
            self._watchdog()

    def _watchdog(self) -> None:
        """WATCHDOG=1 from the loop itself, at half the unit's timeout."""
        if self._stop.is_set() or self.notifier.interval is None:
            return
        self.notifier.watchdog(time.monotonic())
        self.loop.call_later(min(self.notifier.interval, 1.0), self._watchdog)

    def _status_line(self) -> str:
        sw = self.switch
        calls = 0 if sw.calls is None else len(sw.calls.snapshot())
        return (
            f"{len(sw.location)} registrations, {calls} calls, "
            f"bearers {sw.bearers.up_count}/{len(sw.bearers)} up"
        )

    # ------------------------------------------------------------------ admin and signals

    def _admin_handlers(self) -> dict[str, Any]:
        return {
            "registrations": lambda args: self.switch.admin_registrations(time.time()),
            "calls": lambda args: self.switch.admin_calls(),
            "bearers": lambda args: self.switch.admin_bearers(),
            "status": lambda args: self._admin_status(),
            "reload": lambda args: self.reload(from_admin=True),
            "bans": lambda args: self._admin_bans(),
            "bans_del": self._admin_unban,
        }

    def _admin_bans(self) -> list[dict[str, Any]]:
        rows = self.switch.admin_bans(time.time())
        for row in rows:
            for key in ("since", "until"):
                row[key] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row[key]))
        return rows

    def _admin_unban(self, args: dict[str, Any]) -> str:
        """``softswitchctl bans del ADDR``: in-process and, at the next flush, nftables."""
        address = args.get("address")
        if not isinstance(address, str):
            raise AdminError('bans_del needs "address"')
        try:
            lifted = self.switch.guard.unban(address, time.time())
        except ValueError:
            raise AdminError(f"not an IP address: {address!r}") from None
        if not lifted:
            raise AdminError(f"{address} is not banned")
        self._kick()
        return f"ban of {address} lifted"

    def _admin_status(self) -> dict[str, Any]:
        status = self.switch.admin_status(time.time())
        status["nftables"] = "on" if self._nft is not None else "off"
        if self._nft is not None:
            status["nftables_failures"] = self._nft.failures  # element updates refused
        outbox = self._bearers.outbox if self._bearers is not None else None
        if outbox is not None:  # waited for a bearer's full queue: sent late, not lost
            status["bearer_send_deferred"] = outbox.deferred
            status["bearer_send_waiting"] = len(outbox)
        return status

    def reload(self, from_admin: bool = False) -> dict[str, Any]:
        """SIGHUP / ``softswitchctl reload``: re-read the configuration, apply
        what can change live, say what needs a restart, reopen the logs."""
        try:
            new = load_control_config(self.config_path, required=self.required)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            if from_admin:
                raise AdminError(f"reload refused: {exc}") from None
            return {}
        self.notifier.reloading()
        tls = self._reload_tls(new)
        applied, restart = self.switch.reconfigure(new)
        if "log.level" in applied:
            logging.getLogger().setLevel(getattr(logging, new.log.level.upper()))
        if self.logs is not None:
            self.logs.reopen()
        log.info(
            "configuration reloaded: changed %s%s",
            ", ".join(applied) or "nothing",
            f"; needs a restart to change: {', '.join(restart)}" if restart else "",
        )
        self.notifier.ready(self._status_line())
        self._kick()
        result: dict[str, Any] = {"applied": applied, "needs_restart": restart}
        if tls:
            result["tls"] = tls
        return result

    def _reload_tls(self, new: SimpleNamespace) -> str:
        """Load the certificate and key again (same paths or new ones) into a
        fresh context for new TLS connections; established ones keep theirs.
        One that cannot be loaded is logged and the running one stays."""
        sip = self._sip
        if self.tls_context is None or sip is None or not new.sip.tls_certificate:
            return ""  # TLS turned on or off: Switch.reconfigure says "restart"
        try:
            context = server_context(new.sip.tls_certificate, new.sip.tls_key)
        except TlsError as exc:
            log.error("TLS certificate not reloaded, the running one stays: %s", exc)
            return f"not reloaded, the running certificate stays: {exc}"
        self.tls_context = sip.tls_context = context
        # Applied here, so Switch.reconfigure does not list them as needing a restart.
        self.cfg.sip.tls_certificate = new.sip.tls_certificate
        self.cfg.sip.tls_key = new.sip.tls_key
        warning = key_mode_warning(new.sip.tls_key)
        if warning:
            log.warning("%s", warning)
        log.info("TLS certificate reloaded for new connections: %s", new.sip.tls_certificate)
        return "reloaded"

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping")
            self._stop.set()

    # ------------------------------------------------------------------ stop

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        sw = getattr(self, "switch", None)
        if sw is not None and self._loaded.is_set():
            sw.shutdown(time.time())
            self._flush()
            deadline = time.monotonic() + STOP_GRACE
            while sw.in_flight() and time.monotonic() < deadline:  # bounded by STOP_GRACE
                await asyncio.sleep(0.05)
            if sw.in_flight():
                log.warning("%d transactions unfinished at stop", sw.in_flight())
        if self._sip is not None:
            self._sip.close()
        if self._admin is not None:
            await self._admin.close()
        if self._timer is not None:
            self._timer.cancel()
        if self._bearers is not None:
            self._bearers.close()
        if self._nft_worker is not None:
            self._nft_worker.shutdown(wait=True)
        if self._nft is not None:
            self._nft.close()
        db = getattr(self, "db", None)
        if db is not None:
            if sw is not None:
                self._hand_to_db()
            if await self.loop.run_in_executor(None, db.stop, DB_STOP_TIMEOUT):
                pass
            elif db.kept_at_stop:
                log.warning("database writes unwritten at stop, kept in the journal")
            else:
                log.error("database writes lost at stop (%d dropped)", db.dropped)
        log.info("stopped")

    def _hand_to_db(self) -> None:
        """The Switch's DB commands, to the DB thread's queue (never blocks)."""
        db = self.db
        for cmd in self.switch.db_commands():
            try:
                if isinstance(cmd, SaveBinding):
                    db.save_binding(cmd.binding)
                elif isinstance(cmd, DeleteBinding):
                    db.delete_binding(cmd.username, cmd.domain, cmd.contact)
                elif isinstance(cmd, WriteCdr):
                    db.write_cdr(cmd.cdr)
                elif isinstance(cmd, UpdateUser):
                    db.update_user(cmd)
            except ValueError as exc:
                log.warning("not persisted: %s", exc)


# --------------------------------------------------------------------------- helpers


async def _first(*aws: Any) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _resolve_endpoints(endpoints: list) -> list:
    """UDP bearer endpoints with host names resolved (replies are matched by address)."""
    out = []
    for kind, address, port in endpoints:
        if kind == "udp":
            try:
                info = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)
            except OSError as exc:
                raise StartupError(f"bearer endpoint udp:{address}:{port}: {exc}") from None
            address = info[0][4][0]
        out.append((kind, address, port))
    return out


def _check_bearer_config(cfg: SimpleNamespace) -> bytes | None:
    """The HMAC key when any bearer link is UDP; ConfigError if the kinds mix."""
    kinds = {cfg.bearers.local[0]} | {e[0] for e in cfg.bearers.endpoints}
    if len(kinds) > 1:
        raise ConfigError(
            "[bearers] local and endpoints must all be unix: (one host) or all udp: (two hosts)"
        )
    if "udp" not in kinds:
        return None
    try:
        return load_key(cfg.bearers.key_file)
    except KeyFileError as exc:
        raise ConfigError(f"{exc} (needed for udp: bearer endpoints)") from None


def _tls_context(cfg: SimpleNamespace, config_path: Path) -> ssl.SSLContext | None:
    """The TLS server context, or None without a certificate; ConfigError
    (one line naming the file and key) if it cannot be loaded."""
    if not cfg.sip.tls_certificate:
        return None
    try:
        return server_context(cfg.sip.tls_certificate, cfg.sip.tls_key)
    except TlsError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None


def _features() -> dict[str, bool]:
    return {
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "aiortc": importlib.util.find_spec("aiortc") is not None,
    }


#: What each optional package brings, for the start-up log line.
FEATURE_USES = {"uvloop": "faster event loop", "aiortc": "Opus"}


def features_text(features: dict[str, bool]) -> str:
    """One line on the optional packages, as ``softswitchctl status`` reports them.

    >>> features_text({"uvloop": True, "aiortc": False})
    'optional features: uvloop available (faster event loop); aiortc absent (no Opus)'
    """
    parts = []
    for name, available in features.items():
        use = FEATURE_USES.get(name, name)
        parts.append(f"{name} available ({use})" if available else f"{name} absent (no {use})")
    return "optional features: " + "; ".join(parts)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softswitch-control",
        description="The softswitch control daemon: SIP registrar and B2BUA.",
    )
    parser.add_argument(
        "--config-dir",
        help=f"configuration directory (default: ${CONFIG_DIR_ENV}, ./var/etc, /etc/softswitch)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; see the module docstring for exit codes."""
    args = _parser().parse_args(argv)  # bad usage: argparse prints usage, exits 2
    required = bool(args.config_dir or os.environ.get(CONFIG_DIR_ENV))
    config_path = resolve_config_dir(args.config_dir) / "softswitch.conf"
    try:
        cfg = load_control_config(config_path, required=required)
        key = _check_bearer_config(cfg)
        tls_context = _tls_context(cfg, config_path)
        logs = LogSetup(cfg.log.level, cfg.log.file)
    except ConfigError as exc:
        print(f"softswitch-control: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the log file cannot be opened
        print(f"softswitch-control: log file {cfg.log.file}: {exc.strerror}", file=sys.stderr)
        return 2
    logs.start()
    # The main thread releases the GIL on every sendto/epoll; with the DB or
    # log thread busy it then waits up to the switch interval (5 ms by
    # default) to get it back.  1 ms bounds that stall on the call path.
    sys.setswitchinterval(SWITCH_INTERVAL)
    features = _features()
    log.info("%s", features_text(features))
    if not cfg.bearers.endpoints:
        log.warning("no bearers configured ([bearers] endpoints): every call will get 503")
    if tls_context is not None:
        warning = key_mode_warning(cfg.sip.tls_key)
        if warning:
            log.warning("%s", warning)
    daemon = ControlDaemon(
        cfg,
        config_path,
        required=required,
        key=key,
        logs=logs,
        features=features,
        tls_context=tls_context,
    )
    metrics = None
    if cfg.metrics.listen is not None:
        host, port = cfg.metrics.listen
        metrics = MetricsServer(host, port, make_registry(daemon))
        try:
            metrics.start()
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            message = f"[metrics] listen {where}: {exc.strerror or exc}"
            if cfg.log.file:
                log.error("cannot start: %s", message)
            logs.stop()
            print(f"softswitch-control: {message}", file=sys.stderr)
            return 2
        log.info("Prometheus metrics on %s", metrics.url)
    try:
        loop_factory = None
        if features["uvloop"]:
            import uvloop  # type: ignore[import-not-found,unused-ignore]

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(daemon.run())
    except StartupError as exc:
        if cfg.log.file:  # stderr gets the line below; a log file gets it too
            log.error("cannot start: %s", exc)
        logs.stop()
        print(f"softswitch-control: {exc}", file=sys.stderr)
        return 1
    except Exception:
        log.exception("fatal error")
        return 1
    finally:
        if metrics is not None:
            metrics.close()
        logs.stop()


if __name__ == "__main__":
    sys.exit(main())
