"""DAVE (end-to-end encryption) for received Opus frames.

The connection's ``davey.DaveSession`` belongs to discord.py, which replaces or re-initialises it on
transitions, so it is looked up through a provider on every frame instead of being cached. davey
itself implements passthrough: while the session is in passthrough mode (discord.py enables it on a
downgrade to protocol 0) unencrypted frames come back unchanged; otherwise they fail.

Nothing fails silently: every frame that does not come out is counted by reason in
:attr:`DaveDecryptor.failures`, and the first frame of each reason is logged once (WARNING). The
documented failures are davey's ``ValueError`` ("Failed to decrypt: <why>", e.g. no decryptor for a
member yet) and the ``RuntimeError`` of a concurrent borrow while discord.py processes an MLS commit;
anything else (a davey or discord.py API change) is logged once with its exception type and
traceback, so a change that drops every frame is visible in the first second, not never.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import davey

_log = logging.getLogger(__name__)

DAVE_MAGIC = b"\xfa\xfa"
_AUDIO = davey.MediaType.audio
_PREFIX = "Failed to decrypt: "
MAX_REASONS = 32
"""Distinct failure reasons tracked per decryptor; further ones are counted as ``other``."""

SessionProvider = Callable[[], Any]
"""Returns the current ``davey.DaveSession`` or ``None`` when the connection has no E2EE."""

# Reasons that are not davey messages (failures of the glue around it).
REASON_BUSY = "busy"  # davey refused a concurrent borrow (discord.py mid-transition)
REASON_REQUIRED = "e2ee_required"  # not decryptable and plain audio is not accepted in an E2EE call
REASON_NO_SESSION = "no_session"  # a DAVE frame while no session exists (e.g. a replay): cannot decrypt
_FAILED = object()


def looks_dave(frame: bytes) -> bool:
    """True when ``frame`` ends with a plausible DAVE trailer (supplemental size byte + 0xFAFA).

    The smallest trailer is 8-byte tag + 1-byte nonce + size byte + magic = 12 bytes.
    """
    size = len(frame)
    return size >= 12 and frame[-2:] == DAVE_MAGIC and 12 <= frame[-3] <= size


def _reason(exc: Exception) -> tuple[str, bool]:
    """(reason, expected) for an exception out of davey."""
    if isinstance(exc, ValueError):
        text = str(exc)
        if text.startswith(_PREFIX):
            text = text[len(_PREFIX) :]
        return "davey: " + (text.strip()[:80] or "ValueError"), True
    if isinstance(exc, RuntimeError) and "borrow" in str(exc).lower():
        return REASON_BUSY, True
    return f"unexpected {type(exc).__name__}", False


class DaveDecryptor:
    """Turns a transport-decrypted frame into a plain Opus frame, or ``None`` (count and drop).

    Rules, in order:
    1. with a session, davey decides (it decrypts, or passes plain frames through while discord.py
       has put it in passthrough mode for a transition);
    2. if that fails and the connection requires E2EE (DAVE protocol version > 0), the frame is dropped:
       plain audio is not accepted in an end-to-end encrypted call outside davey's passthrough;
    3. otherwise (no session, or E2EE off, e.g. after a downgrade, where davey has no decryptor for
       members who joined since) a plain frame passes and a DAVE-looking frame is dropped, since it
       cannot be decrypted (a replay has no MLS secrets).

    Used from one thread (the receive worker); :meth:`failure_counts` may be read from any thread.
    """

    __slots__ = ("_provider", "_required", "failures")

    def __init__(
        self, provider: SessionProvider | None = None, e2ee_required: Callable[[], bool] | None = None
    ) -> None:
        self._provider = provider
        self._required = e2ee_required
        self.failures: dict[str, int] = {}
        """Reason → frames dropped for it since the connection began; ``unexpected …`` reasons count
        every unexpected exception (also when the frame could still pass as plain audio)."""

    def failure_counts(self) -> dict[str, int]:
        """A snapshot of :attr:`failures` (safe from any thread)."""
        return dict(self.failures)

    def _fail(self, reason: str, exc: Exception | None = None, expected: bool = True) -> None:
        """Count one failure; the first of each reason is logged (WARNING), never one per frame."""
        failures = self.failures
        if reason not in failures and len(failures) >= MAX_REASONS:
            reason = "other"
        count = failures.get(reason, 0)
        failures[reason] = count + 1
        if count:
            return
        if expected:
            detail = reason if exc is None else f"{reason} ({type(exc).__name__}: {exc})"
            _log.warning("voice receive: DAVE frame dropped: %s; first occurrence, counted from now on", detail)
        else:
            _log.warning(
                "voice receive: DAVE decryption raised %s: %s; first occurrence, counted as %r from now on "
                "(davey or discord.py API change?)",
                type(exc).__name__,
                exc,
                reason,
                exc_info=exc,
            )

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()``; an exception is counted and logged once as unexpected, and gives :data:`_FAILED`."""
        try:
            return fn()
        except Exception as exc:
            self._fail(f"unexpected {type(exc).__name__} in {what}", exc, expected=False)
            return _FAILED

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        session = self._call(self._provider, "the session lookup") if self._provider is not None else None
        if session is _FAILED:
            session = None
        davey_failed: tuple[str, Exception] | None = None
        if session is not None:
            try:
                return session.decrypt(user_id, _AUDIO, frame)
            except Exception as exc:  # ValueError from davey; RuntimeError if discord.py is mid-transition
                reason, expected = _reason(exc)
                if not expected:  # an API change: say so even when the frame could still pass below
                    self._fail(reason, exc, expected=False)
                else:
                    davey_failed = (reason, exc)
        required = self._call(self._required, "the E2EE check") if self._required is not None else False
        if required is _FAILED or required or looks_dave(frame):
            # dropped: plain audio is refused in an E2EE call (also when the check itself broke),
            # and a DAVE frame that davey did not decrypt cannot be played
            if davey_failed is not None:
                self._fail(*davey_failed)
            elif session is None:
                self._fail(REASON_REQUIRED if required else REASON_NO_SESSION)
            return None
        return frame
