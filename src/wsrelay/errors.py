"""Every error wsrelay raises on purpose, in one hierarchy.

::

    WsrelayError                      anything wsrelay raises on purpose
    ├── ConfigError                   a configuration file or flag is wrong (names key and line)
    │   └── ConfigErrors              several ConfigError found in one file, reported together
    ├── RequestRefused                a client request is refused (carries the HTTP status to
    │   │                             answer with before the upgrade, and ``as_close()``, the
    │   │                             close frame that refuses a client already upgraded)
    │   ├── Draining                  503 / 1012 the relay is shutting down
    │   ├── RouteError                400 malformed / 404 unknown service host or path
    │   ├── AuthError                 401 token missing / 403 token invalid
    │   │   └── NonceStoreUnavailable 503 the shared nonce store (Redis) did not answer
    │   ├── ResumeRefused             404 the session to resume has ended / 409 ``received`` cannot be replayed
    │   └── CapacityError             429 agent at max_sessions (carries Retry-After)
    │       └── CapacityUnavailable   503 the fleet's Redis did not answer for a capped agent
    ├── UpstreamError                 no bot instance could take the session
    │   │                             (carries the HTTP status to answer with; 1014 after the upgrade)
    │   ├── UpstreamUnreachable       502: every instance refused or was unreachable
    │   ├── UpstreamTimeout           504: connecting or the bot's handshake timed out
    │   └── UpstreamRejected          the bot answered the upgrade with an HTTP error
    ├── SessionRefused                a provider session refused after its upgrade
    │   │                             (carries the close code and reason to send)
    │   ├── ProviderRefused           1008 first messages wrong, unknown agent, no start in time
    │   └── FrameError                1002 the held first frames break RFC 6455
    ├── TokenError                    a token could not be minted (e.g. no signing key)
    ├── FleetError                    the fleet's Redis cannot be used (``wsrelay agents``)
    └── ListenError                   a listener could not be opened (port busy, address not here)

Messages are sentences a user can act on: they say what was wrong and what to do.
The reason given to a refused client is deliberately short; the full reason goes to the log.

A refusal is declared once, here, in both forms a client can be refused in: an HTTP answer
while its request is being decided (``status``, ``public_reason``, ``headers``), and a close
frame once it has its ``101`` (``as_close()``: a provider endpoint holds the call's first
messages before a bot is chosen). The relay picks the form from the client's state
(``Relay._refuse`` in edge/relay.py), never from the exception.
"""

from __future__ import annotations


class WsrelayError(Exception):
    """Base class of every error wsrelay raises on purpose."""


class ConfigError(WsrelayError):
    """A configuration value is wrong. ``key`` is the dotted key, ``line`` its 1-based line."""

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None,
                 source: str | None = None) -> None:
        self.message = message
        self.key = key
        self.line = line
        self.source = source
        super().__init__(self.describe())

    def describe(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source) + (f":{self.line}" if self.line else ""))
        elif self.line:
            where.append(f"line {self.line}")
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ConfigErrors(ConfigError):
    """Several configuration errors found in one pass; ``errors`` lists each one."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        message = "\n".join(e.describe() for e in self.errors)
        super().__init__(f"{len(self.errors)} error(s) in the configuration:\n{message}")

    def describe(self) -> str:  # the summary is already complete
        return self.message


class RequestRefused(WsrelayError):
    """A client request refused before any upgrade; ``status`` is the HTTP status to send.

    ``public_reason`` is what the client is told (short, leaks nothing); ``str(self)`` is
    the full reason for the log.
    """

    status: int = 400
    public_reason: str = "Bad Request"

    def __init__(self, reason: str, *, status: int | None = None,
                 public_reason: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        if status is not None:
            self.status = status
        if public_reason is not None:
            self.public_reason = public_reason
        self.headers = dict(headers or {})

    def as_close(self) -> tuple[int, str]:
        """The close code and reason that refuse a client already upgraded: 1013 Try Again
        Later for what a retry may pass (429, 503), 1008 Policy Violation otherwise."""
        return (1013 if self.status in (429, 503) else 1008), self.public_reason


SHUTDOWN_CLOSE = (1012, "relay restarting")     # to every side once the relay stops


class Draining(RequestRefused):
    """The relay is shutting down: 503 with ``Retry-After`` (a load balancer retries
    elsewhere), or 1012 to a client already upgraded."""

    status = 503
    public_reason = "Service Unavailable: the relay is shutting down"

    def __init__(self, retry_after: str) -> None:
        super().__init__("relay is draining", headers={"Retry-After": retry_after})

    def as_close(self) -> tuple[int, str]:
        return SHUTDOWN_CLOSE


class RouteError(RequestRefused):
    """The request does not name a known agent: 400 when malformed, 404 when unknown."""


class AuthError(RequestRefused):
    """The token is missing (401) or not acceptable (403)."""

    status = 403
    public_reason = "Forbidden"

    def as_close(self) -> tuple[int, str]:
        if self.status == 503:          # the nonce store or the signing key is away: it may pass later
            return 1013, "tokens cannot be checked now, try again later"
        return 1008, "forbidden: auth failed"


class ResumeRefused(RequestRefused):
    """A session resume (docs/resume.md) that cannot be: the session has ended (404), or the
    client's ``received`` is beyond what was sent or older than the buffer (409, saying which)."""

    status = 404
    public_reason = "Not Found: the session has ended"

    @classmethod
    def gone(cls, reason: str) -> "ResumeRefused":
        return cls(reason)

    @classmethod
    def conflict(cls, why: str) -> "ResumeRefused":
        return cls(f"resume refused: {why}", status=409, public_reason=f"Conflict: {why}")


