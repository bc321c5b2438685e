"""What a running relay takes from a reloaded file, sans-I/O.

A reload (``SIGHUP``, or the file changing) brings the agents, ``[auth]`` and the
``[relay]`` keys read per request (``RELOADED_RELAY_KEYS``); the listener, its bounds, the
nonce store, ``[fleet]`` and ``[webhooks]`` were set up at start and need a restart. The
relay logs the keys that wait, so a change that did not take effect is never silent.
"""

from __future__ import annotations

import dataclasses

from .schema import Config

RELOADED_RELAY_KEYS = frozenset({"cors_origins"})       # read per request: they follow the file
RESTART_TABLES = ("fleet", "webhooks")                   # set up at start: kept until a restart


def reloaded(running: Config, new: Config) -> tuple[Config, list[str]]:
    """The configuration to run with after ``new`` is read, and the changed keys (``relay.port``,
    ``[fleet]``) that keep their running value until a restart."""
    waiting = [f"relay.{f.name}" for f in dataclasses.fields(new.relay)
               if f.name not in RELOADED_RELAY_KEYS and getattr(new.relay, f.name) != getattr(running.relay, f.name)]
    waiting += [f"[{name}]" for name in RESTART_TABLES if getattr(new, name) != getattr(running, name)]
    relay = dataclasses.replace(running.relay, **{key: getattr(new.relay, key) for key in RELOADED_RELAY_KEYS})
    kept = {name: getattr(running, name) for name in RESTART_TABLES}
    return dataclasses.replace(new, relay=relay, **kept), waiting
