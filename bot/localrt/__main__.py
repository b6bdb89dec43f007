"""`python -m bot.localrt` works too (same as `python -m bot localrt`)."""

import argparse
import sys

from bot.localrt.cli import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m bot.localrt", description=__doc__)
add_arguments(parser)
sys.exit(main(parser.parse_args()))
