"""The ``wsrelay`` command: ``serve``, ``check``, ``token``, ``agents`` (fleet/agents_cli.py).

``wsrelay serve`` without ``--config`` runs the embedded demo: agent ``echo.demo``
backed by the built-in echo bot, so ``wscat -c ws://localhost:8765/ws/generic/echo.demo``
answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys

from . import config as config_mod
from .errors import ConfigError, ListenError, WsrelayError

log = logging.getLogger("wsrelay.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsrelay", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the version and the pump in use (cython or python)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the relay (the echo demo without --config)")
    serve.add_argument("--config", help="TOML config file (its keys: the Configuration reference, docs/configuration.md)")
    serve.add_argument("--host", help="listen address (overrides [relay] host)")
    serve.add_argument("--port", type=int, help="listen port (overrides [relay] port)")
    serve.add_argument("--admin-port", type=int,
                       help="admin port for /metrics, /healthz, /readyz (overrides [relay] admin_port; 0 = off)")
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

    from .fleet.agents_cli import add_parser as add_agents_parser
    add_agents_parser(sub)
    return parser


def version_line() -> str:
    """``wsrelay 0.1.0 (pump: cython)``: which build is installed, and whether its pump is compiled."""
    from . import __version__, pump
    return f"wsrelay {__version__} (pump: {pump.default_name()})"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args)
        if args.command == "token":
            return cmd_token(args)
        if args.command == "agents":
            from .fleet.agents_cli import cmd_agents
            return cmd_agents(args)
        return cmd_serve(args)
    except ConfigError as exc:
        print(f"wsrelay: {exc}", file=sys.stderr)
        return 2
    except WsrelayError as exc:
        print(f"wsrelay: {exc}", file=sys.stderr)
        return 1


def cmd_check(args) -> int:
    cfg = _load(args.config)
    config_mod.require_signing_key(cfg)
    config_mod.require_shared_nonces(cfg)
    print(f"{args.config}: OK, {len(cfg.agents)} agent(s): "
          + ", ".join(a.service_host for a in cfg.agents))
    return 0


def cmd_token(args) -> int:
    from .admission.auth import mint_for_config
    cfg = config_mod.secrets_from_env(config_mod.load_config(args.config), os.environ)
    print(mint_for_config(cfg, args.service_host, ttl=args.ttl))
    return 0


def cmd_serve(args) -> int:
    from .telemetry.logs import setup_logging
    if args.pure_python:
        os.environ["WSRELAY_PURE_PYTHON"] = "1"
    cfg = _load(args.config) if args.config else None
    setup_logging(args.log_format or (cfg.relay.log_format if cfg else "auto"))
    overrides = dict(host=args.host, port=args.port, workers=args.workers, admin_port=args.admin_port)
    if cfg is not None:
        cfg = config_mod.apply_overrides(cfg, **overrides)
        config_mod.require_signing_key(cfg)
        config_mod.require_shared_nonces(cfg)
    else:               # the demo: check the flags now, before anything starts
        config_mod.apply_overrides(config_mod.demo_config("ws://127.0.0.1:1/"), **overrides)
    _raise_open_files_limit()
    workers = cfg.relay.workers if cfg is not None else (args.workers or 1)
    if workers > 1:
        from .edge.workers import run_workers
        return run_workers(workers, lambda capacity, index, metrics_dir:
                           _run_worker(cfg, args, capacity, index, (metrics_dir, workers)))
    try:
        return _run(cfg, args, None, 0)
    except WsrelayError:
        raise
    except Exception:
        # A bug, not a user error: still one structured line (traceback in its "exc" field).
        log.critical("wsrelay stopped by an unexpected error", exc_info=True)
        return 1


def _run_worker(cfg, args, capacity, index: int, group=None) -> int:
    """One worker: a user error is one line on stderr, as without workers."""
    try:
        return _run(cfg, args, capacity, index, group)
    except WsrelayError as exc:
        print(f"wsrelay: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _raise_open_files_limit() -> None:
    """Each session holds two sockets: lift the soft open-files limit to the hard one."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):    # pragma: no cover - not on every platform
        pass


def _load(path):
    return config_mod.secrets_from_env(config_mod.load_config(path), os.environ)


def _run(cfg, args, capacity, worker: int, group=None) -> int:
    serving = serve(cfg, config_path=args.config, host=args.host, port=args.port,
                    admin_port=args.admin_port, capacity=capacity, worker=worker, group=group)
    try:
        import uvloop
    except ImportError:           # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(serving)
    return uvloop.run(serving)


