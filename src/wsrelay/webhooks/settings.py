"""The ``[webhooks]`` table, checked: ``WebhookSettings``.

Every error is a ``ConfigError`` naming its key, with a sentence saying what to write.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError
from .events import EVENT_TYPES

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24          # Standard Webhooks: secrets of 24 to 64 random bytes
MAX_KEY_BYTES = 64


@dataclass(frozen=True)
class WebhookSettings:
    """Where session events go, how they are signed, and where they wait.

    ``url``: the receiver (``http://`` or ``https://``). ``secret``: ``whsec_`` and the
    base64 of 24 to 64 random bytes, the key of every signature. ``events``: which of
    ``session.started`` and ``session.ended`` to send (both by default). ``spool``: the
    SQLite file of the outbox on a single relay. ``redis_url``: the fleet's Redis; when set
    the outbox is there instead, and any relay delivers any relay's events.
    ``max_pending``: events kept waiting at most; past it the oldest are dropped.
    ``timeout``: seconds a receiver has to answer one attempt.
    """

    url: str
    secret: str = field(repr=False)             # never in a log line or a traceback
    events: frozenset[str] = field(default_factory=lambda: frozenset(EVENT_TYPES))
    spool: str = "wsrelay-webhooks.sqlite3"
    redis_url: str | None = None
    max_pending: int = 100_000
    timeout: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the webhook receiver must be an http:// or https:// URL with a host, "
                              f"not {self.url!r}", key="webhooks.url")
        if not isinstance(self.secret, str) or not self.secret.startswith(SECRET_PREFIX):
            raise ConfigError("the webhook secret must start with 'whsec_' followed by base64 of 24 to 64 random "
                              "bytes (e.g. python -c \"import base64,os; print('whsec_' + "
                              "base64.b64encode(os.urandom(32)).decode())\")", key="webhooks.secret")
        try:
            key = base64.b64decode(self.secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the webhook secret after 'whsec_' is not base64: write 'whsec_' followed by "
                              "the base64 of 24 to 64 random bytes", key="webhooks.secret") from None
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ConfigError(f"the webhook secret's key is {len(key)} bytes: it must be 24 to 64 random bytes, "
                              "base64 after 'whsec_'", key="webhooks.secret")
        events = frozenset(self.events)
        unknown = sorted(events - set(EVENT_TYPES))
        if unknown or not events:
            raise ConfigError(f"webhook events must be one or both of {', '.join(EVENT_TYPES)}"
                              + (f", not {', '.join(unknown)}" if unknown else ""), key="webhooks.events")
        object.__setattr__(self, "events", events)
        if self.redis_url is None and (not isinstance(self.spool, str) or not self.spool):
            raise ConfigError("the webhook spool must be the path of an SQLite file (it is created if missing)",
                              key="webhooks.spool")
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"the webhooks' Redis must be a redis://, rediss:// or unix:// URL, not "
                              f"{self.redis_url!r}", key="webhooks.redis_url")
        if isinstance(self.max_pending, bool) or not isinstance(self.max_pending, int) or self.max_pending < 1:
            raise ConfigError(f"webhooks max_pending must be a whole number of events, at least 1, not "
                              f"{self.max_pending!r}", key="webhooks.max_pending")
        if (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                or not math.isfinite(self.timeout) or not 0 < self.timeout <= 300):
            raise ConfigError(f"the webhook timeout must be a number of seconds above 0 and at most 300, not "
                              f"{self.timeout!r}", key="webhooks.timeout")
