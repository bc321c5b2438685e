"""Plain HTTP for the relay's two listeners: one bounded request reader, one response writer.

The public gate and the admin listener both read exactly one request per connection
with ``RequestReader`` and answer with ``http_response``. The head is parsed by llhttp
(through ``httptools``, in C: about 3 µs for an upgrade head where h11 took 35-60 µs,
a measurable share of a session's setup), after the relay's own rules have been applied
to the raw bytes (``core.upgrade.check_raw_head``): a head-size limit, no obsolete line
folding, and bare-LF line ends accepted, as nginx accepts them (they are made CRLF before
llhttp, which is strict about them, sees the head).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Callable

import httptools

from ..core.upgrade import check_headers, check_raw_head, declares_body, header_values
from ..errors import RequestRefused

_HEAD_END = re.compile(rb"\n\r?\n")      # the empty line that ends a head (CRLF or bare LF)
_BARE_LF = re.compile(rb"(?<!\r)\n")
_TOKEN_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")


def http_response(status: int, body: str | bytes = "", headers: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    data = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} {phrase}"]
    all_headers = {"Content-Type": "text/plain; charset=utf-8"} if status != 204 else {}
    all_headers.update(headers or {})
    if status != 204:                        # a 204 has no body and no Content-Length
        all_headers["Content-Length"] = str(len(data))
    else:
        data = b""
    all_headers["Connection"] = "close"
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A response's status line and ``headers`` as given (repeats kept: the Session API passes
    a bot's ``Set-Cookie`` lines on), then ``Connection: close``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def json_error(status: int, message: str) -> tuple[str, dict[str, str]]:
    """The body and headers of an API refusal as the hosted platform writes them:
    ``{"error": <sentence>, "code": "<status>"}``."""
    return json.dumps({"error": message, "code": str(status)}), {"Content-Type": "application/json"}


class Request:
    """One request head, as the relay reads it.

    ``headers`` holds (lower-case name, value) pairs, ``raw_headers`` the same pairs with
    the names as the client spelled them (what a bot is forwarded). Values are bytes,
    without the whitespace around them.
    """

    __slots__ = ("method", "target", "http_version", "headers", "raw_headers")

    def __init__(self, method: bytes, target: bytes, http_version: bytes,
                 raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.raw_headers = raw_headers
        self.headers = [(name.lower(), value) for name, value in raw_headers]


class _Done(Exception):
    """Raised from llhttp's message-complete callback: stop at the end of this request."""


