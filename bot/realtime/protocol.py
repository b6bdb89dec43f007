"""The two wire dialects behind one interface: what to send, and what a server event means.

`TranslationSession` owns sockets, timing and recovery; a protocol object only turns intentions into
JSON and server JSON into `Reading`s. Pure: no I/O, so each dialect is testable alone.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as _Protocol

import langcodes
from pydantic import ValidationError

from bot.realtime import realtime_events as rt
from bot.realtime import translation_events as tr
from bot.realtime.outputs import SessionError, SessionOutput, SourceText, TargetText, TranslatedAudio

# Error codes after which retrying cannot help: the operator must fix a key, a model name or a bill.
FATAL_ERROR_CODES = frozenset(
    {
        "invalid_api_key",
        "invalid_authentication",
        "model_not_found",
        "invalid_model",
        "insufficient_quota",
        "beta_api_shape_disabled",
        "account_deactivated",
    }
)
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "rate_limited", "session_limit_exceeded"})


@dataclass
class Reading:
    """What one server event tells the session."""

    outputs: list[SessionOutput] = field(default_factory=list)
    ack_ms: int | None = None  # input before this (session clock) has been answered for
    created_expires_at: int | None = None
    created: bool = False
    ready: bool = False  # the configuration was applied
    closed: bool = False
    error: tr.ErrorDetail | None = None
    rate_limited: bool = False
    fatal: bool = False
    malformed: bool = False
    unknown: bool = False
    usage: tuple[int | None, int | None] | None = None  # (input, output) tokens of a response


def _error_reading(err: tr.ErrorDetail) -> Reading:
    fatal = (err.code or "") in FATAL_ERROR_CODES
    return Reading(
        outputs=[SessionError(err.code, err.message, fatal=fatal)],
        error=err,
        fatal=fatal,
        rate_limited=(err.code or "") in RATE_LIMIT_CODES,
    )


def _validated(data: dict, known: frozenset[str], parse: Callable[[dict], Any]) -> Any:
    """The typed event, or the Reading that says why there is none (unknown type, malformed)."""
    if data.get("type") not in known:
        return Reading(unknown=True)
    try:
        return parse(data)
    except (ValidationError, ValueError):
        return Reading(malformed=True)


def _audio(delta: str, elapsed_ms: int | None, ack_ms: int | None) -> Reading:
    try:
        pcm = base64.b64decode(delta, validate=True)
    except ValueError:
        return Reading(malformed=True)
    return Reading(outputs=[TranslatedAudio(pcm, elapsed_ms)], ack_ms=ack_ms)


def language_name(code: str) -> str:
    """'es' → 'Spanish', for the interpreter prompt; unknown codes are passed through."""
    try:
        return langcodes.Language.get(code).display_name()
    except (ValueError, LookupError):
        return code


class WireProtocol(_Protocol):
    name: str
    ready_type: str
    # True when the server answers for every byte of input, silence included (translation: `elapsed_ms`);
    # False when only speech turns are answered (GA realtime: server VAD), so idle silence is never acked.
    acks_silence: bool
    # A turn is open on the server: speech was detected and its response has not finished yet.
    in_turn: bool

    def session_update(self, language: str) -> str: ...
    def append(self, pcm16: bytes) -> str: ...
    def close(self) -> str | None: ...
    def read(self, data: dict) -> Reading: ...


class TranslationProtocol:
    """`/v1/realtime/translations`: the session itself is the interpreter."""

    name = "translation"
    ready_type = "session.updated"
    acks_silence = True
    in_turn = False

    def __init__(self, transcription_model: str | None = None, noise_reduction: str | None = None) -> None:
        self.transcription_model = transcription_model
        self.noise_reduction = noise_reduction

    def session_update(self, language: str) -> str:
        audio_in = None
        if self.transcription_model or self.noise_reduction:
            audio_in = tr.AudioInput(
                transcription=tr.Transcription(model=self.transcription_model)
                if self.transcription_model
                else None,
                noise_reduction=tr.NoiseReduction(type=self.noise_reduction) if self.noise_reduction else None,
            )
        audio = tr.AudioConfig(input=audio_in, output=tr.AudioOutput(language=language))
        return tr.SessionUpdate(session=tr.SessionUpdateRequest(audio=audio)).to_json()

    def append(self, pcm16: bytes) -> str:
        return tr.InputAudioBufferAppend(audio=base64.b64encode(pcm16).decode("ascii")).to_json()

    def close(self) -> str | None:
        return tr.SessionClose().to_json()

    def read(self, data: dict) -> Reading:
        ev = _validated(data, tr.SERVER_EVENT_TYPES, tr.parse_server_event)
        match ev:
            case Reading():
                return ev
            case tr.OutputAudioDelta():
                return _audio(ev.delta, ev.elapsed_ms, ack_ms=ev.elapsed_ms)
            case tr.OutputTranscriptDelta():
                return Reading(outputs=[TargetText(ev.delta, ev.elapsed_ms)], ack_ms=ev.elapsed_ms)
            case tr.InputTranscriptDelta():
                return Reading(outputs=[SourceText(ev.delta, ev.elapsed_ms)])
            case tr.SessionCreated():
                return Reading(created=True, created_expires_at=ev.session.expires_at)
            case tr.SessionUpdated():
                return Reading(ready=True)
            case tr.SessionClosed():
                return Reading(closed=True)
            case tr.ErrorEvent():
                return _error_reading(ev.error)
        return Reading(unknown=True)  # pragma: no cover - the union is exhaustive


class RealtimeProtocol:
    """GA `/v1/realtime` with an interpreter prompt: server VAD cuts turns, each response is a translation.

    The session clock for acknowledgements is the input audio time the server reports in
    `speech_started` / `speech_stopped`: a turn is answered for once its `response.done` arrives.
    """

    name = "realtime"
    ready_type = "session.updated"
    acks_silence = False

    def __init__(
        self,
        model: str,
        prompt: str,
        voice: str,
        transcription_model: str | None,
        vad_threshold: float,
        silence_ms: int,
        prefix_padding_ms: int,
    ) -> None:
        self.model, self.prompt, self.voice = model, prompt, voice
        self.transcription_model = transcription_model
        self.vad = rt.ServerVad(
            threshold=vad_threshold, silence_duration_ms=silence_ms, prefix_padding_ms=prefix_padding_ms
        )
        self._speech_start_ms: int | None = None
        self._turn_end_ms: int | None = None
        self.in_turn = False

    def instructions(self, language: str) -> str:
        return self.prompt.format(language=language_name(language))

    def session_update(self, language: str) -> str:
        session = rt.RealtimeSessionConfig(
            model=self.model,
            instructions=self.instructions(language),
            output_modalities=["audio"],
            audio=rt.RealtimeAudio(
                input=rt.RealtimeAudioInput(
                    format=rt.AudioFormat(),
                    transcription=rt.InputTranscription(model=self.transcription_model)
                    if self.transcription_model
                    else None,
                    turn_detection=self.vad,
                ),
                output=rt.RealtimeAudioOutput(format=rt.AudioFormat(), voice=self.voice),
            ),
        )
        return rt.RealtimeSessionUpdate(session=session).to_json()

    def append(self, pcm16: bytes) -> str:
        return rt.InputAudioAppend(audio=base64.b64encode(pcm16).decode("ascii")).to_json()

    def close(self) -> str | None:
        return None  # the GA protocol has no graceful close: the socket is simply closed

    def read(self, data: dict) -> Reading:
        ev = _validated(data, rt.REALTIME_SERVER_EVENT_TYPES, rt.parse_realtime_server_event)
        match ev:
            case Reading():
                return ev
            case rt.ResponseOutputAudioDelta():
                return _audio(ev.delta, self._turn_end_ms, ack_ms=None)
            case rt.ResponseOutputAudioTranscriptDelta():
                return Reading(outputs=[TargetText(ev.delta, self._turn_end_ms)])
            case rt.ResponseOutputAudioTranscriptDone():
                return Reading(outputs=[TargetText("", self._turn_end_ms, final=True)])
            case rt.InputTranscriptionCompleted():
                return Reading(outputs=[SourceText(ev.transcript, self._turn_end_ms, final=True)])
            case rt.SpeechStarted():
                self._speech_start_ms = ev.audio_start_ms
                self.in_turn = True
                # Everything before the padded start was silence the server has already judged.
                return Reading(ack_ms=max(0, ev.audio_start_ms - self.vad.prefix_padding_ms))
            case rt.SpeechStopped():
                self._turn_end_ms = ev.audio_end_ms
                return Reading()
            case rt.ResponseDone():
                u = ev.response.usage
                self.in_turn = False
                return Reading(ack_ms=self._turn_end_ms, usage=(u.input_tokens, u.output_tokens) if u else None)
            case rt.RateLimitsUpdated():
                return Reading()
            case rt.RealtimeSessionCreated():
                return Reading(created=True)
            case rt.RealtimeSessionUpdated():
                return Reading(ready=True)
            case tr.ErrorEvent():
                return _error_reading(ev.error)
        return Reading(unknown=True)  # pragma: no cover