class NonceStoreUnavailable(AuthError):
    """The nonce store did not answer, so single use cannot be checked: 503, never a pass."""

    status = 503
    public_reason = "Service Unavailable: token check unavailable, retry later"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"Retry-After": "1"})


class CapacityError(RequestRefused):
    """The agent is at ``max_sessions``: 429 with ``Retry-After``."""

    status = 429
    public_reason = "Too Many Requests: the agent is at its session limit, retry later"

    def as_close(self) -> tuple[int, str]:
        return 1013, "agent at its session limit, try again later"


class CapacityUnavailable(CapacityError):
    """The fleet's Redis did not answer, so a capped agent's count is unknown: 503, never a pass."""

    status = 503
    public_reason = "Service Unavailable: the session limit cannot be checked, retry later"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, headers={"Retry-After": "1"})

    def as_close(self) -> tuple[int, str]:
        return 1013, "session limit cannot be checked now"


class UpstreamError(WsrelayError):
    """No bot instance took the session; ``status`` is what the client gets, or 1014 Bad
    Gateway once it is upgraded."""

    status: int = 502

    @property
    def headers(self) -> dict[str, str]:
        return {}

    @property
    def public_reason(self) -> str:
        if self.status == 504:
            return "Gateway Timeout: the bot did not answer in time"
        if self.status == 502:
            return "Bad Gateway: no bot instance could be reached"
        return "The bot refused the connection"

    def as_close(self) -> tuple[int, str]:
        return 1014, self.public_reason


class UpstreamUnreachable(UpstreamError):
    """Every upstream instance refused the connection or could not be reached (502)."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """Connecting to the bot, or its WebSocket handshake, took longer than the limit (504)."""

    status = 504


class UpstreamRejected(UpstreamError):
    """The bot answered the upgrade with an HTTP error status, which is passed through."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SessionRefused(WsrelayError):
    """A session refused after its upgrade (a provider endpoint holds first messages).

    The client already has its ``101``, so the refusal is a close frame with ``code`` and
    ``public_reason`` (by default the full reason, ``str(self)``, which is also logged).
    Nothing was sent to a bot.
    """

    code: int = 1008

    def __init__(self, reason: str, *, code: int | None = None, public_reason: str | None = None) -> None:
        super().__init__(reason)
        if code is not None:
            self.code = code
        self.public_reason = public_reason or reason

    def as_close(self) -> tuple[int, str]:
        return self.code, self.public_reason


class ProviderRefused(SessionRefused):
    """The first messages are not the provider's protocol, or name no agent we serve (1008)."""

    code = 1008


class FrameError(SessionRefused):
    """The client's first frames break RFC 6455 itself (unmasked, reserved opcode): 1002."""

    code = 1002


class TokenError(WsrelayError):
    """A token could not be minted, e.g. the relay has no signing key configured."""


class FleetError(WsrelayError):
    """The fleet's Redis could not be reached or holds something unusable; the message says which."""


class ListenError(WsrelayError):
    """A listener could not be opened; the message names the address, the key and the flag."""
