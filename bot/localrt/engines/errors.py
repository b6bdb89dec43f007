"""The one exception engines raise: what to install or set, or what failed for one segment."""

from __future__ import annotations


class EngineError(RuntimeError):
    """An engine is misconfigured or missing, or failed on one input; the message says which, in one line."""
