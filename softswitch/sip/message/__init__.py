"""SIP messages: ``parse(bytes)`` -> ``Request``/``Response`` -> ``bytes()``.

Import every name from ``softswitch.sip.message``; its modules are the seams:
``model`` (the message classes: headers, cached parsed values, editing,
serialisation, ``make_response``) and ``parser`` (``parse``: the start line,
eager validation, the errors it raises). Size limits and stream framing come
from ``softswitch.sip.framing``, ``Via`` and ``Address`` from
``softswitch.sip.headers``; they are re-exported here for the callers that
read them as message properties.
"""

from __future__ import annotations

from softswitch.sip.framing import (
    KEEPALIVE,
    MAX_HEADERS,
    MAX_LINE_LENGTH,
    MAX_MESSAGE_SIZE,
    StreamFramer,
)
from softswitch.sip.headers import Address, Via
from softswitch.sip.message.model import Message, Request, Response, make_response
from softswitch.sip.message.parser import KNOWN_METHODS, parse

__all__ = [
    "KEEPALIVE",
    "KNOWN_METHODS",
    "MAX_HEADERS",
    "MAX_LINE_LENGTH",
    "MAX_MESSAGE_SIZE",
    "Address",
    "Message",
    "Request",
    "Response",
    "StreamFramer",
    "Via",
    "make_response",
    "parse",
]
