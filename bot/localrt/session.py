"""Session state as the client sees it: id, model, expiry and the audio configuration.

Pure: validation against the installed languages is given the set of valid targets, so this module
knows nothing about engines.
"""

from __future__ import annotations

import secrets
import time

from bot.localrt import languages
from bot.localrt.errors import ProtocolError
from bot.realtime.translation_events import (
    AudioConfig,
    AudioInput,
    AudioOutput,
    SessionUpdateRequest,
    TranslationSessionInfo,
)


def new_session_id() -> str:
    return f"sess_{secrets.token_hex(12)}"


class SessionState:
    def __init__(self, model: str, output_language: str, ttl_s: int, targets: set[str]) -> None:
        self.id = new_session_id()
        self.model = model
        self.expires_at = int(time.time()) + ttl_s
        self._targets = targets
        self.audio = AudioConfig(input=AudioInput(), output=AudioOutput(language=output_language))

    @property
    def target(self) -> str:
        assert self.audio.output and self.audio.output.language
        return self.audio.output.language

    @property
    def transcribe(self) -> bool:
        return bool(self.audio.input and self.audio.input.transcription)

    def info(self) -> TranslationSessionInfo:
        return TranslationSessionInfo(
            id=self.id, model=self.model, expires_at=self.expires_at, audio=self.audio.model_copy(deep=True)
        )

    def apply(self, update: SessionUpdateRequest, event_id: str | None = None) -> None:
        """Apply a `session.update`, all or nothing. Explicit nulls switch optional features off."""
        audio = update.audio
        if audio is None:
            return
        new_in = (self.audio.input or AudioInput()).model_copy()
        new_out = (self.audio.output or AudioOutput()).model_copy()
        if audio.output is not None and "language" in audio.output.model_fields_set:
            given = audio.output.language
            code = languages.normalize(given) if given else None
            if code is None or code not in self._targets:
                raise ProtocolError(
                    "unsupported_language",
                    f"output language {given!r} is not available here; "
                    f"supported: {', '.join(sorted(self._targets)) or 'none'}",
                    "session.audio.output.language",
                    event_id=event_id,
                )
            new_out.language = code
        if audio.input is not None:
            fields = audio.input.model_fields_set
            if "transcription" in fields:
                new_in.transcription = audio.input.transcription
            if "noise_reduction" in fields:
                new_in.noise_reduction = audio.input.noise_reduction
        self.audio = AudioConfig(input=new_in, output=new_out)
