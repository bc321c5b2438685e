"""The ``wsrelay`` command: ``serve``, ``check``, ``token``.

``wsrelay serve`` without ``--config`` runs the embedded demo: agent ``echo.demo``
backed by the built-in echo bot, so ``wscat -c ws://localhost:8765/ws/generic/echo.demo``
answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import config as config_mod
from .errors import ConfigError, WsrelayError

log = logging.getLogger("wsrelay.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsrelay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the relay (the echo demo without --config)")
    serve.add_argument("--config", help="TOML config file (SPEC §4)")
    serve.add_argument("--host", help="listen address (overrides [relay] host)")
    serve.add_argument("--port", type=int, help="listen port (overrides [relay] port)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port")
    serve.add_argument("--log-format", choices=("auto", "json", "text"), help="log line format")
    serve.add_argument("--pure-python", action="store_true",
                       help="use the pure-Python pump (debugging)")

    check = sub.add_parser("check", help="validate a config file and explain every error")
    check.add_argument("--config", required=True)

    token = sub.add_parser("token", help="mint one token for an agent")
    token.add_argument("service_host", help="{agent}.{org}")
    token.add_argument("--config", required=True)
    token.add_argument("--ttl", type=int, help="lifetime in seconds (default [auth] token_ttl)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args)
        if args.command == "token":
            return cmd_token(args)
        return cmd_serve(args)
    except ConfigError as exc:
        print(f"wsrelay: {exc}", file=sys.stderr)
        return 2
    except WsrelayError as exc:
        print(f"wsrelay: {exc}", file=sys.stderr)
        return 1


def cmd_check(args) -> int:
    cfg = config_mod.load_config(args.config)
    print(f"{args.config}: OK, {len(cfg.agents)} agent(s): "
          + ", ".join(a.service_host for a in cfg.agents))
    return 0


def cmd_token(args) -> int:
    from .auth import mint_for_config
    cfg = config_mod.auth_secret_from_env(config_mod.load_config(args.config), os.environ)
    print(mint_for_config(cfg, args.service_host, ttl=args.ttl))
    return 0


def cmd_serve(args) -> int:
    from .session_log import setup_logging
    if args.pure_python:
        os.environ["WSRELAY_PURE_PYTHON"] = "1"
    if args.config:
        cfg = config_mod.auth_secret_from_env(config_mod.load_config(args.config), os.environ)
    else:
        cfg = None
    setup_logging(args.log_format or (cfg.relay.log_format if cfg else "auto"))
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:           # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.run
    return runner(serve(cfg, host=args.host, port=args.port, workers=args.workers))


async def serve(cfg, *, host=None, port=None, workers=None) -> int:
    """Run the relay until SIGTERM/SIGINT; returns the exit status."""
    from .server import Relay
    echo = None
    if cfg is None:
        from .echo_bot import start_echo_bot
        echo = await start_echo_bot()
        echo_port = echo.sockets[0].getsockname()[1]
        cfg = config_mod.demo_config(f"ws://127.0.0.1:{echo_port}/")
    cfg = config_mod.apply_overrides(cfg, host=host, port=port, workers=workers)
    relay = Relay(cfg)
    await relay.start()
    agents = ", ".join(a.service_host for a in relay.registry.agents()) or "none"
    log.info("wsrelay listening on ws://%s:%d (pump: %s; agents: %s)",
             cfg.relay.host, relay.port, relay.pump.IMPLEMENTATION, agents)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: os._exit(1))   # second signal: stop at once
    log.info("draining %d session(s) for up to %ss", len(relay.sessions), cfg.relay.drain_seconds)
    await relay.stop(drain_seconds=cfg.relay.drain_seconds)
    if echo is not None:
        echo.close()
    return 0


if __name__ == "__main__":       # pragma: no cover
    sys.exit(main())