async def serve(cfg, *, config_path=None, host=None, port=None, admin_port=None, capacity=None,
                worker: int = 0, group: tuple[str, int] | None = None) -> int:
    """Run one relay process until SIGTERM/SIGINT; returns the exit status.

    SIGHUP, or a change of the config file, reloads the agents without dropping sessions;
    an invalid file is rejected with its errors logged and the running config kept.
    SIGTERM drains: no new sessions, live ones go on up to ``drain_seconds``, then close
    with 1012. A second SIGTERM/SIGINT stops at once. A port that cannot be listened on
    is a ListenError (one line for the user), not a traceback.
    """
    from .edge.relay import Relay
    from .telemetry.logs import log_loop_exception
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log_loop_exception)
    echo = None
    if cfg is None:
        from .echo_bot import start_echo_bot
        echo = await start_echo_bot()
        echo_port = echo.sockets[0].getsockname()[1]
        cfg = config_mod.apply_overrides(
            config_mod.demo_config(f"ws://127.0.0.1:{echo_port}/"), host=host, port=port, admin_port=admin_port)
    relay = Relay(cfg, capacity=capacity)
    try:
        await _listen(relay.start(), cfg.relay.host, cfg.relay.port, "relay.port", "--port",
                      "pick a free port, or 0 for any free port")
    except ListenError:
        if echo is not None:
            echo.close()
        raise
    admin = peer = None
    if group is not None and worker > 0:      # --workers N: worker 0 asks this one when scraped
        from .telemetry.metrics_group import serve_peer
        from .telemetry.live_sessions import LiveSessions
        peer = await serve_peer(group[0], worker, relay.metrics.render, LiveSessions(lambda: relay.sessions))
    if cfg.relay.admin_port and worker == 0:
        from .admin.server import AdminServer
        from .telemetry.live_sessions import LiveSessions
        gather = None
        live = LiveSessions(lambda: relay.sessions)
        if group is not None:
            from .telemetry.metrics_group import group_renderer, group_sessions
            gather = group_renderer(group[0], group[1], relay.metrics.render)
            others, end_other = group_sessions(group[0], group[1])
            live = LiveSessions(lambda: relay.sessions, remote=others, remote_end=end_other)
        admin = AdminServer(render_metrics=relay.metrics.render, is_ready=lambda: relay.accepting,
                            gather_metrics=gather, sessions=live, token=cfg.relay.admin_token)
        try:
            admin_host = cfg.relay.admin_host
            await _listen(admin.start(admin_host, cfg.relay.admin_port), admin_host,
                          cfg.relay.admin_port, "relay.admin_port", "--admin-port",
                          "pick a free port, or 0 to turn the admin port off")
        except ListenError:
            await relay.stop()
            if echo is not None:
                echo.close()
            raise
    agents = ", ".join(a.service_host for a in relay.registry.agents()) or "none"
    log.info("wsrelay listening on ws://%s:%d (pump: %s; agents: %s)",
             cfg.relay.host, relay.port, relay.pump.IMPLEMENTATION, agents)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = reloader = None
    if config_path:
        reloader = Reloader(relay, config_path)
        loop.add_signal_handler(signal.SIGHUP, reloader.reload)
        watcher = loop.create_task(reloader.watch())
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: os._exit(1))   # second signal: stop at once
    if watcher is not None:
        watcher.cancel()
    if reloader is not None:          # set together with the watcher
        reloader.cancel()
    log.info("draining %d session(s) for up to %ss", len(relay.sessions), cfg.relay.drain_seconds)
    await relay.stop(drain_seconds=cfg.relay.drain_seconds)
    if admin is not None:
        await admin.close()
    if peer is not None:
        peer.close()
    if echo is not None:
        echo.close()
    log.info("stopped")
    return 0


async def _listen(start, host: str, port: int, key: str, flag: str, advice: str) -> None:
    """Await ``start`` (a listener's start); an OSError becomes one ListenError sentence.

    The sentence names the address, the key and the flag to change, and what to do,
    instead of the thirty lines of traceback the OSError would print.
    """
    try:
        await start
    except OSError as exc:
        about_host = isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
        if about_host:
            key, flag, advice = "relay.host", "--host", "use an address of this machine, or 0.0.0.0"
        reason = _listen_reason(exc)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(f"cannot listen on {address} ({key}, {flag}): {reason}; {advice}") from None


def _listen_reason(exc: OSError) -> str:
    """The OS's reason in a few words (uvloop's message repeats the address)."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's"
    text = os.strerror(exc.errno) if exc.errno else (str(exc).splitlines() or [""])[0][:200]
    return (text[:1].lower() + text[1:]) or type(exc).__name__


class Reloader:
    """Reloads the agents from the config file on SIGHUP or when the file changes.

    The file is read and parsed in a worker thread, so a big file never stalls the event
    loop (and with it every live session); only the result is applied on the loop. A
    reload asked for while one is in flight is coalesced: one more runs after it, reading
    the file as it is then, however many were asked for meanwhile.
    """

    POLL_SECONDS = 1.0

    def __init__(self, relay, path: str) -> None:
        self.relay = relay
        self.path = path
        self._stamp = self._file_stamp()
        self._task: asyncio.Task | None = None
        self._again = False

    def _file_stamp(self):
        try:
            st = os.stat(self.path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def reload(self) -> None:
        """Ask for a reload (SIGHUP, file change); returns at once, on the loop."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._reload_until_settled())

    def cancel(self) -> None:
        """At shutdown: drop a reload in flight (its thread ends alone; nothing is applied)."""
        if self._task is not None:
            self._task.cancel()

    async def _reload_until_settled(self) -> None:
        """One reload, then one more for as long as more were asked for meanwhile."""
        while True:
            self._again = False
            await self.reload_now()
            if not self._again:
                return

    async def reload_now(self) -> bool:
        """Read and check the file in a thread, then apply it here; False if rejected."""
        self._stamp = self._file_stamp()
        running = self.relay.config.relay
        try:
            new = await asyncio.to_thread(self._read, running)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            return False
        except Exception:                    # a bug: say so, keep serving with the running config
            log.exception("config reload failed, keeping the running config")
            return False
        self.relay.reload(new)
        log.info("config reloaded: %d agent(s)", len(new.agents))
        return True

    def _read(self, running):
        """The new config, checked against the running relay (in a worker thread)."""
        new = _load(self.path)
        config_mod.require_signing_key(new)
        config_mod.require_shared_nonces(new, running)
        return new

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_SECONDS)
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                self.reload()


if __name__ == "__main__":       # pragma: no cover
    sys.exit(main())
