"""The one exception the SIP stack raises for bad input, and the reason phrases.

Every refusal of the message layer is a ``SipError(status, reason)``: the
status is the SIP response a UAS should send back (RFC 3261 §21), the reason
names what was wrong ("Bad Via header", "Missing Call-ID header", "Multiple To
headers"), so the log line and the response phrase are the same text.  Nothing
else escapes the parser, whatever the bytes: a datagram is either a message or
one of these, never a traceback.

Some input must not be answered at all: a malformed *response* (RFC 4475
§3.1.2.5, §3.1.2.19: "the element simply discards it"), a keep-alive, a
message we could not even frame.  Those carry ``drop=True`` and the caller
counts and discards them.

When a request was framed and its headers split but a later check failed
(unknown Request-URI scheme → 416, CSeq method mismatch → 400/501, ...),
``request`` holds the partly validated request so that the caller can try to
build the stateless error response with ``make_response``; it may itself raise
``SipError`` if the very headers a response needs (Via, From, To, Call-ID,
CSeq) are the broken ones, in which case the only safe thing is to drop.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REASON_PHRASES", "SipError", "reason_phrase"]


class SipError(Exception):
    """Bad SIP input: ``status`` is the response to send, ``reason`` says why.

    ``str(e)`` is the status line tail, e.g. ``"400 Bad Via header"``.
    ``drop`` is true when no response may be sent (malformed responses).
    """

    def __init__(
        self, status: int, reason: str, *, drop: bool = False, request: Any = None
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.drop = drop
        # The request as far as it was parsed (a ``Request``), or None.
        self.request = request

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"SipError({self.status}, {self.reason!r}, drop={self.drop})"


# RFC 3261 §21 plus the codes later RFCs registered with IANA; the RFC that
# defines each non-3261 code is noted beside it.
REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",  # RFC 6228
    200: "OK",
    202: "Accepted",  # RFC 3265 (deprecated by RFC 6665)
    204: "No Notification",  # RFC 5839
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",  # RFC 3903
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",  # RFC 4412
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",  # RFC 4028
    423: "Interval Too Brief",
    424: "Bad Location Information",  # RFC 6442
    428: "Use Identity Header",  # RFC 4474
    429: "Provide Referrer Identity",  # RFC 3892
    430: "Flow Failed",  # RFC 5626
    433: "Anonymity Disallowed",  # RFC 5079
    436: "Bad Identity-Info",  # RFC 4474
    437: "Unsupported Certificate",  # RFC 4474
    438: "Invalid Identity Header",  # RFC 4474
    439: "First Hop Lacks Outbound Support",  # RFC 5626
    440: "Max-Breadth Exceeded",  # RFC 5393
    469: "Bad Info Package",  # RFC 6086
    470: "Consent Needed",  # RFC 5360
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",  # RFC 6665
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",  # RFC 3329
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    555: "Push Notification Service Not Supported",  # RFC 8599
    580: "Precondition Failure",  # RFC 3312
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",  # RFC 8197
    608: "Rejected",  # RFC 8688
}

_CLASS_PHRASES = {
    1: "Provisional",
    2: "Success",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def reason_phrase(status: int) -> str:
    """The standard phrase for ``status``, or its class name for unknown codes.

    RFC 3261 §21: an unknown code is treated as the x00 of its class, so a
    generic class phrase is never wrong.
    """
    phrase = REASON_PHRASES.get(status)
    if phrase is not None:
        return phrase
    return _CLASS_PHRASES.get(status // 100, "Unknown")
