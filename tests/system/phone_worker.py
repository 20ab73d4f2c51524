"""One test phone: a pjsua2 endpoint driven by JSON lines on stdin/stdout.

Run by ``tests.system.phone.Phone`` as ``python -m tests.system.phone_worker
CONFIG_JSON`` (possibly through ``ip netns exec``).  pjsua2 allows one
Endpoint per process, which is why every phone is its own process.

Theory of operation: the main thread owns pjsip (``threadCnt = 0``): it
alternates between ``libHandleEvents`` (which releases the GIL) and reading
requests, so every SIP callback runs here, in order, with no locking.  Only
the audio clock thread of the null sound device runs elsewhere; it calls the
two Python media ports below once per 20 ms, and they touch nothing but
their own append-only lists.  A request that waits (for a state, a call, a
registration) pumps events until its condition holds or its deadline passes,
so the phone keeps working while the test waits.  EOF on stdin (the test
died) shuts the phone down; so does the parent's death (PR_SET_PDEATHSIG).

Media: each call gets a ``TonePort`` (our tone with delay markers, every
frame request timestamped) connected to the call, and a ``CapturePort``
(every received frame timestamped) fed by the call, so recordings carry the
clock that ``tests.audio.measure_delay`` needs.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pjsua2 as pj

from tests.audio import FRAME, RATE, Recording, fit_frame_clock, marked_tone

STATES = {
    pj.PJSIP_INV_STATE_NULL: "NULL",
    pj.PJSIP_INV_STATE_CALLING: "CALLING",
    pj.PJSIP_INV_STATE_INCOMING: "INCOMING",
    pj.PJSIP_INV_STATE_EARLY: "EARLY",
    pj.PJSIP_INV_STATE_CONNECTING: "CONNECTING",
    pj.PJSIP_INV_STATE_CONFIRMED: "CONFIRMED",
    pj.PJSIP_INV_STATE_DISCONNECTED: "DISCONNECTED",
}
ORDER = ["NULL", "CALLING", "INCOMING", "EARLY", "CONNECTING", "CONFIRMED", "DISCONNECTED"]
DIRS = {
    pj.PJMEDIA_DIR_NONE: "inactive",
    pj.PJMEDIA_DIR_ENCODING: "sendonly",
    pj.PJMEDIA_DIR_DECODING: "recvonly",
    pj.PJMEDIA_DIR_ENCODING_DECODING: "sendrecv",
}


class PhoneFailure(Exception):
    """A request that cannot be done; its text goes back to the test."""


def audio_format() -> pj.MediaFormatAudio:
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = RATE
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000
    return fmt


class TonePort(pj.AudioMediaPort):
    """Plays a looping marked tone; logs (time, position) of every frame."""

    def __init__(self, chunks: list[pj.ByteVector]) -> None:
        super().__init__()
        self.chunks = chunks
        self.times: list[float] = []
        self.positions: list[int] = []
        self.pos = 0

    def onFrameRequested(self, frame: pj.MediaFrame) -> None:
        # Position first: a reader snapshots ``times`` and then slices ``positions``.
        self.positions.append(self.pos)
        self.times.append(time.monotonic())
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        frame.buf = self.chunks[(self.pos // FRAME) % len(self.chunks)]
        frame.size = FRAME * 2
        self.pos += FRAME


class CapturePort(pj.AudioMediaPort):
    """Keeps every frame it is given, with the time it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.frames: list[bytes] = []

    def onFrameReceived(self, frame: pj.MediaFrame) -> None:
        now = time.monotonic()
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
            self.frames.append(bytes(frame.buf))
        else:
            self.frames.append(b"")
        self.times.append(now)


