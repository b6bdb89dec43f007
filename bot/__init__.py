"""Parley: a Discord bot that interprets speech live."""

__version__ = "0.1.0"
