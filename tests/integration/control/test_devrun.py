"""`make run` as a new user meets it: devrun brings up control + 2 bearers,
softswitchctl in another terminal answers, Ctrl-C stops all three."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from bench.harness.control import CTL_EXE, ROOT, free_sip_port
from bench.harness.sip import SipClient


def test_devrun_serves_and_softswitchctl_finds_it(tmp_path: Path) -> None:
    var = tmp_path / "var"
    port = free_sip_port()
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("SOFTSWITCH_CONFIG_DIR", None)
    log = tmp_path / "devrun.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "softswitch.cli.devrun",
                "--var",
                str(var),
                "--sip-port",
                str(port),
                "--metrics-listen",
                "",  # 127.0.0.1:9464 may be another test's (or a make run's)
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    ctl_env = dict(env, SOFTSWITCH_CONFIG_DIR=str(var / "etc"))
    try:
        status = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded
            r = subprocess.run(
                [str(CTL_EXE), "status", "--json"], capture_output=True, text=True, env=ctl_env
            )
            if r.returncode == 0:
                status = json.loads(r.stdout)
                # Bearers can be up while the users still load: wait for both.
                if status["state"] == "serving" and status["bearers_up"] == "2/2":
                    break
            time.sleep(0.2)
        assert status is not None and status["state"] == "serving", log.read_text()
        assert status["bearers_up"] == "2/2", status
        added = subprocess.run(
            [str(CTL_EXE), "user", "add", "dev", "--password", "pw"], env=ctl_env, timeout=30
        )
        assert added.returncode == 0
        # Wait for the daemon to load the user (one sync interval) before the
        # phone tries: make run bans an address after 5 failed logins, and an
        # unknown user is a failed login.
        for _ in range(50):  # bounded
            users = subprocess.run(
                [str(CTL_EXE), "status", "--json"], capture_output=True, text=True, env=ctl_env
            )
            if users.returncode == 0 and json.loads(users.stdout)["users"] == 1:
                break
            time.sleep(0.2)
        phone = SipClient(port, "dev", "pw")
        assert phone.register().status == 200
        phone.close()
        # SIP over TLS with the self-signed certificate make run made, trusted.
        cert = var / "etc" / "tls.crt"
        assert (var / "etc" / "tls.key").stat().st_mode & 0o777 == 0o600
        trusting = ssl.create_default_context(cafile=str(cert))
        phone = SipClient(port + 1, "dev", "pw", transport="tls", tls=trusting)
        assert phone.register().status == 200
        phone.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert text.count("stopped") >= 3, text  # control and both bearers