class PhoneCall(pj.Call):
    """A call plus what the tests ask about it afterwards."""

    def __init__(self, phone: Worker, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.phone = phone
        self.key = phone.next_key()
        self.state = "NULL"
        self.states: list[str] = []
        self.last_status = 0
        self.last_reason = ""
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.dtmf: list[str] = []
        self.tone: TonePort | None = None
        self.capture: CapturePort | None = None
        self.connected_media: set[int] = set()
        self.saved: Path | None = None
        self.final_stats: dict[str, Any] | None = None

    # pjsua2 callbacks (main thread) ------------------------------------------

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        ci = self.getInfo()
        self.state = STATES.get(ci.state, str(ci.state))
        self.states.append(self.state)
        self.last_status = int(ci.lastStatusCode)
        self.last_reason = ci.lastReason
        if self.state == "CONFIRMED" and self.answered_at is None:
            self.answered_at = time.monotonic()
        if self.state == "DISCONNECTED":
            self.ended_at = time.monotonic()
            self.phone.finish(self)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if mi.status not in (
                pj.PJSUA_CALL_MEDIA_ACTIVE,
                pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD,
            ):
                continue
            aud = self.getAudioMedia(i)
            if self.tone is None:
                self.tone = TonePort(self.phone.chunks)
                self.tone.createPort(f"tone{self.key}", audio_format())
                self.capture = CapturePort()
                self.capture.createPort(f"capture{self.key}", audio_format())
            self.tone.startTransmit(aud)
            aud.startTransmit(self.capture)
            self.connected_media.add(i)

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        self.dtmf.append(prm.digit)

    # queries -----------------------------------------------------------------

    def audio_index(self) -> int:
        try:
            ci = self.getInfo()  # keep it alive: .media points into it
            for i, mi in enumerate(ci.media):
                if mi.type == pj.PJMEDIA_TYPE_AUDIO:
                    return i
        except pj.Error:
            pass
        return -1

    def stats(self) -> dict[str, Any]:
        """Codec and RTP counters of the audio stream, or the last ones seen."""
        idx = self.audio_index()
        if idx < 0 or not self.isActive():
            last = self.final_stats or {"codec": None, "rx_packets": 0, "tx_packets": 0}
            return {**last, "state": self.state}
        out: dict[str, Any] = {"state": self.state}
        try:
            ci = self.getInfo()
            mi = ci.media[idx]
            out["direction"] = DIRS.get(mi.dir, str(mi.dir))
            out["media_status"] = int(mi.status)
            si = self.getStreamInfo(idx)
            out["codec"] = si.codecName
            out["payload_type"] = int(si.txPt)
            out["remote_rtp"] = si.remoteRtpAddress
            st = self.getStreamStat(idx)
            out["rx_packets"] = int(st.rtcp.rxStat.pkt)
            out["tx_packets"] = int(st.rtcp.txStat.pkt)
            out["rx_lost"] = int(st.rtcp.rxStat.loss)
            out["local_rtp"] = self.getMedTransportInfo(idx).localRtpName
        except pj.Error as e:
            if self.final_stats is not None:
                return self.final_stats
            out.setdefault("codec", None)
            out.setdefault("rx_packets", 0)
            out.setdefault("tx_packets", 0)
            out["error"] = e.info()
            return out
        self.final_stats = out
        return out

    def recording(self) -> Recording:
        cap = self.capture
        if cap is None or not cap.times:
            return Recording(
                np.zeros(0, np.int16), answered_at=self.answered_at, ended_at=self.ended_at
            )
        times = list(cap.times)
        frames = list(cap.frames[: len(times)])
        t0, period = fit_frame_clock(times)
        k = np.round((np.asarray(times) - times[0]) / period).astype(int)
        out = np.zeros((int(k[-1]) + 1) * FRAME, np.int16)
        for i, data in zip(k, frames, strict=True):
            if len(data) == FRAME * 2:
                out[i * FRAME : (i + 1) * FRAME] = np.frombuffer(data, "<i2")
        return Recording(
            out,
            RATE,
            t0,
            period,
            self.answered_at,
            self.ended_at,
            meta={"frames": len(frames), "phone": self.phone.name},
        )

    def sent_markers(self) -> list[float]:
        tp = self.tone
        if tp is None or not tp.times:
            return []
        times = np.asarray(list(tp.times))
        pos = np.asarray(list(tp.positions[: len(times)]))
        t0, period = fit_frame_clock(times)
        k = np.round((times - times[0]) / period)
        fitted = t0 + k * period
        n = self.phone.signal_len
        out = []
        for start in self.phone.marker_starts:
            # Frames whose [pos, pos+FRAME) within the loop holds a marker start.
            off = (start - pos % n) % n
            hit = off < FRAME
            out.extend((fitted[hit] + off[hit] / RATE * (period / (FRAME / RATE))).tolist())
        return sorted(out)


class PhoneAccount(pj.Account):
    def __init__(self, phone: Worker) -> None:
        super().__init__()
        self.phone = phone
        self.reg_code = 0
        self.reg_reason = ""
        self.reg_events = 0
        self.registered = False

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        self.reg_code = int(prm.code)
        self.reg_reason = prm.reason
        self.registered = 200 <= prm.code < 300 and prm.expiration > 0
        self.reg_events += 1

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = PhoneCall(self.phone, self, prm.callId)
        self.phone.adopt(call)
        self.phone.on_incoming(call)


class Worker:
    """The phone's state and its request handlers (``op_*``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.name: str = cfg["name"]
        self.workdir = Path(cfg["workdir"])
        self.calls: dict[int, PhoneCall] = {}
        self.incoming_queue: list[int] = []
        self.pending_answers: list[tuple[float, int, int]] = []  # (when, key, code)
        self._key = 0
        self._stats_due = 0.0
        signal_, self.marker_starts = marked_tone(
            cfg["tone_hz"], amplitude=cfg["amplitude"], markers=cfg["markers"]
        )
        self.signal_len = len(signal_)
        raw = signal_.astype("<i2").tobytes()
        self.chunks = [pj.ByteVector(raw[i : i + FRAME * 2]) for i in range(0, len(raw), FRAME * 2)]
        self.ep = pj.Endpoint()
        self.accounts: list[PhoneAccount] = []
        self.reg_account: PhoneAccount | None = None

    def next_key(self) -> int:
        self._key += 1
        return self._key

    # life cycle --------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        cfg = self.cfg
        ep = self.ep
        ep.libCreate()
        ec = pj.EpConfig()
        ec.uaConfig.threadCnt = 0
        ec.uaConfig.mainThreadOnly = False
        ec.uaConfig.userAgent = f"softswitch-test-phone ({self.name})"
        ec.uaConfig.stunServer = pj.StringVector()
        ec.logConfig.level = cfg["log_level"]
        ec.logConfig.consoleLevel = cfg["log_level"]
        ec.logConfig.msgLogging = 1 if cfg["log_level"] >= 4 else 0
        mc = ec.medConfig
        mc.threadCnt = 0
        mc.clockRate = RATE
        mc.sndClockRate = RATE
        mc.channelCount = 1
        mc.audioFramePtime = 20
        mc.ptime = 20
        mc.noVad = True  # a tone phone never goes silent; VAD would only add gaps
        mc.ecTailLen = 0  # no echo canceller: it would eat the other side's tone
        mc.hasIoqueue = True
        ep.libInit(ec)
        ep.audDevManager().setNullDev()
        allowed = [c.upper() for c in cfg["codecs"]]
        for ci in ep.codecEnum2():
            name = ci.codecId.split("/")[0].upper()
            prio = 255 - allowed.index(name) if name in allowed else 0
            ep.codecSetPriority(ci.codecId, prio)
        tc = pj.TransportConfig()
        tc.boundAddress = cfg["bind"]
        tc.port = cfg["sip_port"]
        self.tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
        self.tls_tid: int | None = None
        if cfg.get("tls_ca"):
            # SIP over TLS for the registration account: the server must
            # present a certificate this CA file vouches for, for its address.
            tt = pj.TransportConfig()
            tt.boundAddress = cfg["bind"]
            tt.port = 0
            tt.tlsConfig.CaListFile = cfg["tls_ca"]
            tt.tlsConfig.verifyServer = True
            self.tls_tid = ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tt)
        ep.libStart()
        local = ep.transportGetInfo(self.tid).localName
        host, _, port = local.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        acc = self.make_account()
        acc.create(self.account_config(f"sip:{self.name}@{self.hostport()}", None), True)
        return {"host": self.host, "port": self.port, "pid": os.getpid()}

    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def make_account(self) -> PhoneAccount:
        acc = PhoneAccount(self)
        self.accounts.append(acc)
        return acc

    def account_config(self, id_uri: str, reg: dict[str, Any] | None) -> pj.AccountConfig:
        cfg = self.cfg
        ac = pj.AccountConfig()
        ac.idUri = id_uri
        ac.sipConfig.transportId = self.tid
        nc = ac.natConfig
        nc.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        nc.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        nc.iceEnabled = False
        nc.sipOutboundUse = 0
        nc.udpKaIntervalSec = 0
        rewrite = bool(cfg["nat_rewrite"])
        nc.contactRewriteUse = 1 if rewrite else 0
        nc.viaRewriteUse = 1 if rewrite else 0
        nc.sdpNatRewriteUse = 1 if rewrite else 0
        srtp = cfg.get("srtp", "off")
        ac.mediaConfig.srtpUse = {
            "off": pj.PJMEDIA_SRTP_DISABLED,
            "optional": pj.PJMEDIA_SRTP_OPTIONAL,
            "mandatory": pj.PJMEDIA_SRTP_MANDATORY,
        }[srtp]
        ac.mediaConfig.srtpSecureSignaling = 0
        mt = ac.mediaConfig.transportConfig
        mt.boundAddress = cfg["bind"]
        mt.port = cfg["rtp_port"]
        mt.portRange = cfg.get("rtp_port_range", 2000)
        ac.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        if reg is not None:
            if self.tls_tid is not None:
                ac.sipConfig.transportId = self.tls_tid
            ac.regConfig.registrarUri = reg["registrar"]
            ac.regConfig.timeoutSec = reg["expires"]
            ac.regConfig.retryIntervalSec = 0
            ac.regConfig.registerOnAdd = True
            ac.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", reg["user"], 0, reg["password"])
            )
        return ac

    def adopt(self, call: PhoneCall) -> None:
        self.calls[call.key] = call

    def finish(self, call: PhoneCall) -> None:
        """Call over: keep its stats and save what it heard before pjsua forgets it."""
        call.stats()  # the stream may still be there; keep its last counters
        call.saved = call.recording().save(self.workdir / f"{self.name}-call{call.key}.wav")

    def shutdown(self) -> None:
        """Goodbyes on the network (bounded), then the library, in a safe order."""
        try:
            # Stop the audio clock first: it is the thread that sends RTP and
            # calls our media ports, and a stream still sending while
            # libDestroy tears its socket down trips pj_ioqueue_sendto's
            # assertion (seen when both ends of a call quit at once).
            try:
                self.ep.audDevManager().setNoDev()
            except pj.Error:
                pass
            self.ep.hangupAllCalls()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and any(
                c.state not in ("DISCONNECTED", "NULL") for c in self.calls.values()
            ):
                self.tick()
            acc = self.reg_account
            if acc is not None and acc.isValid() and acc.registered:
                try:
                    before = acc.reg_events
                    acc.setRegistration(False)
                    self.wait(lambda: acc.reg_events > before, 1.0, "un-REGISTER")
                except (pj.Error, PhoneFailure):
                    pass
        finally:
            # The network goodbyes are done above, with bounded waits; letting
            # libDestroy do them costs a fixed second per phone.
            self.ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)

    # helpers -----------------------------------------------------------------

    def tick(self) -> None:
        """One turn of the phone: SIP/RTP events, due answers, fresh stats."""
        self.ep.libHandleEvents(5)
        self.answer_due()
        now = time.monotonic()
        if now >= self._stats_due:
            # pjsua forgets a stream as the call ends, so keep its last counters.
            self._stats_due = now + 0.2
            for c in self.calls.values():
                if c.state in ("EARLY", "CONNECTING", "CONFIRMED"):
                    c.stats()

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.tick()

    def wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() >= deadline:
                raise PhoneFailure(f"timed out after {timeout:g} s waiting for {what}")
            self.tick()

    def call_for(self, key: int | None) -> PhoneCall:
        if key is None:
            if not self.calls:
                raise PhoneFailure("no call yet")
            key = max(self.calls)
        if key not in self.calls:
            raise PhoneFailure(f"no call {key}")
        return self.calls[key]

    def on_incoming(self, call: PhoneCall) -> None:
        cfg = self.cfg
        self.incoming_queue.append(call.key)
        if cfg["auto_reject"]:
            self.respond(call, cfg["auto_reject"])
        elif cfg["ring"]:
            self.respond(call, 180)
        if not cfg["auto_reject"] and cfg["auto_answer"] is not None:
            self.pending_answers.append((time.monotonic() + cfg["auto_answer"], call.key, 200))

    def respond(self, call: PhoneCall, code: int) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        if code >= 300:
            call.hangup(prm)
        else:
            call.answer(prm)

    def answer_due(self) -> None:
        now = time.monotonic()
        due = [p for p in self.pending_answers if p[0] <= now]
        if not due:
            return
        self.pending_answers = [p for p in self.pending_answers if p[0] > now]
        for _, key, code in due:
            call = self.calls.get(key)
            if call is not None and call.state in ("INCOMING", "EARLY"):
                self.respond(call, code)

    # requests ----------------------------------------------------------------

    def op_register(
        self,
        registrar: str,
        user: str,
        password: str,
        domain: str,
        expires: int = 300,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        acc = self.reg_account
        reg = {"registrar": registrar, "user": user, "password": password, "expires": expires}
        if acc is None:
            acc = self.reg_account = self.make_account()
            before = 0
            acc.create(self.account_config(f"sip:{user}@{domain}", reg), False)
        else:
            before = acc.reg_events
            acc.setRegistration(True)
        self.wait(lambda: acc.reg_events > before and acc.reg_code >= 200, timeout, "REGISTER")
        return {"code": acc.reg_code, "reason": acc.reg_reason}

    def op_unregister(self, timeout: float = 5.0) -> dict[str, Any]:
        acc = self.reg_account
        if acc is None:
            raise PhoneFailure("not registered")
        before = acc.reg_events
        acc.setRegistration(False)
        self.wait(lambda: acc.reg_events > before, timeout, "un-REGISTER")
        return {"code": acc.reg_code, "reason": acc.reg_reason}

    def op_call(self, uri: str) -> int:
        acc = self.reg_account or self.accounts[0]
        call = PhoneCall(self, acc)
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        try:
            call.makeCall(uri, prm)
        except pj.Error as e:
            raise PhoneFailure(f"makeCall({uri}): {e.info()}") from None
        self.adopt(call)
        return call.key

    def op_wait_state(self, state: str, timeout: float = 5.0, call: int | None = None):
        c = self.call_for(call)
        want = state.upper()

        def reached() -> bool:
            if want in c.states:
                return True
            # A call that ended cannot reach anything else: stop waiting.
            return c.state == "DISCONNECTED"

        self.wait(reached, timeout, f"{want} on call {c.key} (now {c.state})")
        return self.op_info(c.key)

    def op_info(self, call: int | None = None) -> dict[str, Any]:
        c = self.call_for(call)
        return {
            "call": c.key,
            "state": c.state,
            "states": c.states,
            "last_status": c.last_status,
            "last_reason": c.last_reason,
            "answered_at": c.answered_at,
            "ended_at": c.ended_at,
        }

    def op_incoming(self, timeout: float = 5.0) -> int:
        self.wait(lambda: bool(self.incoming_queue), timeout, "an incoming call")
        return self.incoming_queue.pop(0)

    def op_answer(self, code: int = 200, call: int | None = None, delay: float = 0.0) -> int:
        c = self.call_for(call)
        if delay:
            self.pending_answers.append((time.monotonic() + delay, c.key, code))
        else:
            self.respond(c, code)
        return c.key

    def op_hangup(self, call: int | None = None, code: int | None = None) -> int:
        """BYE, CANCEL or a final response, whichever the call's state needs."""
        c = self.call_for(call)
        if c.state != "DISCONNECTED":
            prm = pj.CallOpParam()
            if code is not None:
                prm.statusCode = code
            c.hangup(prm)
        return c.key

    def op_hold(self, call: int | None = None) -> int:
        c = self.call_for(call)
        c.setHold(pj.CallOpParam(True))
        return c.key

    def op_unhold(self, call: int | None = None) -> int:
        c = self.call_for(call)
        prm = pj.CallOpParam(True)
        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
        c.reinvite(prm)
        return c.key

    def op_send_dtmf(self, digits: str, method: str = "rfc2833", call: int | None = None) -> int:
        c = self.call_for(call)
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = {
            "rfc2833": pj.PJSUA_DTMF_METHOD_RFC2833,
            "info": pj.PJSUA_DTMF_METHOD_SIP_INFO,
        }[method]
        c.sendDtmf(prm)
        return c.key

    def op_received_dtmf(self, call: int | None = None) -> str:
        return "".join(self.call_for(call).dtmf)

    def op_wait_dtmf(self, count: int, timeout: float = 5.0, call: int | None = None) -> str:
        c = self.call_for(call)
        try:
            self.wait(lambda: len(c.dtmf) >= count, timeout, f"{count} DTMF digits")
        except PhoneFailure:
            pass  # the caller compares what did arrive
        return "".join(c.dtmf)

    def op_stats(self, call: int | None = None) -> dict[str, Any]:
        return self.call_for(call).stats()

    def op_recording(self, call: int | None = None) -> str:
        c = self.call_for(call)
        if c.saved is not None:
            return str(c.saved)
        rec = c.recording()
        return str(rec.save(self.workdir / f"{self.name}-call{c.key}-live.wav"))

    def op_sent_markers(self, call: int | None = None) -> list[float]:
        return self.call_for(call).sent_markers()

    def op_pump(self, seconds: float) -> None:
        self.pump(seconds)

    def op_calls(self) -> list[dict[str, Any]]:
        return [self.op_info(k) for k in sorted(self.calls)]


def set_parent_death_signal() -> None:
    """Die with the test process even if it is SIGKILLed."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main() -> int:
    cfg = json.loads(sys.argv[1])
    set_parent_death_signal()
    # Replies go to the real stdout; pjsip's own chatter goes to stderr (the log).
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(reply_fd, "w", buffering=1)

    def send(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")

    w = Worker(cfg)
    try:
        send({"id": 0, "ok": True, "result": w.start()})
    except Exception as e:  # report, do not hang the test
        send({"id": 0, "ok": False, "error": f"start failed: {e!r}"})
        return 1
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    buf = b""
    running = True
    while running:
        w.tick()
        r, _, _ = select.select([stdin], [], [], 0)
        if not r:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            break  # the test went away
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            op = req["op"]
            if op == "quit":
                running = False
                send({"id": req["id"], "ok": True, "result": None})
                break
            try:
                result = getattr(w, f"op_{op}")(**req.get("args", {}))
                send({"id": req["id"], "ok": True, "result": result})
            except PhoneFailure as e:
                send({"id": req["id"], "ok": False, "error": str(e)})
            except pj.Error as e:
                send({"id": req["id"], "ok": False, "error": f"pjsua2: {e.info()}"})
            except Exception:
                send({"id": req["id"], "ok": False, "error": traceback.format_exc()})
    w.shutdown()
    return 0


if __name__ == "__main__":
    # Leave without running Python's finalisers: they would destroy the
    # pjsua2 objects (media ports, calls, accounts) in no particular order,
    # some after libDestroy and some while the audio clock thread may still
    # call into them, which is how a phone segfaults on its way out.  Every
    # object stays referenced until libDestroy has stopped that thread.
    code = 1
    try:
        code = main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
