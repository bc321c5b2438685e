"""One relay's part in a fleet (``[fleet] redis_url``): its Redis link, the fleet's agents,
its sessions' leases and their entries in the session directory (the Session API's, made
with its first use), started and closed together.

The relay asks nothing of a fleet but these three; a single relay (no ``redis_url``) has
no ``Fleet`` and needs nothing but itself. The background work (the agents' refresh, the
leases' renewal) starts with ``start`` and ends with ``close``; a Redis that is away at
start is logged by the registry's loop, not waited for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..config import AgentConfig, FleetConfig
from .agents import FleetRegistry
from .leases import FleetCapacity
from .redis_link import RedisDown, RedisLink

if TYPE_CHECKING:
    from .session_directory import SessionDirectory

log = logging.getLogger("wsrelay.relay")


class Fleet:
    """The link, the agents (the file's and Redis') and the leases of one relay in a fleet."""

    def __init__(self, config: FleetConfig, file_agents: Iterable[AgentConfig], *, region: str | None) -> None:
        assert config.redis_url, "a Fleet is made for [fleet] redis_url"
        self.config = config
        self.relay_id = config.relay_id or f"{socket.gethostname()}:{os.getpid()}"
        self.link = RedisLink(config.redis_url)
        self.registry = FleetRegistry(file_agents, self.link, region=region)
        self.leases = FleetCapacity(self.link, relay_id=self.relay_id, lease_seconds=config.lease_seconds)
        self._sessions: "SessionDirectory | None" = None
        self._resumable: "SessionDirectory | None" = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Load the fleet's agents (bounded), then keep them fresh and the leases renewed."""
        loop = asyncio.get_running_loop()
        try:
            await self.registry.refresh()
        except RedisDown:
            pass                      # registry.run says so in one line, and keeps trying
        self._tasks += [loop.create_task(self.registry.run()), loop.create_task(self.leases.run())]
        log.info("fleet: relay %s, Redis at %s, leases of %gs", self.relay_id, self.link.shown,
                 self.config.lease_seconds)

    async def close(self) -> None:
        """Stop the background work, give back the leases, close the link."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.leases.close()
        for directory in (self._sessions, self._resumable):
            if directory is not None:
                await directory.close()
        await self.link.close()

    def session_directory(self) -> "SessionDirectory":
        """The fleet's session directory (fleet/session_directory.py), made and renewed from its
        first use on (a relay's first Session API request or session): imported only then."""
        if self._sessions is None:
            from .session_directory import SessionDirectory
            self._sessions = SessionDirectory(self.link, lease_seconds=self.config.lease_seconds)
            self._tasks.append(asyncio.get_running_loop().create_task(self._sessions.run()))
        return self._sessions

    @property
    def resumable(self) -> "SessionDirectory":
        """Which relay holds each resumable session (its internal_url), for session resume; made
        and renewed from its first use on (a relay's first resumable session or resume)."""
        if self._resumable is None:
            from .session_directory import RESUME_PREFIX, SessionDirectory
            self._resumable = SessionDirectory(self.link, lease_seconds=self.config.lease_seconds,
                                               prefix=RESUME_PREFIX)
            self._tasks.append(asyncio.get_running_loop().create_task(self._resumable.run()))
        return self._resumable
