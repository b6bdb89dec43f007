"""What a translation session needs to know, and nothing else: the realtime layer's own options.

`bot/config.py` composes these sections into the app's `Settings` (as it does with the voice, playback and
bot.localrt sections), so `realtime` never imports the whole app's configuration. Anything with the five
attributes of `SessionOptions` will do — `Settings` has them, and so does `RealtimeOptions` on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    from bot.realtime.pool import WorkerPool


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelsConfig(_Section):
    translate: str = "gpt-realtime-translate"
    realtime: str = "gpt-realtime"
    # Source-language captions; null turns off `session.input_transcript.delta` (and its cost).
    transcription: str | None = "gpt-4o-mini-transcribe"


class AudioConfig(_Section):
    # Audio appended upstream per message. The translation engine works in 200 ms frames.
    chunk_ms: int = Field(200, ge=20, le=1000)
    noise_reduction: Literal["near_field", "far_field"] | None = None

    @field_validator("chunk_ms")
    @classmethod
    def _whole_frames(cls, v: int) -> int:
        if v % 20:
            raise ValueError("must be a multiple of 20 (Discord frames are 20 ms)")
        return v


class SessionConfig(_Section):
    idle_timeout_s: float = Field(30.0, gt=0)
    max_duration_s: float = Field(3600.0, gt=60)
    rotate_before_s: float = Field(60.0, ge=5)
    replay_buffer_s: float = Field(10.0, ge=1, le=120)
    connect_timeout_s: float = Field(10.0, gt=0)
    close_timeout_s: float = Field(10.0, gt=0)


class ReconnectConfig(_Section):
    initial_delay_s: float = Field(0.25, gt=0)
    max_delay_s: float = Field(15.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    jitter: float = Field(0.2, ge=0, le=1)
    max_attempts: int | None = Field(None, ge=1)  # per outage; null = keep trying
    open_attempts: int = Field(3, ge=1)  # when a session is first opened
    rate_limit_delay_s: float = Field(5.0, ge=0)  # the least wait after a rate-limit error


class InterpreterConfig(_Section):
    """For backend `openai-realtime`: gpt-realtime instructed to act as an interpreter."""

    prompt: str = (
        "You are a simultaneous interpreter. Translate everything the user says into {language}. "
        "Speak only the translation, in the first person, with the speaker's tone. Never answer "
        "questions, never add comments, never translate into any other language."
    )
    voice: str = "marin"
    vad_threshold: float = Field(0.5, ge=0, le=1)
    silence_ms: int = Field(500, ge=100, le=5000)
    prefix_padding_ms: int = Field(300, ge=0, le=2000)



@dataclass(frozen=True)
class Endpoint:
    """Where a session connects and which protocol it speaks there."""

    url: str
    protocol: Literal["translation", "realtime"]
    model: str
    api_key: SecretStr | None
    price_per_minute: float
    # Several bot.localrt workers: each connect (and reconnect) asks the pool for the least-loaded healthy one.
    pool: WorkerPool | None = dataclasses.field(default=None, compare=False, repr=False)


class SessionOptions(Protocol):
    """The sections a `TranslationSession` reads."""

    @property
    def models(self) -> ModelsConfig: ...
    @property
    def audio(self) -> AudioConfig: ...
    @property
    def session(self) -> SessionConfig: ...
    @property
    def reconnect(self) -> ReconnectConfig: ...
    @property
    def interpreter(self) -> InterpreterConfig: ...


class RealtimeOptions(_Section):
    """The defaults, for a session used without the app (tests, tools)."""

    models: ModelsConfig = ModelsConfig()
    audio: AudioConfig = AudioConfig()
    session: SessionConfig = SessionConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    interpreter: InterpreterConfig = InterpreterConfig()
