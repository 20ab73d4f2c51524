"""The TLS server context for SIP over TLS (RFC 3261 §26), from softswitch.conf.

``server_context`` builds a fresh ``ssl.SSLContext`` from ``[sip]
tls_certificate`` and ``tls_key`` every time it is called: at start, and at
each reload (SIGHUP, ``softswitchctl reload``), after which new connections
are accepted with the new one while established connections keep theirs
(softswitch/daemon/transports.py, ``SipTransports.tls_context``).  What
cannot be loaded is a ``TlsError`` whose text is one line naming the key
and the file: at start the daemon refuses to start with it, at reload it
is logged and the running certificate stays.

Phones are not asked for a certificate (they authenticate with digest, as
over UDP and TCP); TLS 1.2 is the oldest version accepted (RFC 8996 retired
1.0 and 1.1), with OpenSSL's default cipher list.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import subprocess
from pathlib import Path

__all__ = ["TlsError", "key_mode_warning", "make_self_signed", "server_context"]


class TlsError(Exception):
    """The certificate or key cannot be used; the text is the one line to say."""


def server_context(certificate: str, key: str = "") -> ssl.SSLContext:
    """A server-side context holding ``certificate`` and ``key`` ("" = in the
    certificate file); TlsError names the key of softswitch.conf at fault."""
    for name, path in (("tls_certificate", certificate), ("tls_key", key)):
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsError(f"[sip] {name} {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE  # phones authenticate with digest
    try:
        context.load_cert_chain(certificate, key or None)
    except ssl.SSLError as exc:
        raise TlsError(_which(certificate, key, exc)) from None
    except OSError as exc:  # e.g. a directory
        raise TlsError(f"[sip] tls_certificate {certificate}: {exc.strerror or exc}") from None
    return context


def _which(certificate: str, key: str, exc: ssl.SSLError) -> str:
    """Say whether the certificate or the key is what OpenSSL refused."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=certificate)
    except (ssl.SSLError, OSError):
        return f"[sip] tls_certificate {certificate}: no PEM certificate in it"
    if key:
        reason = (getattr(exc, "reason", None) or "unreadable").lower().replace("_", " ")
        return f"[sip] tls_key {key}: not the private key of {certificate} ({reason})"
    return f"[sip] tls_key is empty and {certificate} holds no private key: set tls_key"


def key_mode_warning(key: str) -> str | None:
    """A warning when the key file can be read by others than owner and group."""
    try:
        mode = os.stat(key).st_mode
    except OSError:
        return None
    if mode & 0o004:
        return (
            f"[sip] tls_key {key} is readable by every user (mode {mode & 0o777:04o}): chmod 0640"
        )
    return None


#: Validity of a generated self-signed certificate, days.
SELF_SIGNED_DAYS = 3650


def make_self_signed(certificate: Path, key: Path, names: list[str]) -> None:
    """Write a self-signed EC P-256 certificate for ``names`` (IP addresses
    and DNS names, the first also its CN) and its key (mode 0600), with the
    ``openssl`` command: the standard library cannot make certificates.

    For ``make run`` and tests; the package's postinst runs the same
    command.  TlsError if openssl is missing or fails.
    """
    alt = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names)
    tmp_key = key.with_name(key.name + ".tmp")
    argv = [
        "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(tmp_key), "-out", str(certificate),
        "-days", str(SELF_SIGNED_DAYS), "-subj", f"/CN={names[0]}",
        "-addext", f"subjectAltName={alt}",
    ]  # fmt: skip
    old = os.umask(0o077)
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise TlsError("openssl not found: cannot make a self-signed certificate") from None
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or "").strip().splitlines()
        raise TlsError(f"openssl failed: {lines[-1] if lines else exc}") from None
    finally:
        os.umask(old)
    os.chmod(tmp_key, 0o600)
    os.replace(tmp_key, key)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
