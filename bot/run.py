"""`python -m bot run`: validate the configuration and secrets, then start the Discord bot."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bot.config import ConfigError, load_settings, resolve_endpoint

log = logging.getLogger("parley")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config.yaml"), help="config file (default: config.yaml)")
    p.add_argument("--check", action="store_true", help="validate the configuration and exit")


def main(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint = resolve_endpoint(settings)  # a missing API key is a ConfigError here, before Discord
    missing = [name for name, value in (("DISCORD_TOKEN", settings.secrets.discord_token),
                                        ("DISCORD_SPEAKER_TOKEN", settings.secrets.discord_speaker_token))
               if value is None]
    log.info("backend %s → %s (%s protocol)", settings.backend, endpoint.url.split("?")[0], endpoint.protocol)
    if args.check:
        print(f"{args.config}: OK (backend {settings.backend})")
        return 0
    if missing:
        raise ConfigError(f"set {' and '.join(missing)} in the environment (see README: inviting the two accounts)")
    print("parley: the Discord voice pipeline is not part of this build yet; use `python -m bot translate` "
          "to try a backend", file=sys.stderr)
    return 1
