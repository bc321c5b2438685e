"""Plain HTTP for the relay's two listeners: one bounded request reader, one response writer.

The public gate and the admin listener both read exactly one request per connection
with ``RequestReader`` (h11 underneath, with a head-size limit, the head rules of
``core.upgrade.check_head`` and a body limit) and answer with ``http_response``.
"""

from __future__ import annotations

from http import HTTPStatus

import h11

from ..core.upgrade import check_head, declares_body, header_values
from ..errors import RequestRefused


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


class RequestReader:
    """One request, fed as it arrives; ``feed`` says when it is complete.

    Bounds: the head (request line and headers) at most ``max_head`` bytes, at most
    ``check_head``'s header count, a body only on POST and at most ``max_body`` bytes.
    Anything else raises ``RequestRefused`` with the status to answer. Once complete,
    ``request``, ``head_size``, ``body`` and ``trailing`` (bytes after the request: a
    WebSocket client's early frames) are set.
    """

    def __init__(self, max_head: int, max_body: int) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.trailing = b""
        self.complete = False
        self._h11: h11.Connection | None = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._raw = bytearray()              # what arrived until the head was parsed
        self._received = 0

    def feed(self, data: bytes) -> bool:
        """Take ``data``; True once the request is complete. Raises RequestRefused."""
        if self.complete or self._h11 is None:
            return self.complete
        self._received += len(data)
        if self.request is None:
            self._raw += data                # bounded: an incomplete head over max_head is a 431
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint or 400
                if status == 431:
                    raise self._too_large() from None
                raise RequestRefused(f"malformed HTTP request: {exc}", status=status,
                                     public_reason=f"{HTTPStatus(status).phrase}: malformed HTTP request") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return False
            if isinstance(event, h11.Request):
                self._take_head(event)
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > self.max_body:
                    raise RequestRefused("body too large", status=413, public_reason="Content Too Large")
            elif isinstance(event, h11.EndOfMessage):
                self.trailing = bytes(self._h11.trailing_data[0])
                self._h11 = None
                self.complete = True
                return True
            elif isinstance(event, h11.ConnectionClosed):
                raise RequestRefused("connection closed mid-request", status=400)

    def _take_head(self, request: h11.Request) -> None:
        """Check a complete head before anything else happens."""
        self.request = request
        assert self._h11 is not None
        head_size = self._received - len(self._h11.trailing_data[0])
        raw, self._raw = self._raw, bytearray()
        if head_size > self.max_head:
            raise self._too_large()
        check_head(bytes(raw[:head_size]), request.headers)
        length = _content_length(request)
        if length is not None and length > self.max_body:
            raise RequestRefused(f"body of {length} bytes", status=413, public_reason="Content Too Large")
        if request.method != b"POST" and declares_body(request.headers):
            # A GET (upgrade) with a body is a request-smuggling shape: refuse it now
            # rather than wait for a body that may never come.
            raise RequestRefused(f"{request.method.decode('latin-1')} request with a body", status=400,
                                 public_reason="Bad Request: this request must not have a body")

    def _too_large(self) -> RequestRefused:
        return RequestRefused("request head too large", status=431,
                              public_reason="Request Header Fields Too Large: the request head is over "
                                            f"{self.max_head} bytes")


def header(request: h11.Request, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), decoded as latin-1."""
    values = header_values(request.headers, name)
    return values[0] if values else None


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
