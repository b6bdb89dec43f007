"""Keep secrets out of logs.

websockets logs every handshake header at DEBUG (`> Authorization: Bearer sk-…`). Parley hands
websockets loggers with this filter, so turning on debug logging never prints a key.
"""

from __future__ import annotations

import logging

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


class RedactSecretHeaders(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "[redacted]", *args[2:])
        return True


def redacting_logger(name: str) -> logging.Logger:
    """A logger (for websockets' `logger=`) that never emits secret header values."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactSecretHeaders) for f in logger.filters):
        logger.addFilter(RedactSecretHeaders())
    return logger
