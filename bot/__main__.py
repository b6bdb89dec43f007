"""`python -m bot <command>`: every way to run Parley from a shell.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `main(args) -> int`; this
file only wires them up, and turns the errors a user can fix into one line on stderr (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bot.config import ConfigError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bot.run", "run the Discord bot (listener + speaker accounts)"),
    "demo": ("bot.demo", "see Parley work with no account: a local Discord, the bot, people talking"),
    "translate": ("bot.translate_file", "translate a WAV file through one session (the quickest way to try a backend)"),
    "localrt": ("bot.localrt.cli", "serve /v1/realtime/translations with offline engines (no API key)"),
    "replay": ("bot.voice.replay", "decode a capture of raw voice datagrams into one WAV per member"),
    "bench": ("bot.bench", "measure what the bot costs per speaker and the delay it adds (benchmarks/)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="Parley: live speech interpretation for Discord voice channels."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except ConfigError as e:
        print(f"parley: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
