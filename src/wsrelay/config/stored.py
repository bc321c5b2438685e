"""Agents kept outside the file: the fleet's registry in Redis holds each as the table it was written as.

``wsrelay agents apply`` stores ``agent_to_dict`` as JSON; every relay reads it back with
``agent_from_dict``, by the rules of the file, so a stored agent is never trusted more than
a written one.
"""

from __future__ import annotations

from .checker import Checker
from .load import check_agent
from .schema import AgentConfig, keys_of


def agent_to_dict(agent: AgentConfig) -> dict:
    """An agent as the table it was written as (what ``wsrelay agents apply`` stores).

    Keys declared ``stored_when_set`` are left out while unset (at their default): a relay of a
    version that did not know them, which refuses unknown keys, still reads the agent.
    """
    table: dict = {}
    for key in keys_of(AgentConfig):
        value = getattr(agent, key.name)
        if key.extra.get("stored_when_set") and value == key.default:
            continue
        table[key.name] = list(value) if isinstance(value, tuple) else value
    return table


def agent_from_dict(table: object, source: str) -> AgentConfig:
    """An agent from a stored table, checked by the rules of the file (ConfigErrors if not)."""
    check = Checker({}, source)
    agent = check_agent(check, 0, table)
    check.finish()
    assert agent is not None            # check_agent returns None only after an error
    return agent
