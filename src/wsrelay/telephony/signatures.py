"""Provider request signatures, sans-I/O: Twilio's ``X-Twilio-Signature`` on the upgrade.

Twilio signs each request it makes, the WebSocket upgrade of a ``<Stream>`` included:
``base64(HMAC-SHA1(auth_token, url))`` where ``url`` is the URL exactly as written in
the TwiML (a GET: no body parameters to append). Behind a proxy the relay cannot know
that URL for sure (TLS terminated elsewhere, a default port written or not), so the
signature is accepted if it matches any of a few spellings of the same URL
(``candidate_urls``); each match still needs the account's auth token. Compared in
constant time.

Telnyx signs webhooks with ed25519 over ``timestamp|body``; it documents no signature
for the WebSocket upgrade of a media stream (which has no body), so there is nothing to
verify there: use ``websocket_auth = "token"`` with ``&token=`` in its ``stream_url``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

TWILIO_SIGNATURE_HEADER = "x-twilio-signature"
_DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}


def twilio_signature(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """Twilio's signature of a request to ``url`` (with POST ``params``, sorted, appended)."""
    data = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def candidate_urls(target: str, *, host: str, public_url: str | None) -> list[str]:
    """The URLs a provider may have signed for a request to ``target`` (path and query).

    From ``public_url`` when the relay has one, else ``wss://`` and ``ws://`` with the
    request's ``Host``; each with and without its scheme's default port.
    """
    bases = [public_url.rstrip("/")] if public_url else [f"wss://{host}", f"ws://{host}"]
    urls: list[str] = []
    for base in bases:
        for spelling in _port_spellings(base):
            url = spelling + target
            if url not in urls:
                urls.append(url)
    return urls


def _port_spellings(base: str) -> list[str]:
    """``base`` with and without its scheme's default port; ``base`` alone when it does not
    parse (a hostile ``Host`` such as ``[x``: its signature simply cannot match)."""
    try:
        parts = urlsplit(base)
        port = parts.port
    except ValueError:
        return [base]
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None or parts.hostname is None:
        return [base]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    prefix = f"{parts.scheme}://"
    without, with_port = prefix + host + parts.path, f"{prefix}{host}:{default}{parts.path}"
    if port is None:
        return [base, with_port]
    if port == default:
        return [base, without]
    return [base]


def verify_twilio_signature(auth_token: str, signature: str | None, urls: list[str]) -> bool:
    """True when ``signature`` is Twilio's for one of ``urls`` (constant-time per URL)."""
    if not signature or not auth_token:
        return False
    given = signature.strip().encode("ascii", "replace")
    ok = False
    for url in urls:
        expected = twilio_signature(auth_token, url).encode("ascii")
        ok |= hmac.compare_digest(expected, given)
    return ok
