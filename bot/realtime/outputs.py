"""What a translation session hands back, the same for every backend and protocol.

`elapsed_ms` is on the *speaker's* clock: milliseconds of input audio since the session was opened,
across reconnects and rotations, so captions and translated audio can be aligned with the source.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TranslatedAudio:
    pcm16: bytes  # mono, little-endian, 24 kHz
    elapsed_ms: int | None
    received_at: float | None = None  # when it was read off the websocket (bot.latency's clock)


@dataclass(frozen=True, slots=True)
class SourceText:
    """A fragment of what the speaker said (append-only; `final` marks a whole utterance)."""

    text: str
    elapsed_ms: int | None
    final: bool = False


@dataclass(frozen=True, slots=True)
class TargetText:
    """A fragment of the translation (append-only; `final` marks a whole utterance)."""

    text: str
    elapsed_ms: int | None
    final: bool = False


@dataclass(frozen=True, slots=True)
class SessionError:
    code: str | None
    message: str
    fatal: bool = False


SessionOutput = TranslatedAudio | SourceText | TargetText | SessionError
