"""``wsrelay agents apply|delete|list``: the fleet's shared agents, kept in Redis.

``apply FILE`` reads the ``[[agents]]`` tables of a TOML file with the rules of
``wsrelay check`` (every error with its key and line, exit 2) and writes them all in one
Redis transaction, or none; every relay of the fleet routes them within a second.
``--config`` is a relay's config, read for its ``[fleet] redis_url``.
"""

from __future__ import annotations

import asyncio

from .. import config as config_mod
from ..errors import ConfigError, FleetError


def add_parser(sub) -> None:
    agents = sub.add_parser("agents", help="the fleet's shared agents in Redis: apply, delete, list")
    verbs = agents.add_subparsers(dest="agents_command", required=True)
    apply = verbs.add_parser("apply", help="add or replace the [[agents]] of a TOML file, all or nothing")
    apply.add_argument("file", help="TOML file with [[agents]] tables")
    delete = verbs.add_parser("delete", help="remove one agent")
    delete.add_argument("service_host", help="{agent}.{org}")
    listing = verbs.add_parser("list", help="print the agents in Redis")
    for verb in (apply, delete, listing):
        verb.add_argument("--config", required=True, help="the relay's config file, for [fleet] redis_url")


def cmd_agents(args) -> int:
    cfg = config_mod.fleet_redis_url_from_env(config_mod.load_config(args.config))
    if not cfg.fleet.enabled:
        raise ConfigError("wsrelay agents needs [fleet] redis_url in the config: the Redis the relays share",
                          key="fleet.redis_url", source=cfg.source)
    if args.agents_command == "apply":
        agents = config_mod.load_config(args.file).agents
        if not agents:
            raise ConfigError("no [[agents]] table in the file: nothing to apply", source=args.file)
        return asyncio.run(_apply(cfg, list(agents)))
    if args.agents_command == "delete":
        return asyncio.run(_delete(cfg, args.service_host))
    return asyncio.run(_list(cfg))


def _link(cfg):
    from .redis_link import RedisLink
    assert cfg.fleet.redis_url is not None
    return RedisLink(cfg.fleet.redis_url, timeout=5.0)


async def _apply(cfg, agents) -> int:
    from .agents import apply_agents
    link = _link(cfg)
    try:
        await apply_agents(link, agents)
    finally:
        await link.close()
    print(f"applied {len(agents)} agent(s) to {link.shown}: " + ", ".join(a.service_host for a in agents))
    return 0


async def _delete(cfg, service_host: str) -> int:
    from .agents import delete_agent
    link = _link(cfg)
    try:
        removed = await delete_agent(link, service_host)
    finally:
        await link.close()
    if not removed:
        raise FleetError(f"no agent {service_host} in Redis at {link.shown}; 'wsrelay agents list' shows them")
    print(f"deleted {service_host}")
    return 0


async def _list(cfg) -> int:
    from .agents import list_agents
    link = _link(cfg)
    try:
        agents, problems = await list_agents(link)
    finally:
        await link.close()
    file_hosts = {a.service_host for a in cfg.agents}
    for host in sorted(agents):
        agent = agents[host]
        notes = [f"max_sessions={agent.max_sessions}" if agent.max_sessions else "",
                 f"regions={','.join(agent.regions)}" if agent.regions else "",
                 "shadowed by the config file" if host in file_hosts else ""]
        print(f"{host}\t{' '.join(agent.upstreams)}\t{' '.join(n for n in notes if n)}".rstrip())
    for problem in problems:
        print(f"# {problem}")
    return 0
