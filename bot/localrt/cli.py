"""`python -m bot localrt`: run the offline translation server, or list what it can translate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import sys
from pathlib import Path

from bot.localrt.config import LocalRTConfig

log = logging.getLogger("bot.localrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1: this host only)")
    parser.add_argument("--port", type=int, help="TCP port (default 8765; 0 = any free port)")
    parser.add_argument("--api-key", help="bearer token clients must send (default: $LOCALRT_API_KEY; none = no auth)")
    parser.add_argument("--config", type=Path, help="config.yaml; its `local:` section configures engines")
    parser.add_argument(
        "--languages", action="store_true", help="print the input → output pairs that work here and exit"
    )


def load_config(path: Path | None) -> LocalRTConfig:
    """The `local:` section of config.yaml (through bot.config when it is available)."""
    if path is None:
        return LocalRTConfig()
    try:
        from bot.config import load_settings  # the lead's loader validates the whole file
    except ImportError:
        load_settings = None
    if load_settings is not None:
        local = getattr(load_settings(path), "local", None)
        if isinstance(local, LocalRTConfig):
            return local
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return LocalRTConfig.model_validate(data.get("local") or {})


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except Exception as exc:
        print(f"localrt: bad config: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config = config.model_copy(update=overrides)

    from bot.localrt.engines.asr import EngineError
    from bot.localrt.engines.bundle import Engines
    from bot.localrt.languages import format_table

    try:
        engines = Engines.load(config)
    except EngineError as exc:
        print(f"localrt: {exc}", file=sys.stderr)
        return 2
    if args.languages:
        routes = engines.routes()
        print(format_table(routes))
        if not routes:
            print("no working pair: install apertium pairs and espeak-ng voices", file=sys.stderr)
            return 1
        return 0
    api_key = args.api_key or config.api_key()
    return asyncio.run(_serve(config, engines, api_key))


def listen_error(host: str, port: int, exc: OSError) -> str:
    """One line for a socket that cannot be opened (the port is taken, the address is not ours…)."""
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the port is already in use (another localrt? choose one with --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}:{port}: that address is not on this host (--host)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


async def _serve(config: LocalRTConfig, engines, api_key: str | None) -> int:
    from bot.localrt.server import LocalRTServer

    server = LocalRTServer(config, engines, api_key)
    try:
        await server.start()
    except OSError as exc:
        print(f"localrt: {listen_error(config.host, config.port, exc)}", file=sys.stderr)
        server.pool.shutdown(wait=False)
        return 2
    log.info(
        "listening on %s/v1/realtime/translations (%s); outputs: %s",
        server.url,
        "bearer token required" if api_key else "no auth",
        ", ".join(sorted(server.targets)),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0
