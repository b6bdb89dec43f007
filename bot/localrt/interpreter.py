"""One session's interpreting pipeline: frames in → source text, translated text and speech out.

Runs in an executor thread (engines block); the server calls it for one session at a time, in order,
so it needs no locks of its own. It does no network I/O: it returns outputs for the server to send.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import soxr

from bot.audio.pcm import to_float
from bot.localrt import languages
from bot.localrt.engines.asr import ASR_RATE, EngineError, Transcript
from bot.localrt.engines.bundle import Engines
from bot.localrt.segmenter import Segmenter, Step
from bot.localrt.transcript import StableText, agreed_prefix, join_delta, sentence_end
from bot.realtime.translation_events import ENGINE_FRAME_BYTES, ENGINE_FRAME_MS, SAMPLE_RATE

log = logging.getLogger(__name__)

AUDIO_CHUNK_BYTES = ENGINE_FRAME_BYTES  # output audio goes out in 200 ms deltas


@dataclass(frozen=True)
class SourceText:
    delta: str
    elapsed_ms: int


@dataclass(frozen=True)
class TargetText:
    delta: str
    elapsed_ms: int


@dataclass(frozen=True)
class TargetAudio:
    pcm: bytes  # pcm16 mono 24 kHz
    elapsed_ms: int


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


Output = SourceText | TargetText | TargetAudio | Failure


@dataclass(frozen=True)
class SessionRequest:
    """What the session asks for, snapshotted per call (the loop may change it in between)."""

    target: str
    transcribe: bool  # emit source text (audio.input.transcription configured)
    partials: bool = True  # allowed to spend time on partial decodes (off when busy or backlogged)
    ahead: bool = True  # allowed to decode one frame before a likely segment end (off when backlogged)


class Interpreter:
    """`spoken`: the speaker's language when the client said it (no identification then); `candidates`:
    the languages identification may choose, with the config's `asr.candidate_languages` (neither given:
    the languages some route translates from)."""

    def __init__(
        self,
        engines: Engines,
        spoken: str | None = None,
        candidates: frozenset[str] = frozenset(),
        name: str = "session",
    ) -> None:
        cfg = engines.config
        self._engines = engines
        self._name = name
        self.language: str | None = engines.asr.fixed_language or spoken  # kept for the session once known
        configured = {code for code in (languages.normalize(x) for x in cfg.asr.candidate_languages) if code}
        # none named: the languages the server can translate from (a guess outside them helps nobody)
        self._candidates = frozenset(candidates | configured) or (
            None if self.language else engines.input_languages() or None
        )
        self._identify_samples = cfg.asr.identify_min_speech_ms * ASR_RATE // 1000
        self._same_language = cfg.same_language
        self._vad = engines.new_vad()
        self._seg = Segmenter(
            threshold=cfg.vad.threshold,
            min_silence_ms=cfg.vad.min_silence_ms,
            min_speech_ms=cfg.vad.min_speech_ms,
            max_segment_ms=cfg.vad.max_segment_ms,
            max_grace_ms=cfg.vad.max_grace_ms,
            pre_roll_ms=cfg.vad.pre_roll_ms,
        )
        self._resampler = soxr.ResampleStream(SAMPLE_RATE, ASR_RATE, 1, dtype="float32")
        self._audio16: list[np.ndarray] = []  # 16 kHz audio of the open segment, one array per frame
        self._pre16: list[np.ndarray] = []
        self._partial_every = max(0, engines.asr.partial_interval_ms // ENGINE_FRAME_MS)
        self._since_partial = 0
        self._text = StableText()
        self._translated = 0  # committed words of the open segment already translated
        self._early = cfg.mt.translate_sentences_early
        self._source_started = False
        self._target_started = False
        self._ahead: Transcript | None = None  # final decode made one frame early
        self.frames = 0  # input clock, in frames

    @property
    def elapsed_ms(self) -> int:
        return self.frames * ENGINE_FRAME_MS

    def process(self, frames: list[bytes], settings: SessionRequest) -> list[Output]:
        """Consume whole 200 ms frames; return what became ready, in order."""
        out: list[Output] = []
        for i, frame in enumerate(frames):
            self.frames += 1
            pcm = to_float(frame)
            audio16 = self._resampler.resample_chunk(pcm)
            step = self._seg.push(frame, self._vad.speech_probability(audio16))
            self._track_audio(step, audio16)
            last_in_batch = i == len(frames) - 1
            if step in (Step.END, Step.DROP):
                out += self._close_segment(step, settings)
                continue
            if step is Step.CONTINUE and not self._seg.one_frame_from_end:
                self._ahead = None  # speech went on: a decode made ahead is stale
            if step is Step.CONTINUE and self._seg.one_frame_from_end and last_in_batch and settings.ahead:
                # Decode now, while waiting for the frame that will probably end the segment: that
                # frame is silence, so this decode is the final one and the translation comes 200 ms
                # sooner. Not when the next frame is already here (no wait to hide the work in).
                out += self._decode_ahead()
            elif step is Step.CONTINUE and (settings.transcribe or self._early) and self._partial_every:
                self._since_partial += 1
                if self._since_partial >= self._partial_every and settings.partials and last_in_batch:
                    self._since_partial = 0
                    out += self._partial(settings)
        return out

    def finish(self, settings: SessionRequest) -> list[Output]:
        """End of input: close the open segment so its translation is not lost."""
        step = self._seg.finish()
        if step is Step.IDLE:
            return []
        return self._close_segment(step, settings)

    # --- internals -----------------------------------------------------------------------------

    def _track_audio(self, step: Step, audio16: np.ndarray) -> None:
        pre_frames = max(1, -(-self._engines.config.vad.pre_roll_ms // ENGINE_FRAME_MS))
        if step is Step.IDLE:
            self._pre16 = [*self._pre16, audio16][-pre_frames:]
        elif step is Step.START:
            self._audio16 = [*self._pre16, audio16]
            self._pre16 = []
            self._since_partial = 0
        else:
            self._audio16.append(audio16)

    def _segment_audio(self) -> np.ndarray:
        return np.concatenate(self._audio16) if self._audio16 else np.zeros(0, dtype=np.float32)

    def _spoken_language(self, audio: np.ndarray, final: bool) -> str | None:
        """The session's language: given, or identified once from enough speech and then kept. A partial
        decode before that waits (None); a final one on a shorter first segment identifies from what
        there is, for that segment only."""
        if self.language is not None:
            return self.language
        if not final and len(audio) < self._identify_samples:
            return None
        found = self._engines.asr.identify(audio, self._candidates)
        if len(audio) >= self._identify_samples:
            self.language = found.language
            log.info(
                "%s: the speaker's language is %s (p=%.2f among %s)",
                self._name,
                found.language,
                found.probability,
                ", ".join(sorted(self._candidates)) if self._candidates else "every language it knows",
            )
        return found.language

    def _decode_ahead(self) -> list[Output]:
        try:
            audio = self._segment_audio()
            self._ahead = self._engines.asr.transcribe(audio, language=self._spoken_language(audio, final=True))
        except EngineError as exc:
            self._ahead = None
            return [Failure("asr_failed", str(exc))]
        return []

    def _partial(self, settings: SessionRequest) -> list[Output]:
        try:
            audio = self._segment_audio()
            language = self._spoken_language(audio, final=False)
            if language is None:
                return []  # too little speech yet to tell the language: no partial this time
            # no prefix here: a forced prefix makes whisper repeat itself; agreement does the rest
            hyp = self._engines.asr.transcribe(audio, language=language)
        except EngineError as exc:
            return [Failure("asr_failed", str(exc))]
        words = self._text.update(hyp.text)
        out = self._source_delta(words) if settings.transcribe else []
        end = sentence_end(self._text.committed, self._translated)
        if self._early and end > self._translated:
            # a whole sentence is stable: translate it now, while the speaker goes on
            sentence = " ".join(self._text.committed[self._translated : end])
            self._translated = end
            out += self._translate(sentence, hyp.language, settings.target)
        return out

    def _source_delta(self, words: list[str]) -> list[Output]:
        delta = join_delta(words, first=not self._source_started)
        if not delta:
            return []
        self._source_started = True
        return [SourceText(delta, self.elapsed_ms)]

    def _close_segment(self, step: Step, settings: SessionRequest) -> list[Output]:
        audio = self._segment_audio()
        self._audio16 = []
        text, done = self._text, self._translated
        self._text, self._translated = StableText(), 0
        if step is Step.DROP and not text.committed:
            return []
        out: list[Output] = []
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None and self._seg.ended_by_silence:
                hyp = ahead
            else:
                hyp = self._engines.asr.transcribe(audio, language=self._spoken_language(audio, final=True))
            if agreed_prefix(text.committed, hyp.text.split()) < len(text.committed):
                # the final decode contradicts text already sent: decode again continuing that text
                hyp = self._engines.asr.transcribe(audio, prefix=text.text, language=hyp.language)
        except EngineError as exc:
            return [Failure("asr_failed", str(exc))]
        if hyp.unintelligible and not text.committed:
            heard = ", ".join(sorted(self._engines.asr.languages)) if len(self._engines.asr.languages) < 10 else ""
            return [Failure("speech_not_recognised", "speech was not in a language the recogniser knows"
                            + (f" (it knows: {heard})" if heard else ""))]
        words = text.finish(hyp.text)
        if settings.transcribe:
            out += self._source_delta(words)
        source = " ".join(text.committed[done:]).strip()  # what early translation has not covered
        if not source:
            return out
        return out + self._translate(source, hyp.language, settings.target)

    def _translate(self, source: str, language: str, target: str) -> list[Output]:
        engines = self._engines
        if not engines.mt.can_translate(language, target):
            return [Failure("unsupported_language", f"no translation route {language}→{target}")]
        try:
            translated = engines.mt.translate(source, language, target)  # the same language passes through as is
            speak = translated and not (language == target and self._same_language == "silent")  # or text only
            speech = engines.tts.synthesize(translated, target) if speak else None
        except EngineError as exc:
            log.warning("segment lost: %s", exc)
            return [Failure("engine_failed", str(exc))]
        out: list[Output] = []
        delta = join_delta(translated.split(), first=not self._target_started)
        if delta:
            self._target_started = True
            out.append(TargetText(delta, self.elapsed_ms))
        if speech is not None and len(speech):
            pcm = speech.astype("<i2").tobytes()
            out += [
                TargetAudio(pcm[i : i + AUDIO_CHUNK_BYTES], self.elapsed_ms)
                for i in range(0, len(pcm), AUDIO_CHUNK_BYTES)
            ]
        return out
