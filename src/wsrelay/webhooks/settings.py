"""``WebhookSettings``: what the sender and the outbox need, from the ``[webhooks]`` table.

The table's keys are declared once, with their checks and messages, in the configuration
(config/schema.py's ``WebhooksConfig``, config/rules.py); a relay makes its settings from
the checked table with ``from_config``, and in a fleet the outbox is in the fleet's Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import WebhooksConfig
from .events import EVENT_TYPES


@dataclass(frozen=True)
class WebhookSettings:
    """Where session events go, how they are signed, and where they wait.

    ``url``: the receiver. ``secret``: ``whsec_`` and the base64 of the key of every
    signature. ``events``: which of ``session.started`` and ``session.ended`` to send.
    ``spool``: the SQLite file of the outbox on a single relay. ``redis_url``: the fleet's
    Redis; when set the outbox is there instead, and any relay delivers any relay's events.
    ``max_pending``: events kept waiting at most; past it the oldest are dropped.
    ``timeout``: seconds a receiver has to answer one attempt.
    """

    url: str
    secret: str = field(repr=False)             # never in a log line or a traceback
    events: frozenset[str] = field(default_factory=lambda: frozenset(EVENT_TYPES))
    spool: str = WebhooksConfig.spool
    redis_url: str | None = None
    max_pending: int = WebhooksConfig.max_pending
    timeout: float = WebhooksConfig.timeout

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", frozenset(self.events))

    @classmethod
    def from_config(cls, table: WebhooksConfig, *, redis_url: str | None) -> "WebhookSettings":
        """The settings of a checked ``[webhooks]`` table with a receiver (``table.enabled``)."""
        assert table.url is not None and table.secret is not None, "the config requires both"
        return cls(url=table.url, secret=table.secret, events=frozenset(table.events), spool=table.spool,
                   redis_url=redis_url, max_pending=table.max_pending, timeout=table.timeout)
