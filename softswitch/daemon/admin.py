"""The admin socket: how softswitchctl asks the running daemon for live state.

Wire format (one UNIX stream socket, newline-delimited JSON, UTF-8)::

    request:  {"cmd": "calls", "args": {}}\\n
    response: {"ok": true, "result": <any JSON>}\\n
          or: {"ok": false, "error": "one line for a person"}\\n

A connection may carry several requests, answered in order. Requests are
limited to `MAX_REQUEST` bytes; responses (a registration list can be large)
to `MAX_RESPONSE`.

Results are whatever the daemon's handler returns, made JSON-able by
`jsonable()` (dataclasses become objects, enums their values). softswitchctl
renders a list of flat objects as a table, an object as "key: value" lines
and anything else as it is, so the daemon decides the columns.

softswitchctl sends these commands with empty args, so the daemon's handler
table should have them: ``registrations``, ``calls``, ``bearers``, ``status``
(a list of flat objects each, except status: one object) and ``reload`` (a
string saying what happened); ``bans`` (a list) and ``bans_del`` with
``{"address": ADDR}`` (a string, or an error if it was not banned).

The sans-I/O core is `AdminDispatcher.handle_line(bytes) -> bytes`; the
asyncio edge is `AdminServer`; the blocking client is `AdminClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import inspect
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from softswitch.daemonkit.runtime import SocketFileError, release_transport, remove_stale_socket

log = logging.getLogger("softswitch.daemon.admin")

MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 256 * 1024 * 1024
#: Seconds a connected client may stay silent before the server hangs up.
IDLE_TIMEOUT = 60.0

Handler = Callable[[dict[str, Any]], Any]


class AdminError(Exception):
    """A refused or failed admin request; the text is the one line to print."""


class NotRunning(AdminError):
    """Nobody is listening on the admin socket."""


def jsonable(value: Any) -> Any:
    """`value` with dataclasses, enums, sets and paths turned into JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def encode_request(cmd: str, args: dict[str, Any] | None = None) -> bytes:
    """One request line."""
    return json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n"


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(cmd, args) from a request line; AdminError with the reason if malformed."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise AdminError("request is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
        raise AdminError('request must be an object with a string "cmd"')
    args = message.get("args", {})
    if not isinstance(args, dict):
        raise AdminError('"args" must be an object')
    return message["cmd"], args


def encode_response(result: Any = None, *, error: str | None = None) -> bytes:
    """One response line: the result, or the error when `error` is given."""
    if error is not None:
        message: dict[str, Any] = {"ok": False, "error": error}
    else:
        message = {"ok": True, "result": jsonable(result)}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode_response(line: bytes) -> Any:
    """The result of a response line; AdminError carrying the daemon's error text."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise AdminError("malformed response from the daemon") from None
    if not isinstance(message, dict) or "ok" not in message:
        raise AdminError("malformed response from the daemon")
    if not message["ok"]:
        raise AdminError(str(message.get("error", "request failed")))
    return message.get("result")


class AdminDispatcher:
    """Maps a request line to its handler and the handler's result to a response.

    Handlers take the request's args and return a JSON-able value (or an
    awaitable of one); raising AdminError or ValueError answers with its text,
    anything else with "internal error" (logged with its traceback).
    """

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = dict(handlers)

    def call(self, line: bytes) -> tuple[Handler | None, dict[str, Any], bytes | None]:
        """Decode and route: (handler, args, None) or (None, {}, error response)."""
        try:
            cmd, args = decode_request(line)
        except AdminError as exc:
            return None, {}, encode_response(error=str(exc))
        handler = self.handlers.get(cmd)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return None, {}, encode_response(error=f"unknown command {cmd!r} (known: {known})")
        return handler, args, None

    async def handle_line(self, line: bytes) -> bytes:
        """The response line for one request line (never raises)."""
        handler, args, answer = self.call(line)
        if handler is None:
            assert answer is not None
            return answer
        try:
            result = handler(args)
            if inspect.isawaitable(result):
                result = await result
            return encode_response(result)
        except (AdminError, ValueError) as exc:
            return encode_response(error=str(exc) or type(exc).__name__)
        except Exception as exc:
            log.exception("admin handler failed")
            return encode_response(error=f"internal error: {type(exc).__name__}: {exc}")


class AdminServer:
    """The daemon side: an asyncio UNIX server feeding an AdminDispatcher."""

    def __init__(self, path: str | os.PathLike[str], handlers: dict[str, Handler]) -> None:
        self.path = Path(path)
        self.dispatcher = AdminDispatcher(handlers)
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (socket mode 0660 so the admin group can use softswitchctl)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            remove_stale_socket(self.path, kind=socket.SOCK_STREAM)
        except SocketFileError as exc:
            raise AdminError(str(exc)) from None
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_REQUEST
        )
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        """Stop listening, drop clients and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._clients):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except ValueError:  # longer than MAX_REQUEST
                    writer.write(encode_response(error=f"request over {MAX_REQUEST} bytes"))
                    await writer.drain()
                    return
                if not line:
                    return
                writer.write(await self.dispatcher.handle_line(line))
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            release_transport(writer.transport)


class AdminClient:
    """The blocking client softswitchctl uses: one request, one response."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; AdminError / NotRunning otherwise."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise NotRunning(
                    f"softswitch-control is not running (no socket at {self.path})"
                ) from None
            except PermissionError:
                raise AdminError(f"permission denied on {self.path}") from None
            try:
                sock.sendall(encode_request(cmd, args))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon refused mid-request; its answer may still be readable
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AdminError("the daemon closed the connection without answering")
                chunks.append(chunk)
                size += len(chunk)
                if b"\n" in chunk:
                    break
                if size > MAX_RESPONSE:
                    raise AdminError(f"response over {MAX_RESPONSE} bytes")
        except TimeoutError:
            raise AdminError(
                f"no answer from softswitch-control within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise AdminError(f"{self.path}: {exc.strerror or exc}") from None
        finally:
            sock.close()
        line = b"".join(chunks).split(b"\n", 1)[0]
        return decode_response(line)
