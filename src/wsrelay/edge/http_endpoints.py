"""The public port's plain HTTP endpoints: the start API's answer on a gate, and the CORS
preflight of both APIs.

The relay's dispatch finds the endpoint; what the start API decides is
admission/start_api.py's (sans-I/O) and CORS is core/cors.py's. Here the two meet the
request as the gate read it and the answer goes back through the gate: a browser page of
a ``cors_origins`` origin may call it (a preflight gets its 204, and a refusal carries the
CORS headers so the page can read why). A refusal is raised as ``RequestRefused`` for the
relay's one way to refuse.
"""

from __future__ import annotations

import json

from ..admission.auth import Authenticator
from ..admission.registry import AgentRegistry
from ..admission.resume_tokens import ResumeTokens
from ..admission.start_api import StartRequest, handle_start
from ..config import Config
from ..core.cors import CorsPolicy, is_preflight
from ..errors import RequestRefused
from .gate import Gate
from .http import header


def answer_preflight(gate: Gate, cors: CorsPolicy, methods: str | None = None) -> bool:
    """Answer ``gate``'s request if it is a CORS preflight (204, or ``RequestRefused`` 403 with
    why); False if it is not one. ``methods``: what the endpoint allows (the start API: POST)."""
    request = gate.request
    assert request is not None
    origin = header(request, b"origin")
    wanted_method = header(request, b"access-control-request-method")
    if not is_preflight(request.method, origin, wanted_method):
        return False
    wanted_headers = header(request, b"access-control-request-headers")
    preflight = cors.preflight(origin, wanted_method, wanted_headers, **({"methods": methods} if methods else {}))
    if preflight.status != 204:
        raise RequestRefused(f"CORS preflight from {(origin or '')[:100]!r} refused: {preflight.reason}",
                             status=403, public_reason=f"Forbidden: {preflight.reason}", headers=preflight.headers)
    gate.respond(204, "", preflight.headers)
    return True


def answer_start_api(gate: Gate, agent_name: str, *, registry: AgentRegistry, config: Config,
                     authenticator: Authenticator, secure: bool, resume_tokens: ResumeTokens | None = None) -> None:
    """Answer ``POST /v1/public/{agent_name}/start`` (or its preflight) on ``gate``."""
    request = gate.request
    assert request is not None
    cors = CorsPolicy(config.relay.cors_origins)
    if answer_preflight(gate, cors):
        return
    cors_headers = cors.response_headers(header(request, b"origin"))
    try:
        answer = handle_start(
            StartRequest(method=request.method.decode("latin-1"), agent_name=agent_name,
                         authorization=header(request, b"authorization"),
                         host=header(request, b"host"), body=gate.body),
            registry=registry, config=config, authenticator=authenticator, secure=secure,
            resume_tokens=resume_tokens)
    except RequestRefused as exc:
        exc.headers.update(cors_headers)      # so the page can read why it was refused
        raise
    gate.respond(200, json.dumps(answer), {"Content-Type": "application/json",
                                           "Cache-Control": "no-store", **cors_headers})
