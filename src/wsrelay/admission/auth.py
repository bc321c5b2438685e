"""Token auth for agents with ``websocket_auth = "token"``, around tokens.py
(docs/tokens.md).

``tokens.py`` mints and verifies (pure functions); this module adds what needs state:
the signing keys of the running config, the clock, and the single-use nonce store.
The token is taken from, in order, ``Authorization: Bearer``, ``?token=``, or the extra
path segment. A missing token is 401; anything else wrong is 403; the precise reason
goes to the log only.
"""

from __future__ import annotations

import time
from typing import Callable

from ..config import AgentConfig, AuthConfig, Config
from ..core.routing import Route
from ..core.tokens import TokenClaims, mint_token, missing_token_error, nonce_lifetime, verify_token
from ..core.upgrade import UpgradeRequest
from ..errors import AuthError, TokenError
from ..telephony.signatures import TWILIO_SIGNATURE_HEADER, verify_twilio_signature
from .nonces import MemoryNonceStore, NonceStore


class Authenticator:
    """Checks a routed request's token against the agent's policy."""

    def __init__(self, auth: AuthConfig, nonces: NonceStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.nonces = nonces or MemoryNonceStore()
        self.clock = clock

    async def check(self, route: Route, upgrade: UpgradeRequest, agent: AgentConfig, *,
                    urls: list[str] | None = None) -> TokenClaims | None:
        """None for an agent without token auth; the verified claims otherwise (or AuthError).

        ``urls``: the spellings of the request's URL a provider may have signed, for an
        agent with ``websocket_auth = "twilio-signature"`` (telephony/signatures.py).
        """
        if agent.websocket_auth == "twilio-signature":
            check_twilio_signature(agent, upgrade, urls or [])
            return None
        if agent.websocket_auth != "token":
            return None
        if not self.auth.keys:
            raise no_signing_key(agent, "check")
        token = upgrade.bearer_token or route.token
        if not token:
            raise missing_token_error()
        now = self.clock()
        claims = verify_token(token, service_host=route.service_host, keys=self.auth.keys,
                              now=now, leeway=self.auth.clock_skew)
        if not await self.nonces.claim(claims.nonce, nonce_lifetime(claims, now, self.auth.clock_skew)):
            raise AuthError("token replayed: its nonce was already used", status=403)
        return claims

    def can_mint(self) -> bool:
        return bool(self.auth.active_key) and self.auth.active_key in self.auth.keys

    def mint(self, service_host: str, *, ttl: int | None = None, session_id: str | None = None) -> str:
        return mint_token(service_host, keys=self.auth.keys, active_key=self.auth.active_key or "",
                          ttl=ttl or self.auth.token_ttl, now=self.clock(), session_id=session_id)


def no_signing_key(agent: AgentConfig, what: str) -> AuthError:
    """A token agent on a relay without a signing key (an agent from the fleet's Redis: the
    file's token agents need a key to start): 503, as another relay of the fleet may have one."""
    return AuthError(f"{agent.service_host} uses websocket_auth = \"token\" but this relay has no signing key "
                     "([auth] secret, or keys and active_key, or WSRELAY_AUTH_SECRET)", status=503,
                     public_reason=f"Service Unavailable: this relay cannot {what} tokens for this agent")


def check_twilio_signature(agent: AgentConfig, upgrade: UpgradeRequest, urls: list[str]) -> None:
    """AuthError (403) unless the upgrade carries Twilio's signature of its URL for this agent."""
    signatures = [v for n, v in upgrade.forward if n.lower() == TWILIO_SIGNATURE_HEADER]
    if len(signatures) != 1:
        raise AuthError(f"{'no' if not signatures else 'repeated'} X-Twilio-Signature header on the upgrade "
                        f"for {agent.service_host} (websocket_auth = \"twilio-signature\")", status=403)
    if not verify_twilio_signature(agent.twilio_auth_token or "", signatures[0], urls):
        raise AuthError(f"X-Twilio-Signature does not match the request URL ({urls[0] if urls else '?'}) "
                        f"signed with the twilio_auth_token of {agent.service_host}", status=403)


def mint_for_config(config: Config, service_host: str, *, ttl: int | None = None,
                    session_id: str | None = None) -> str:
    """One token for ``service_host`` signed with the config's active key (``wsrelay token``)."""
    known = {a.service_host for a in config.agents}
    if service_host not in known:
        raise TokenError(f"no agent {service_host!r} in the config; known: {', '.join(sorted(known)) or 'none'}")
    if not config.auth.keys:
        raise TokenError("no signing key: set [auth] secret (or keys + active_key) in the config, "
                         "or WSRELAY_AUTH_SECRET in the environment")
    return Authenticator(config.auth).mint(service_host, ttl=ttl, session_id=session_id)
