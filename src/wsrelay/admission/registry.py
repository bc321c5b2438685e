"""The agent registry: which agents exist, looked up by service host.

An interface so the store can change: the TOML file (``StaticRegistry``), and for
fleets the file plus the agents applied to Redis (fleet/agents.py). Lookups
are synchronous and cheap because they sit on the handshake path; a remote backend keeps
a local copy and refreshes it in the background.

Regions (``[relay] region``, agent ``regions``): a regional relay knows only the agents
deployed in its region, so any other is ``404``, the same answer as an unknown one.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

from ..config import AgentConfig


class AgentRegistry(abc.ABC):
    """Finds an agent by ``agent.org``."""

    @abc.abstractmethod
    def lookup(self, service_host: str) -> AgentConfig | None:
        """The agent for ``service_host``, or None when the agent or organisation is unknown."""

    @abc.abstractmethod
    def agents(self) -> list[AgentConfig]:
        """Every agent currently known."""

    def find_by_name(self, name: str) -> list[AgentConfig]:
        """Agents called ``name`` in any organisation (the start API names only the agent)."""
        return [a for a in self.agents() if a.name == name]


def serves(agent: AgentConfig, region: str | None) -> bool:
    """Whether a relay of ``region`` serves ``agent``: a relay without a region, or an agent
    without ``regions``, means everywhere."""
    return region is None or not agent.regions or region in agent.regions


class StaticRegistry(AgentRegistry):
    """Agents from a config file; ``replace`` swaps them all at once (reload)."""

    def __init__(self, agents: Iterable[AgentConfig], *, region: str | None = None) -> None:
        self.region = region
        self._by_host: dict[str, AgentConfig] = {}
        self.replace(agents)

    def replace(self, agents: Iterable[AgentConfig]) -> None:
        self._by_host = {a.service_host: a for a in agents if serves(a, self.region)}

    def lookup(self, service_host: str) -> AgentConfig | None:
        return self._by_host.get(service_host)

    def agents(self) -> list[AgentConfig]:
        return list(self._by_host.values())
