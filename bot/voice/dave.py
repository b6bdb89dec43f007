"""DAVE (end-to-end encryption) for received Opus frames.

The connection's ``davey.DaveSession`` belongs to discord.py, which replaces or re-initialises it on
transitions, so it is looked up through a provider on every frame instead of being cached. davey
itself implements passthrough: while the session is in passthrough mode (discord.py enables it on a
downgrade to protocol 0) unencrypted frames come back unchanged; otherwise they fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import davey

DAVE_MAGIC = b"\xfa\xfa"
_AUDIO = davey.MediaType.audio

SessionProvider = Callable[[], Any]
"""Returns the current ``davey.DaveSession`` or ``None`` when the connection has no E2EE."""


def looks_dave(frame: bytes) -> bool:
    """True when ``frame`` ends with a plausible DAVE trailer (supplemental size byte + 0xFAFA).

    The smallest trailer is 8-byte tag + 1-byte nonce + size byte + magic = 12 bytes.
    """
    size = len(frame)
    return size >= 12 and frame[-2:] == DAVE_MAGIC and 12 <= frame[-3] <= size


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
    """

    __slots__ = ("_provider", "_required")

    def __init__(
        self, provider: SessionProvider | None = None, e2ee_required: Callable[[], bool] | None = None
    ) -> None:
        self._provider = provider
        self._required = e2ee_required

    def decrypt(self, user_id: int, frame: bytes) -> bytes | None:
        session = self._provider() if self._provider is not None else None
        if session is not None:
            try:
                return session.decrypt(user_id, _AUDIO, frame)
            except Exception:  # ValueError from davey; RuntimeError if discord.py is mid-transition
                pass
        if self._required is not None and self._required():
            return None
        return None if looks_dave(frame) else frame
