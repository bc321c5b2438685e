"""Each refusal declared once (errors.py) in both forms a client is refused in: the HTTP answer
before its upgrade, and the close frame once it has its 101 (a provider's held call)."""

from __future__ import annotations

import pytest

from wsrelay.admission.auth import no_signing_key
from wsrelay.config import AgentConfig
from wsrelay.errors import (SHUTDOWN_CLOSE, AuthError, CapacityError, CapacityUnavailable, Draining, FrameError,
                            NonceStoreUnavailable, ProviderRefused, RequestRefused, RouteError, UpstreamRejected,
                            UpstreamTimeout, UpstreamUnreachable)

CASES = [
    # (refusal, HTTP status before the upgrade, close code after it, close reason after it)
    (Draining("5"), 503, 1012, SHUTDOWN_CLOSE[1]),
    (RouteError("no such agent", status=404, public_reason="Not Found"), 404, 1008, "Not Found"),
    (AuthError("no token", status=401), 401, 1008, "forbidden: auth failed"),
    (AuthError("bad signature"), 403, 1008, "forbidden: auth failed"),
    (NonceStoreUnavailable("redis away"), 503, 1013, "tokens cannot be checked now, try again later"),
    (no_signing_key(AgentConfig("a", "b", ("ws://127.0.0.1:1/",)), "check"), 503, 1013,
     "tokens cannot be checked now, try again later"),
    (CapacityError("at max_sessions"), 429, 1013, "agent at its session limit, try again later"),
    (CapacityUnavailable("redis away"), 503, 1013, "session limit cannot be checked now"),
    (UpstreamUnreachable("every instance refused"), 502, 1014, "Bad Gateway: no bot instance could be reached"),
    (UpstreamTimeout("no answer"), 504, 1014, "Gateway Timeout: the bot did not answer in time"),
    (UpstreamRejected("the bot said 403", 403), 403, 1014, "The bot refused the connection"),
]


@pytest.mark.parametrize("refusal,status,code,reason", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_every_refusal_has_an_http_answer_and_a_close_frame(refusal, status, code, reason):
    assert refusal.status == status and refusal.public_reason
    assert refusal.as_close() == (code, reason)
    assert 1000 <= code <= 4999 and len(reason.encode()) <= 123      # fits a close frame


def test_refusals_after_the_upgrade_only_are_close_frames():
    assert ProviderRefused("first messages wrong").as_close() == (1008, "first messages wrong")
    assert FrameError("unmasked", public_reason="protocol error").as_close() == (1002, "protocol error")


def test_headers_of_an_upstream_refusal_are_its_own():
    first, second = UpstreamTimeout("a"), UpstreamTimeout("b")
    first.headers["X"] = "1"                 # a property: no dict shared through the class
    assert second.headers == {} and isinstance(RequestRefused("x").headers, dict)
