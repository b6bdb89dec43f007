"""Wire models of OpenAI's `/v1/realtime/translations` protocol (both directions).

Parley sends the client events and handles the server events; bot.localrt does the reverse, so both
sides share these models. The `openai` package's own models are the witness in tests; they are not a
runtime dependency. Server events ignore fields we do not use, so a newer server stays readable.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SAMPLE_RATE = 24_000
ENGINE_FRAME_MS = 200
ENGINE_FRAME_BYTES = SAMPLE_RATE * ENGINE_FRAME_MS // 1000 * 2  # 9600: one engine frame of pcm16 mono


def new_event_id(prefix: str = "event") -> str:
    """An id shaped like OpenAI's (`event_…`), unique enough for correlation in logs."""
    return f"{prefix}_{secrets.token_hex(10)}"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    def to_json(self) -> str:
        """Serialize for the socket: omitted optionals stay off the wire."""
        return self.model_dump_json(exclude_none=True)


# --- session configuration ---------------------------------------------------------------------


class NoiseReduction(WireModel):
    type: Literal["near_field", "far_field"]
    strength: float | None = None


class Transcription(WireModel):
    model: str


class AudioInput(WireModel):
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None


class AudioOutput(WireModel):
    language: str | None = None


class AudioConfig(WireModel):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class SessionUpdateRequest(WireModel):
    """The only fields a translation session lets a client change."""

    audio: AudioConfig | None = None


class TranslationSessionInfo(WireModel):
    """The session object of `session.created` / `session.updated`."""

    id: str
    type: Literal["translation"] = "translation"
    model: str
    expires_at: int
    audio: AudioConfig = Field(default_factory=AudioConfig)


# --- client events -----------------------------------------------------------------------------


class SessionUpdate(WireModel):
    type: Literal["session.update"] = "session.update"
    session: SessionUpdateRequest
    event_id: str | None = None


class InputAudioBufferAppend(WireModel):
    type: Literal["session.input_audio_buffer.append"] = "session.input_audio_buffer.append"
    audio: str  # base64 pcm16 mono 24 kHz little-endian
    event_id: str | None = None


class SessionClose(WireModel):
    type: Literal["session.close"] = "session.close"
    event_id: str | None = None


TranslationClientEvent = Annotated[
    SessionUpdate | InputAudioBufferAppend | SessionClose, Field(discriminator="type")
]
CLIENT_EVENT_TYPES = frozenset({"session.update", "session.input_audio_buffer.append", "session.close"})


# --- server events -----------------------------------------------------------------------------


class SessionCreated(WireModel):
    type: Literal["session.created"] = "session.created"
    event_id: str = Field(default_factory=new_event_id)
    session: TranslationSessionInfo


class SessionUpdated(WireModel):
    type: Literal["session.updated"] = "session.updated"
    event_id: str = Field(default_factory=new_event_id)
    session: TranslationSessionInfo


class SessionClosed(WireModel):
    type: Literal["session.closed"] = "session.closed"
    event_id: str = Field(default_factory=new_event_id)


class InputTranscriptDelta(WireModel):
    type: Literal["session.input_transcript.delta"] = "session.input_transcript.delta"
    event_id: str = Field(default_factory=new_event_id)
    delta: str
    elapsed_ms: int | None = None


class OutputTranscriptDelta(WireModel):
    type: Literal["session.output_transcript.delta"] = "session.output_transcript.delta"
    event_id: str = Field(default_factory=new_event_id)
    delta: str
    elapsed_ms: int | None = None


class OutputAudioDelta(WireModel):
    type: Literal["session.output_audio.delta"] = "session.output_audio.delta"
    event_id: str = Field(default_factory=new_event_id)
    delta: str  # base64 pcm16
    sample_rate: int | None = None
    channels: int | None = None
    format: Literal["pcm16"] | None = None
    elapsed_ms: int | None = None


class ErrorDetail(WireModel):
    """OpenAI's error object; `code` is what Parley branches on (fatal vs. retryable)."""

    type: str
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None


class ErrorEvent(WireModel):
    type: Literal["error"] = "error"
    event_id: str = Field(default_factory=new_event_id)
    error: ErrorDetail


AnyServerEvent = (
    SessionCreated
    | SessionUpdated
    | SessionClosed
    | InputTranscriptDelta
    | OutputTranscriptDelta
    | OutputAudioDelta
    | ErrorEvent
)
TranslationServerEvent = Annotated[AnyServerEvent, Field(discriminator="type")]
SERVER_EVENT_TYPES = frozenset(
    {
        "session.created",
        "session.updated",
        "session.closed",
        "session.input_transcript.delta",
        "session.output_transcript.delta",
        "session.output_audio.delta",
        "error",
    }
)

_client_adapter: TypeAdapter[TranslationClientEvent] = TypeAdapter(TranslationClientEvent)
_server_adapter: TypeAdapter[TranslationServerEvent] = TypeAdapter(TranslationServerEvent)


def parse_client_event(data: dict) -> SessionUpdate | InputAudioBufferAppend | SessionClose:
    """Validate a decoded client event (server side). Raises pydantic.ValidationError."""
    return _client_adapter.validate_python(data)


def parse_server_event(data: dict) -> TranslationServerEvent:
    """Validate a decoded server event whose `type` is in SERVER_EVENT_TYPES."""
    return _server_adapter.validate_python(data)
