"""Wire models of OpenAI's GA `/v1/realtime` protocol, the subset Parley uses as an interpreter.

With `gpt-realtime` there is no translation session type: Parley configures a `realtime` session whose
instructions make the model an interpreter into the target language, lets server VAD cut turns, and
reads the audio/transcript of each response. Only the events Parley sends or handles are modelled;
everything else is tolerated by the session client (and counted).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from bot.realtime.translation_events import ErrorEvent, WireModel, new_event_id

# --- session configuration ---------------------------------------------------------------------


class AudioFormat(WireModel):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Literal[24000] = 24000


class ServerVad(WireModel):
    type: Literal["server_vad"] = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class InputTranscription(WireModel):
    model: str
    language: str | None = None


class RealtimeAudioInput(WireModel):
    format: AudioFormat | None = None
    transcription: InputTranscription | None = None
    turn_detection: ServerVad | None = None


class RealtimeAudioOutput(WireModel):
    format: AudioFormat | None = None
    voice: str | None = None


class RealtimeAudio(WireModel):
    input: RealtimeAudioInput | None = None
    output: RealtimeAudioOutput | None = None


class RealtimeSessionConfig(WireModel):
    type: Literal["realtime"] = "realtime"
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    audio: RealtimeAudio | None = None


# --- client events -----------------------------------------------------------------------------


class RealtimeSessionUpdate(WireModel):
    type: Literal["session.update"] = "session.update"
    session: RealtimeSessionConfig
    event_id: str | None = None


class InputAudioAppend(WireModel):
    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str
    event_id: str | None = None


# --- server events -----------------------------------------------------------------------------


class RealtimeSessionCreated(WireModel):
    type: Literal["session.created"] = "session.created"
    event_id: str = Field(default_factory=new_event_id)
    session: RealtimeSessionConfig


class RealtimeSessionUpdated(WireModel):
    type: Literal["session.updated"] = "session.updated"
    event_id: str = Field(default_factory=new_event_id)
    session: RealtimeSessionConfig


class _ResponsePart(WireModel):
    """Where a piece of a response belongs: the fields every `response.output_*` event carries."""

    event_id: str = Field(default_factory=new_event_id)
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class ResponseOutputAudioDelta(_ResponsePart):
    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str


class ResponseOutputAudioTranscriptDelta(_ResponsePart):
    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"
    delta: str


class ResponseOutputAudioTranscriptDone(_ResponsePart):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class InputTranscriptionCompleted(WireModel):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    event_id: str = Field(default_factory=new_event_id)
    item_id: str
    content_index: int = 0
    transcript: str


class SpeechStarted(WireModel):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    event_id: str = Field(default_factory=new_event_id)
    item_id: str
    audio_start_ms: int


class SpeechStopped(WireModel):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    event_id: str = Field(default_factory=new_event_id)
    item_id: str
    audio_end_ms: int


class Usage(WireModel):
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None


class ResponseInfo(WireModel):
    id: str | None = None
    status: str | None = None
    usage: Usage | None = None


class ResponseDone(WireModel):
    type: Literal["response.done"] = "response.done"
    event_id: str = Field(default_factory=new_event_id)
    response: ResponseInfo


class RateLimit(WireModel):
    name: Literal["requests", "tokens"] | None = None
    limit: int | None = None
    remaining: int | None = None
    reset_seconds: float | None = None


class RateLimitsUpdated(WireModel):
    type: Literal["rate_limits.updated"] = "rate_limits.updated"
    event_id: str = Field(default_factory=new_event_id)
    rate_limits: list[RateLimit]


RealtimeServerEvent = Annotated[
    RealtimeSessionCreated
    | RealtimeSessionUpdated
    | ResponseOutputAudioDelta
    | ResponseOutputAudioTranscriptDelta
    | ResponseOutputAudioTranscriptDone
    | InputTranscriptionCompleted
    | SpeechStarted
    | SpeechStopped
    | ResponseDone
    | RateLimitsUpdated
    | ErrorEvent,
    Field(discriminator="type"),
]
REALTIME_SERVER_EVENT_TYPES = frozenset(
    {
        "session.created",
        "session.updated",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "conversation.item.input_audio_transcription.completed",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "response.done",
        "rate_limits.updated",
        "error",
    }
)

_server_adapter: TypeAdapter[RealtimeServerEvent] = TypeAdapter(RealtimeServerEvent)


def parse_realtime_server_event(data: dict) -> RealtimeServerEvent:
    """Validate a decoded server event whose `type` is in REALTIME_SERVER_EVENT_TYPES."""
    return _server_adapter.validate_python(data)
