"""The admin socket: JSON-line wire format, the dispatcher, a real UNIX socket."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat

import pytest

from softswitch.daemon.admin import (
    MAX_REQUEST,
    AdminClient,
    AdminDispatcher,
    AdminError,
    NotRunning,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from tests.unit.control.admin_server import HANDLERS, serving

# -- wire format ----------------------------------------------------------------


def test_request_and_response_are_one_json_line_each():
    line = encode_request("calls", {"user": "alice"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"cmd": "calls", "args": {"user": "alice"}}
    assert decode_request(line) == ("calls", {"user": "alice"})
    assert json.loads(encode_response([1, 2])) == {"ok": True, "result": [1, 2]}
    assert json.loads(encode_response(error="nope")) == {"ok": False, "error": "nope"}
    assert decode_response(encode_response({"a": 1})) == {"a": 1}
    with pytest.raises(AdminError, match=r"^nope$"):
        decode_response(encode_response(error="nope"))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json\n", "request is not JSON"),
        (b"[1, 2]\n", 'request must be an object with a string "cmd"'),
        (b'{"cmd": 3}\n', 'request must be an object with a string "cmd"'),
        (b'{"cmd": "calls", "args": []}\n', '"args" must be an object'),
        (b"\xff\xfe\n", "request is not JSON"),
    ],
)
def test_malformed_requests_are_answered_with_the_reason(line, reason):
    with pytest.raises(AdminError) as err:
        decode_request(line)
    assert str(err.value) == reason
    answer = asyncio.run(AdminDispatcher(HANDLERS).handle_line(line))
    assert json.loads(answer) == {"ok": False, "error": reason}


def test_dispatcher_makes_dataclasses_and_enums_json():
    answer = asyncio.run(AdminDispatcher(HANDLERS).handle_line(encode_request("calls")))
    assert json.loads(answer) == {
        "ok": True,
        "result": [{"call_id": "c1@host", "leg": "a", "codecs": ["PCMU", "PCMA"]}],
    }


def test_dispatcher_answers_unknown_commands_with_the_known_ones():
    answer = asyncio.run(AdminDispatcher({"calls": list}).handle_line(encode_request("cals")))
    assert json.loads(answer) == {"ok": False, "error": "unknown command 'cals' (known: calls)"}


def test_handler_errors_become_error_responses_not_crashes():
    dispatcher = AdminDispatcher(HANDLERS)
    refused = json.loads(asyncio.run(dispatcher.handle_line(encode_request("refuse"))))
    assert refused == {"ok": False, "error": "no such call: x"}
    crashed = json.loads(asyncio.run(dispatcher.handle_line(encode_request("fail"))))
    assert crashed == {"ok": False, "error": "internal error: RuntimeError: boom"}


# -- a real socket ------------------------------------------------------------------


def test_client_and_server_over_a_real_socket(tmp_path):
    path = tmp_path / "admin.sock"
    with serving(path):
        client = AdminClient(path, timeout=5)
        assert client.call("status") == {"uptime": 12.5, "db": "ok"}
        assert client.call("echo", {"x": [1, "two"]}) == {"x": [1, "two"]}
        assert client.call("slow", {"seconds": 0.01}) == "late"
        with pytest.raises(AdminError, match=r"^no such call: x$"):
            client.call("refuse")
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert not path.exists()  # removed on close


def test_one_connection_carries_several_requests_in_order(tmp_path):
    path = tmp_path / "admin.sock"
    with serving(path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(encode_request("echo", {"n": 1}) + encode_request("echo", {"n": 2}))
        data = b""
        while data.count(b"\n") < 2:
            chunk = sock.recv(4096)
            assert chunk, "server closed early"
            data += chunk
        sock.close()
    first, second = data.splitlines()
    assert decode_response(first) == {"n": 1} and decode_response(second) == {"n": 2}


def test_an_oversized_request_is_refused(tmp_path):
    path = tmp_path / "admin.sock"
    with serving(path):
        with pytest.raises(AdminError, match=f"request over {MAX_REQUEST} bytes"):
            AdminClient(path, timeout=5).call("echo", {"blob": "x" * (MAX_REQUEST + 10)})
        assert AdminClient(path, timeout=5).call("echo", {"ok": 1}) == {"ok": 1}


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "admin.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert path.exists()
    with serving(path):
        assert AdminClient(path, timeout=5).call("status")["db"] == "ok"


def test_a_live_daemon_socket_is_not_stolen(tmp_path):
    path = tmp_path / "admin.sock"
    with serving(path):
        with pytest.raises(AdminError, match="another daemon is serving"), serving(path):
            pass
        assert AdminClient(path, timeout=5).call("status")["db"] == "ok"


def test_a_regular_file_in_the_way_is_an_error(tmp_path):
    path = tmp_path / "admin.sock"
    path.write_text("not a socket")
    with pytest.raises(AdminError, match="exists and is not a socket"), serving(path):
        pass


def test_client_reports_a_missing_daemon_in_one_line(tmp_path):
    path = tmp_path / "admin.sock"
    with pytest.raises(NotRunning) as err:
        AdminClient(path).call("calls")
    assert str(err.value) == f"softswitch-control is not running (no socket at {path})"


def test_client_gives_up_after_its_timeout(tmp_path):
    path = tmp_path / "admin.sock"
    expected = re.escape("no answer from softswitch-control within 0.3 s")
    with serving(path), pytest.raises(AdminError, match=expected):
        AdminClient(path, timeout=0.3).call("slow", {"seconds": 3})


def test_socket_directory_is_created(tmp_path):
    path = tmp_path / "run" / "softswitch" / "admin.sock"
    with serving(path):
        assert path.exists() and os.access(path, os.W_OK)
