"""The fleet's shared agent registry: agents applied to Redis, seen by every relay.

What lives in Redis: one hash, ``wsrelay:agents`` (service host → the agent's table as
JSON, checked by the file's rules when written and again when read), and one pub/sub
channel, ``wsrelay:agents:changed``, on which ``wsrelay agents apply|delete`` announce a
change. Each relay keeps a local copy — lookups on the handshake path stay synchronous
and never wait for Redis — and re-reads the whole hash when told of a change (within a
second) and every ``REFRESH_SECONDS`` anyway (a message lost while a relay was
reconnecting costs at most that). Redis away: the relay keeps routing the agents it knew.

The file wins: an agent in both the relay's file and Redis is the file's, and the
conflict is logged once. Live sessions keep the agent settings they started with (the
session holds its ``AgentConfig``; a refresh only swaps the dictionary lookups use).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

from ..admission.registry import AgentRegistry, serves
from ..config import AgentConfig, agent_from_dict, agent_to_dict
from ..errors import ConfigError, FleetError
from .redis_link import RedisDown, RedisLink

log = logging.getLogger("wsrelay.registry")

AGENTS_KEY = "wsrelay:agents"
CHANNEL = "wsrelay:agents:changed"
REFRESH_SECONDS = 5.0
RECONNECT_SECONDS = 1.0


def decode_agents(raw: dict) -> tuple[dict[str, AgentConfig], list[str]]:
    """The agents of the Redis hash, and a sentence per entry that is not a valid agent."""
    agents: dict[str, AgentConfig] = {}
    problems: list[str] = []
    for field, value in raw.items():
        host = field.decode("utf-8", "replace") if isinstance(field, bytes) else str(field)
        try:
            agent = agent_from_dict(json.loads(value), f"redis {AGENTS_KEY}[{host}]")
        except (ValueError, RecursionError, ConfigError) as exc:      # RecursionError: JSON nested too deep
            problems.append(f"{AGENTS_KEY}[{host}] is not a valid agent, ignored: {str(exc)[:300]}")
            continue
        if agent.service_host != host:
            problems.append(f"{AGENTS_KEY}[{host}] holds agent {agent.service_host}, ignored")
            continue
        agents[host] = agent
    return agents, problems


class FleetRegistry(AgentRegistry):
    """The file's agents, then Redis' agents; refreshed in the background by ``run``."""

    def __init__(self, file_agents: Iterable[AgentConfig], link: RedisLink, *,
                 region: str | None = None, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.link = link
        self.region = region
        self.refresh_seconds = refresh_seconds
        self._file: dict[str, AgentConfig] = {}
        self._redis: dict[str, AgentConfig] = {}
        self._by_host: dict[str, AgentConfig] = {}
        self._conflicts_logged: set[str] = set()
        self._problems_logged: set[str] = set()
        self.replace(file_agents)

    # -- the local copy (synchronous) ---------------------------------------------------------

    def lookup(self, service_host: str) -> AgentConfig | None:
        return self._by_host.get(service_host)

    def agents(self) -> list[AgentConfig]:
        return list(self._by_host.values())

    def replace(self, agents: Iterable[AgentConfig]) -> None:
        """The file's agents changed (reload)."""
        self._file = {a.service_host: a for a in agents}
        self._merge()

    def _merge(self) -> None:
        for host in self._file.keys() & self._redis.keys():
            if host not in self._conflicts_logged:
                self._conflicts_logged.add(host)
                log.warning("agent %s is both in the config file and in Redis (%s): the file's is used",
                            host, AGENTS_KEY)
        merged = {h: a for h, a in self._redis.items() if h not in self._file}
        merged.update(self._file)
        self._by_host = {h: a for h, a in merged.items() if serves(a, self.region)}

    # -- keeping it current -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read every agent from Redis (RedisDown when it does not answer)."""
        client = self.link.client
        raw = await self.link.call(lambda: client.hgetall(AGENTS_KEY))
        agents, problems = decode_agents(raw)
        for problem in problems:
            if problem not in self._problems_logged:
                self._problems_logged.add(problem)
                log.error("%s", problem)
        if agents.keys() != self._redis.keys():
            added = sorted(agents.keys() - self._redis.keys())
            removed = sorted(self._redis.keys() - agents.keys())
            log.info("fleet agents: %d (added: %s; removed: %s)", len(agents),
                     ", ".join(added) or "none", ", ".join(removed) or "none")
        self._redis = agents
        self._merge()

    async def run(self) -> None:
        """Follow the change channel, refreshing on each message and every ``refresh_seconds``."""
        down_logged = False
        while True:
            pubsub = self.link.client.pubsub()
            try:
                await self.link.call(lambda: pubsub.subscribe(CHANNEL))
                await self.refresh()                 # after subscribing: no change falls between
                if down_logged:
                    log.info("fleet registry: Redis is back, %d agent(s) from Redis", len(self._redis))
                down_logged = False
                loop = asyncio.get_running_loop()
                last = loop.time()
                while True:
                    message = await self.link.call(
                        lambda: pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0),
                        timeout=self.link.timeout + 1.0)
                    _raise_if_cancelled()            # redis-py may swallow a cancellation in get_message
                    if message is not None or loop.time() - last >= self.refresh_seconds:
                        await self.refresh()
                        last = loop.time()
            except RedisDown as exc:
                if not down_logged:
                    log.warning("fleet registry: %s; routing the %d agent(s) known", exc, len(self._by_host))
                    down_logged = True
            except Exception:                        # a bug: say so, keep following (a loop that died
                log.exception("fleet registry: refresh failed; routing the %d agent(s) known",  # would
                              len(self._by_host))                                             # freeze the agents)
            finally:
                try:
                    await asyncio.wait_for(pubsub.aclose(), 1.0)
                except Exception:                    # a dead connection: nothing to close cleanly
                    pass
            _raise_if_cancelled()
            await asyncio.sleep(RECONNECT_SECONDS)


def _raise_if_cancelled() -> None:
    """Stop a background loop whose task was cancelled even if a library swallowed the CancelledError.

    ``Relay.stop`` cancels the registry's task and waits for it: a loop that went on would
    hang the shutdown.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# -- what ``wsrelay agents apply|delete|list`` do ---------------------------------------------

async def apply_agents(link: RedisLink, agents: list[AgentConfig]) -> None:
    """Write ``agents`` in one transaction (all or nothing), then tell every relay."""
    mapping = {a.service_host: json.dumps(agent_to_dict(a), separators=(",", ":")) for a in agents}

    async def write():
        async with link.client.pipeline(transaction=True) as pipe:
            pipe.hset(AGENTS_KEY, mapping=mapping)
            pipe.publish(CHANNEL, "apply " + " ".join(mapping))
            return await pipe.execute()
    await _fleet_call(link, write)


async def delete_agent(link: RedisLink, service_host: str) -> bool:
    """Remove one agent; False when Redis had no such agent."""
    async def remove():
        async with link.client.pipeline(transaction=True) as pipe:
            pipe.hdel(AGENTS_KEY, service_host)
            pipe.publish(CHANNEL, "delete " + service_host)
            return await pipe.execute()
    removed, _ = await _fleet_call(link, remove)
    return bool(removed)


async def list_agents(link: RedisLink) -> tuple[dict[str, AgentConfig], list[str]]:
    raw = await _fleet_call(link, lambda: link.client.hgetall(AGENTS_KEY))
    return decode_agents(raw)


async def _fleet_call(link: RedisLink, make):
    try:
        return await link.call(make)
    except RedisDown as exc:
        raise FleetError(f"{exc}; check [fleet] redis_url and that Redis is running") from None
