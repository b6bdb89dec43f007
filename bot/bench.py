"""`python -m bot bench`: the benchmarks in `benchmarks/` (whole bot per speaker, delays, floors); dispatch only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def _run_module():
    if not (_ROOT / "benchmarks" / "run.py").exists():
        raise SystemExit("parley: benchmarks/ is not here (run from a source checkout)")
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    import benchmarks.run

    return benchmarks.run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="8 speakers only, no bot.localrt (under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    parser.add_argument("--plot", metavar="DIR", help="write PNGs to DIR (needs matplotlib)")


def main(args: argparse.Namespace) -> int:
    return _run_module().main(args)