class RequestReader:
    """One request, fed as it arrives; ``feed`` says when it is complete.

    Bounds: the head (request line and headers) at most ``max_head`` bytes, at most
    ``check_headers``' header count, a body only on POST and at most ``max_body`` bytes — unless
    ``body_limit`` (asked only for a head that announces a body) gives the request its own
    bound, for a body of any method (the Session API's ``max_session_api_body``): over it is a
    413 as soon as the head or the body says so, never after reading it all.
    Anything else raises ``RequestRefused`` with the status to answer. Once complete,
    ``request``, ``body`` and ``trailing`` (bytes after the request: a WebSocket client's
    early frames) are set. Nothing after the request is parsed as HTTP.
    """

    def __init__(self, max_head: int, max_body: int,
                 body_limit: Callable[[Request], int | None] | None = None) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.body_limit = body_limit
        self.request: Request | None = None
        self.body = bytearray()
        self.trailing = b""
        self.complete = False
        self._raw = bytearray()              # the head, until it is complete (bounded by max_head)
        self._scanned = 0                    # where the search for its end goes on
        self._skipped = 0                    # empty lines dropped before the request line
        self._parser: httptools.HttpRequestParser | None = None
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> bool:
        """Take ``data``; True once the request is complete. Raises RequestRefused."""
        if self.complete:
            return True
        if self.request is None:
            raw = self._raw
            raw += data
            if raw[:1] in (b"\r", b"\n"):     # empty lines before a request line are ignored,
                kept = raw.lstrip(b"\r\n")     # but they count towards the limit
                self._skipped += len(raw) - len(kept)
                del raw[:len(raw) - len(kept)]
                self._scanned = 0
            end = _HEAD_END.search(raw, max(self._scanned - 2, 0))
            if self._skipped + (len(raw) if end is None else end.end()) > self.max_head:
                raise self._too_large()
            if end is None:
                if raw and not 0x21 <= raw[0] < 0x7f:
                    # Not the start of a request line (TLS, HTTP/2 frames, binary noise):
                    # refused at once, not after the head limit or the deadline.
                    raise _malformed("not an HTTP request line")
                self._scanned = len(raw)
                return False
            head, rest = bytes(raw[:end.end()]), bytes(raw[end.end():])
            self._raw = bytearray()
            if self._parse_head(head):
                self.trailing = rest
                self.complete = True
                return True
            data = rest
        self._parse(data)
        return self.complete

    def _parse_head(self, head: bytes) -> bool:
        """Parse and check a complete head; True when the request has no body to wait for."""
        check_raw_head(head)                 # the rules on the raw bytes (folding) come first
        self._parser = httptools.HttpRequestParser(self)
        if head.count(b"\n") != head.count(b"\r\n"):       # some line ends are a bare LF
            head = _BARE_LF.sub(b"\r\n", head)
        upgrade = self._parse(head)
        parser = self._parser
        request = Request(parser.get_method(), self._target, parser.get_http_version().encode("ascii"),
                          self._headers)
        self.request = request
        check_headers(request.headers)
        hosts = sum(1 for name, _ in request.headers if name == b"host")
        if hosts > 1 or (hosts == 0 and request.http_version == b"1.1"):   # RFC 9112 §3.2
            raise RequestRefused(f"{hosts} Host headers", status=400,
                                 public_reason="Bad Request: an HTTP/1.1 request needs exactly one Host header")
        length = _content_length(request)
        declared = declares_body(request.headers)
        limit = self.body_limit(request) if declared and self.body_limit is not None else None
        if limit is not None:                # this request's own bound, whatever its method
            self.max_body = limit
        if length is not None and length > self.max_body:
            raise RequestRefused(f"body of {length} bytes", status=413,
                                 public_reason=f"Content Too Large: the body is over {self.max_body} bytes")
        if limit is None and request.method != b"POST" and declared:
            # A GET (upgrade) with a body is a request-smuggling shape: refuse it now
            # rather than wait for a body that may never come.
            raise RequestRefused(f"{request.method.decode('latin-1')} request with a body", status=400,
                                 public_reason="Bad Request: this request must not have a body")
        return upgrade or self.complete

    def _parse(self, data: bytes) -> bool:
        """Feed llhttp; True when it stopped at an upgrade."""
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            return True
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Done) or self.complete:
                return False
            if isinstance(exc.__context__, RequestRefused):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserInvalidMethodError:
            if _TOKEN_METHOD.match(data):     # a method, but none of ours
                raise RequestRefused(f"method {data.split(b' ', 1)[0][:40].decode('latin-1')!r}", status=405,
                                     public_reason="Method Not Allowed") from None
            raise _malformed("not an HTTP request") from None
        except httptools.HttpParserError as exc:
            if self.request is None:             # still in the head
                raise _malformed(str(exc)) from None
            raise RequestRefused(f"malformed request body: {exc}", status=400,
                                 public_reason="Bad Request: malformed request body") from None
        return False

    # -- llhttp's callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value.strip(b" \t")))

    def on_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.max_body:
            raise RequestRefused("body too large", status=413,
                                 public_reason=f"Content Too Large: the body is over {self.max_body} bytes")

    def on_message_complete(self) -> None:
        self.complete = True
        raise _Done                           # whatever follows the request is not parsed

    def _too_large(self) -> RequestRefused:
        return RequestRefused("request head too large", status=431,
                              public_reason="Request Header Fields Too Large: the request head is over "
                                            f"{self.max_head} bytes")


def _malformed(detail: str) -> RequestRefused:
    return RequestRefused(f"malformed HTTP request: {detail}", status=400,
                          public_reason="Bad Request: malformed HTTP request")


def header(request: Request, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), decoded as latin-1."""
    values = header_values(request.headers, name)
    return values[0] if values else None


def _content_length(request: Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
