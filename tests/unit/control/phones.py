"""Fake phones and users for the sans-I/O control tests.

A ``Phone`` builds REGISTERs as bytes, answers challenges with the stack's own
DigestClient and reads responses back with ``parse``; ``make_user`` and
``sip_config`` give the registrar and the core what the daemon would.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from softswitch.daemon.settings import load_control_config
from softswitch.model.users import User
from softswitch.sip.digest import DigestClient, ha1, parse_challenge
from softswitch.sip.message import Response
from softswitch.sip.transaction import Peer

NOW = 1_700_000_000.0
DOMAIN = "example.org"
NAT = Peer("udp", "203.0.113.9", 61000)  # the phone's public side
_seq = itertools.count(1)


def sip_config(**sip: object) -> SimpleNamespace:
    """The defaults of softswitch.conf, with [sip] overrides."""
    cfg = load_control_config(Path("/nonexistent/softswitch.conf"))
    cfg.sip.domain = DOMAIN
    for k, v in sip.items():
        setattr(cfg.sip, k, v)
    return cfg


def make_user(name: str, password: str, *, realm: str = DOMAIN, uid: int = 1, **kw: Any) -> User:
    """An enabled account with no call limit; ``kw`` overrides any field."""
    user = User(
        id=uid,
        username=name,
        domain=DOMAIN,
        ha1_md5=ha1(name, realm, password, "MD5"),
        ha1_sha256=ha1(name, realm, password, "SHA-256"),
        display_name="",
        enabled=True,
        record_calls=False,
        max_calls=0,
    )
    return replace(user, **kw)


def make_users(*users: User) -> dict[tuple[str, str], User]:
    return {(u.username, u.domain): u for u in users}


class Phone:
    """A SIP phone reduced to what a registrar sees: REGISTER bytes out,
    responses in, digest answers from the stack's own DigestClient."""

    def __init__(
        self,
        user: str = "alice",
        password: str = "secret",
        *,
        contact: str | None = None,
        call_id: str | None = None,
        algorithm: str | None = None,
    ) -> None:
        self.user = user
        self.client = DigestClient(user, password=password)
        self.contact = contact or f"<sip:{user}@10.0.0.5:5062>"
        self.call_id = call_id or f"reg-{user}-{next(_seq)}@10.0.0.5"
        self.cseq = 0
        self.algorithm = algorithm

    def register(
        self,
        *,
        expires: int | None = 3600,
        contacts: list[str] | None = None,
        cseq: int | None = None,
        to: str | None = None,
        extra: list[str] | None = None,
        auth: bool = True,
    ) -> bytes:
        self.cseq = cseq if cseq is not None else self.cseq + 1
        lines = [
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            f"Via: SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bK{next(_seq)}x",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{DOMAIN}>;tag=f{self.call_id[:6]}",
            f"To: {to or f'<sip:{self.user}@{DOMAIN}>'}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            "User-Agent: TestPhone/1.0",
        ]
        for c in [self.contact] if contacts is None else contacts:
            lines.append(f"Contact: {c}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        credentials = self.client.authorization("REGISTER", f"sip:{DOMAIN}") if auth else None
        if credentials:
            lines.append(f"Authorization: {credentials}")
        lines += extra or []
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def challenged(self, response: Response) -> None:
        values = response.get_all("WWW-Authenticate")
        if self.algorithm:
            values = [v for v in values if parse_challenge(v).algorithm == self.algorithm]
        self.client.challenged(values)
