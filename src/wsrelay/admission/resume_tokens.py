"""Resume tokens for one relay (docs/resume.md), around core/tokens.py: keys, clock, single use.

A resume token is signed with the config's ``[auth]`` keys, like the session tokens, so every
relay of a fleet that shares the keys verifies every other's. A relay without a key signs with
one of its own, made at start: its tokens verify on it alone (and die with it), which is all a
single relay needs. Single use is two checks: the session keeps the nonce of the one token it
handed out last (an older one is refused even before its expiry), and the nonce store (memory,
or Redis in a fleet) lets a token be claimed once, so two connections racing with the same
token cannot both resume.

A session's first token has a nonce derived from its id (``first_nonce``): the start API can
then hand a browser, which cannot read the headers of a ``101``, the same token as
``resumeToken`` before the session exists. Using either uses up both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Callable

from ..config import AuthConfig
from ..core.tokens import ResumeClaims, mint_resume_token, nonce_lifetime, verify_resume_token
from ..errors import AuthError
from .nonces import NonceStore

OWN_KEY_ID = "relay.resume"         # its own key's id: a dot, which no [auth] key id may hold


class ResumeTokens:
    """Mints a session's resume tokens and checks the ones presented."""

    def __init__(self, auth: AuthConfig, nonces: NonceStore, clock: Callable[[], float] = time.time) -> None:
        self.auth = auth                 # replaced on reload, as the Authenticator's
        self.nonces = nonces
        self.clock = clock
        self._own = {OWN_KEY_ID: secrets.token_urlsafe(32)}

    def _keys(self) -> tuple[dict[str, str], str]:
        if self.auth.keys and self.auth.active_key in self.auth.keys:
            return dict(self.auth.keys), self.auth.active_key or ""
        return self._own, OWN_KEY_ID

    def first_nonce(self, session_id: str) -> str:
        """The nonce of a session's first resume token: HMAC of its id with the signing key."""
        keys, active = self._keys()
        digest = hmac.new(keys[active].encode(), b"wsrelay-resume-nonce:" + session_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:18]).decode("ascii")

    def mint(self, service_host: str, session_id: str, ttl: float, *, first: bool = False) -> tuple[str, str]:
        """(token, its nonce): the session keeps the nonce, to know its current token. ``first``:
        the session's first token, the one the start API may have handed out already."""
        keys, active = self._keys()
        nonce = self.first_nonce(session_id) if first else secrets.token_urlsafe(18)
        token = mint_resume_token(service_host, session_id, keys=keys, active_key=active,
                                  ttl=max(1, int(ttl) + 1), now=self.clock(), nonce=nonce)
        return token, nonce

    def verify(self, token: str, service_host: str) -> ResumeClaims:
        """The claims of a well-signed, unexpired resume token for ``service_host``; AuthError (403)."""
        keys, _ = self._keys()
        return verify_resume_token(token, service_host=service_host, keys={**self._own, **keys},
                                   now=self.clock(), leeway=self.auth.clock_skew)

    async def claim(self, claims: ResumeClaims) -> None:
        """Use the token up; AuthError (403) when it was used already."""
        now = self.clock()
        if not await self.nonces.claim("resume:" + claims.nonce, nonce_lifetime(claims, now, self.auth.clock_skew)):
            raise AuthError("resume token replayed: it was used already", status=403)
