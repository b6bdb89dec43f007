"""Speech recognition on 16 kHz mono float32 segments.

One recognizer serves every session (models are big); implementations must be safe to call from
several executor threads at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from bot.audio.pcm import to_pcm16
from bot.localrt import languages
from bot.localrt.config import ASRConfig
from bot.localrt.engines.errors import EngineError
from bot.localrt.engines.whisper_models import base_installed, tiny_en_path, whisper_base_path
from bot.localrt.transcript import cut_repeat

ASR_RATE = 16_000

# Partial re-decode cadence per model when asr.partial_interval_ms is not set. Measured on 2 cores
# (benchmarks/bench_languages.py): tiny.en decodes a 3 s segment in ~0.3 s, base in ~0.9 s, so base
# re-decoding every second would keep a thread busy most of the time and delay the final decode that
# carries the translation. Unknown models get base's cadence (they are at least as big).
PARTIAL_INTERVAL_MS = {"tiny.en": 1000, "base": 2000}
DEFAULT_PARTIAL_INTERVAL_MS = 2000
# Confidence below which a decode is "not a language the recogniser knows". For English-only tiny.en,
# whisper's own failure threshold (-1.0) stops it inventing English for other languages; base, told the
# language, decoded espeak-ng's French/Italian/Portuguese (hard for it, but mostly words) at -1.0…-1.5.
MIN_AVG_LOGPROB = {"tiny.en": -1.0}
DEFAULT_MIN_AVG_LOGPROB = -1.6


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    # The recogniser heard sound it could not make words of: a language it does not know, usually
    # (whisper's text is then an invention, e.g. "We will see you next time." for Spanish to tiny.en).
    unintelligible: bool = False


@dataclass(frozen=True)
class Identified:
    """The spoken language a recogniser picked among candidates, and how sure it was (0..1 among them)."""

    language: str
    probability: float


class Recognizer(Protocol):
    languages: frozenset[str]  # what it can hear (ISO 639-1, whisper's codes)
    fixed_language: str | None  # set when it hears only one language: no identification needed
    partial_interval_ms: int  # partial re-decode cadence suited to its speed

    def transcribe(self, audio: np.ndarray, prefix: str | None = None, language: str | None = None) -> Transcript:
        """Text of the whole segment. `prefix` is text already committed for it (a decoding hint);
        `language` the spoken language (None: the recogniser's own, or detected on this decode)."""
        ...

    def identify(self, audio: np.ndarray, candidates: frozenset[str] | None = None) -> Identified:
        """The spoken language of `audio`, restricted to `candidates` when given."""
        ...


def default_model() -> str:
    """`base` when its packages are installed (multilingual), else `tiny.en` (English only)."""
    return "base" if base_installed() else "tiny.en"


def _looks_like_path(source: str) -> bool:
    """`./m`, `/opt/m`, `~/m`, `models/whisper/small`: a path. `tiny.en`, `owner/name`: a model name."""
    return source.startswith((".", "/", "~")) or source.endswith("/") or source.count("/") >= 2 or "\\" in source


def _check_model_source(source: str) -> str:
    """A path must be a folder that exists (it is never taken for a hub repository id such as
    `Systran/faster-whisper-small`, which has exactly one slash and does not exist on disk)."""
    path = Path(source).expanduser()
    if path.exists() or _looks_like_path(source):
        if not path.exists():
            raise EngineError(f"asr.model {source}: no such folder (a faster-whisper model folder or a model name)")
        if not path.is_dir() or not (path / "model.bin").is_file():
            raise EngineError(f"asr.model {source}: not a faster-whisper model folder (it needs model.bin)")
        return str(path)
    return source


def resolve_model(name: str | None) -> tuple[str, str]:
    """(label, what faster-whisper loads) for asr.model: the bundled `base` / `tiny.en`, a folder, or a
    name already in faster-whisper's cache."""
    name = name or default_model()
    if name == "base":
        return "base", str(whisper_base_path())
    if name == "tiny.en":
        return "tiny.en", str(tiny_en_path())
    return name, _check_model_source(name)


class WhisperRecognizer:
    """faster-whisper (CTranslate2). `num_workers` lets that many threads decode in parallel."""

    def __init__(self, cfg: ASRConfig) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineError("faster-whisper is not installed: pip install 'parley[local]'") from exc
        self.label, source = resolve_model(cfg.model)
        try:
            self._model = WhisperModel(
                source,
                device="cpu",
                compute_type=cfg.compute_type,
                cpu_threads=cfg.cpu_threads,
                num_workers=cfg.num_workers,
                local_files_only=True,
            )
        except Exception as exc:
            if Path(source).is_dir():
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise EngineError(f"asr.model {source}: not a faster-whisper model folder ({reason})") from None
            raise EngineError(
                f"asr.model {source!r}: no such model on this host (models are never downloaded at run time);"
                " set it to a faster-whisper model folder, or to base / tiny.en (the bundled ones)"
            ) from None
        multilingual = bool(getattr(self._model.model, "is_multilingual", not self.label.endswith(".en")))
        # whisper's own codes (`no`, `jw`) ↔ the wire's (`nb`, `jv`)
        whisper_codes = self._model.supported_languages if multilingual else ["en"]
        self._to_whisper = {languages.normalize(c) or c: c for c in whisper_codes}
        self._to_wire = {c: w for w, c in self._to_whisper.items()}
        known = frozenset(self._to_whisper)
        language = (languages.normalize(cfg.language) or cfg.language) if multilingual and cfg.language else None
        language = language if multilingual else "en"
        if language is not None and language not in known:
            raise EngineError(f"asr.language {language!r}: {self.label} does not know it")
        unknown = [c for c in cfg.candidate_languages if (languages.normalize(c) or c) not in known]
        if unknown:
            raise EngineError(f"asr.candidate_languages: {', '.join(unknown)} not known to {self.label}")
        self.fixed_language = language
        self.languages = frozenset({language}) if language else known
        if cfg.partial_interval_ms is not None:
            self.partial_interval_ms = cfg.partial_interval_ms
        else:
            self.partial_interval_ms = PARTIAL_INTERVAL_MS.get(self.label, DEFAULT_PARTIAL_INTERVAL_MS)
        self._beam = cfg.beam_size
        if cfg.min_avg_logprob == "auto":
            self._min_logprob: float | None = MIN_AVG_LOGPROB.get(self.label, DEFAULT_MIN_AVG_LOGPROB)
        else:
            self._min_logprob = cfg.min_avg_logprob

    @staticmethod
    def _padded(audio: np.ndarray) -> np.ndarray:
        # whisper misreads speech that starts or ends right at the buffer edge: pad with silence.
        pad = np.zeros(ASR_RATE // 2, dtype=np.float32)
        return np.concatenate([pad, audio.astype(np.float32, copy=False), pad])

    def identify(self, audio: np.ndarray, candidates: frozenset[str] | None = None) -> Identified:
        if self.fixed_language:
            return Identified(self.fixed_language, 1.0)
        # one encoder pass over the first 30 s; whisper's language token probabilities, masked
        _, _, probs = self._model.detect_language(audio=self._padded(audio))
        wire = [(self._to_wire.get(lang, lang), p) for lang, p in probs]
        allowed = [(lang, p) for lang, p in wire if not candidates or lang in candidates]
        if not allowed:
            raise EngineError("none of the candidate languages is one the recogniser knows")
        total = sum(p for _, p in allowed) or 1.0
        language, p = max(allowed, key=lambda lp: lp[1])
        return Identified(language, p / total)

    def transcribe(self, audio: np.ndarray, prefix: str | None = None, language: str | None = None) -> Transcript:
        language = self.fixed_language or language
        segments, info = self._model.transcribe(
            self._padded(audio),
            language=self._to_whisper.get(language, language) if language else None,
            beam_size=self._beam,
            # No temperature fallback: re-decoding a poor segment at rising temperatures took base 5-8 s
            # for a 4 s sentence without better text; a low-confidence decode is judged below instead.
            temperature=0.0,
            # Timestamp mode: without timestamps whisper often ends the text after the first sentence
            # of a segment, depending on how much silence follows (the README sample read as an 8 kHz
            # file lost "The meeting starts at ten." whenever the file ended right after it).
            without_timestamps=False,
            condition_on_previous_text=False,
            vad_filter=False,
            prefix=prefix or None,
        )
        segments = list(segments)
        text = "".join(s.text for s in segments).strip()
        heard = language or self._to_wire.get(info.language, info.language)
        if self._min_logprob is not None and segments and not prefix:
            weight = sum(max(1, len(s.tokens)) for s in segments)
            logprob = sum(s.avg_logprob * max(1, len(s.tokens)) for s in segments) / weight
            if logprob < self._min_logprob:
                return Transcript(text="", language=heard, unintelligible=True)
        if prefix:
            # faster-whisper returns the prefix as part of the text (or nothing when it heard no speech)
            head = prefix.strip()
            rest = text[len(head) :] if text.startswith(head) else text
            text = " ".join([head, *cut_repeat(head.split(), rest.split())])
        return Transcript(text=text, language=heard)


class SphinxRecognizer:
    """pocketsphinx with its bundled US-English model: light and fast, less accurate than whisper."""

    languages = frozenset({"en"})
    fixed_language = "en"
    label = "pocketsphinx en-us"

    def __init__(self, cfg: ASRConfig) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise EngineError("pocketsphinx is not installed: pip install pocketsphinx") from exc
        if cfg.language not in (None, "en"):
            raise EngineError("pocketsphinx ships an English model only (asr.language: en)")
        self._decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
        self.partial_interval_ms = 1000 if cfg.partial_interval_ms is None else cfg.partial_interval_ms
        self._lock = threading.Lock()  # one decoder, not reentrant

    def identify(self, audio: np.ndarray, candidates: frozenset[str] | None = None) -> Identified:
        return Identified("en", 1.0)

    def transcribe(self, audio: np.ndarray, prefix: str | None = None, language: str | None = None) -> Transcript:
        pcm = to_pcm16(audio)
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
        return Transcript(text=hyp.hypstr if hyp else "", language="en")


def make_recognizer(cfg: ASRConfig) -> Recognizer:
    if cfg.engine == "pocketsphinx":
        return SphinxRecognizer(cfg)
    return WhisperRecognizer(cfg)
