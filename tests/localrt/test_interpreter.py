"""The per-session pipeline with scripted engines: segmentation, append-only text, timing, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.asr import Identified, Transcript
from bot.localrt.engines.bundle import Engines
from bot.localrt.engines.mt import RoutedTranslator
from bot.localrt.interpreter import Failure, Interpreter, SessionRequest, SourceText, TargetAudio, TargetText

FRAME = 9600


class LoudVAD:
    """Speech = loud frame: lets a test draw segments with amplitudes."""

    def speech_probability(self, audio: np.ndarray) -> float:
        return float(np.abs(audio).max() > 0.1)


class ScriptedASR:
    languages = frozenset({"en"})
    fixed_language = "en"
    partial_interval_ms = 1000

    def __init__(self, script) -> None:
        self.script = script  # (seconds of audio, prefix) -> text
        self.calls: list[tuple[float, str | None]] = []

    def identify(self, audio, candidates=None):
        return Identified("en", 1.0)

    def transcribe(self, audio, prefix=None, language=None):
        self.calls.append((round(len(audio) / 16000, 1), prefix))
        return Transcript(self.script(len(audio) / 16000, prefix), "en")


class UpperMT:
    def pairs(self):
        return {("en", "xx"): "upper"}

    def translate(self, text, source, target):
        return text.upper()


class BeepTTS:
    def voices(self):
        return {"xx": "beep", "en": "beep"}

    def synthesize(self, text, language):
        return np.full(24_000 * len(text.split()) // 4, 1000, dtype=np.int16)  # 250 ms per word


class ScriptedEngines(Engines):
    def new_vad(self):
        return LoudVAD()


def make(script, early: bool = True, **vad) -> tuple[Interpreter, ScriptedASR]:
    asr = ScriptedASR(script)
    config = LocalRTConfig.model_validate(
        {
            "vad": {"min_silence_ms": 400, "pre_roll_ms": 200, **vad},
            "mt": {"translate_sentences_early": early},
        }
    )
    engines = ScriptedEngines(config=config, asr=asr, mt=RoutedTranslator(UpperMT()), tts=BeepTTS())
    return Interpreter(engines), asr


def frames(pattern: str) -> list[bytes]:
    """'s' = a loud (speech) frame, '.' = a silent one."""
    loud = (np.ones(FRAME // 2) * 8000).astype("<i2").tobytes()
    return [loud if c == "s" else bytes(FRAME) for c in pattern]


def run(interp, pattern, settings):
    out = []
    for f in frames(pattern):
        out += interp.process([f], settings)
    return out


def test_partials_then_final_are_append_only_and_timed():
    def script(seconds, prefix):
        if seconds < 1.5:
            return "hello there"
        return "hello there my friend" if seconds < 3.5 else "hello there my friend today."

    interp, asr = make(script)
    # partial decodes at 1.4 s, 2.4 s, 3.4 s of segment audio; the final one after 400 ms of silence
    out = run(interp, "." + "s" * 17 + "...", SessionRequest("xx", transcribe=True))
    source = [o for o in out if isinstance(o, SourceText)]
    assert [s.delta for s in source] == ["hello there", " my friend", " today."]
    assert all(s.elapsed_ms % 200 == 0 for s in source)
    assert [s.elapsed_ms for s in source] == sorted(s.elapsed_ms for s in source)
    text = [o for o in out if isinstance(o, TargetText)]
    assert [t.delta for t in text] == ["HELLO THERE MY FRIEND TODAY."]
    # the frame where 400 ms of silence closed the segment (one later: the resampler's few ms of delay)
    assert text[0].elapsed_ms in (20 * 200, 21 * 200)
    audio = [o for o in out if isinstance(o, TargetAudio)]
    assert sum(len(a.pcm) for a in audio) == 24_000 * 5 // 4 * 2
    assert all(len(a.pcm) <= FRAME for a in audio) and all(a.elapsed_ms == text[0].elapsed_ms for a in audio)
    assert all(prefix is None for _, prefix in asr.calls)  # agreement held: no re-decode needed


def test_a_contradicting_final_decode_continues_the_sent_text():
    def script(seconds, prefix):
        if prefix:
            return f"{prefix} jumps."
        return "the quick brown fox" if seconds < 2.5 else "a quick brown box jumps."

    interp, asr = make(script)
    out = run(interp, "s" * 12 + "...", SessionRequest("xx", transcribe=True))
    src = "".join(o.delta for o in out if isinstance(o, SourceText))
    assert src == "the quick brown fox jumps."
    assert asr.calls[-1][1] == "the quick brown fox"
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["THE QUICK BROWN FOX JUMPS."]


def test_no_transcription_means_no_partials_and_no_source_text():
    interp, asr = make(lambda s, p: "one two three", early=False)
    out = run(interp, "s" * 12 + "...", SessionRequest("xx", transcribe=False))
    assert not [o for o in out if isinstance(o, SourceText)]
    assert len(asr.calls) == 1  # only the final decode
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["ONE TWO THREE"]


def test_second_segment_delta_starts_with_a_space_and_language_is_per_call():
    interp, _ = make(lambda s, p: "hi")
    out = run(interp, "sss...", SessionRequest("xx", transcribe=False))
    out += run(interp, "sss...", SessionRequest("en", transcribe=False))
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["HI", " hi"]


def test_finish_flushes_an_open_segment_and_noise_blips_are_dropped():
    interp, asr = make(lambda s, p: "bye", min_speech_ms=600)
    out = run(interp, "s...", SessionRequest("xx", transcribe=False))  # 200 ms blip: dropped, not decoded
    assert out == [] and asr.calls == []
    out = run(interp, "sssss", SessionRequest("xx", transcribe=False))
    assert not [o for o in out if isinstance(o, TargetText)]
    out = interp.finish(SessionRequest("xx", transcribe=False))
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["BYE"]


def test_unroutable_language_is_a_failure_not_a_crash():
    interp, _ = make(lambda s, p: "hello")
    out = run(interp, "sss...", SessionRequest("de", transcribe=False))
    assert [type(o) for o in out] == [Failure] and out[0].code == "unsupported_language"
    out = run(interp, "sss...", SessionRequest("xx", transcribe=False))
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["HELLO"]


def test_final_decode_runs_one_frame_early_and_is_discarded_if_speech_resumes():
    # (the resampler's few ms of delay make the first silent frame after speech still count as speech)
    interp, asr = make(lambda s, p: f"{s:.1f} seconds", early=False)
    out = run(interp, "sss...", SessionRequest("xx", transcribe=False))
    # decoded at the first frame of silence (5 frames = 1.0 s), reused when the next one ended it
    assert asr.calls == [(1.0, None)]
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["1.0 SECONDS"]

    interp, asr = make(lambda s, p: f"{s:.1f} seconds", early=False)
    out = run(interp, "sss..ss...", SessionRequest("xx", transcribe=False))
    assert asr.calls == [(1.0, None), (1.8, None)]  # the early decode went stale when speech resumed
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["1.8 SECONDS"]

    interp, asr = make(lambda s, p: f"{s:.1f} seconds", early=False)
    interp.process(frames("sss..."), SessionRequest("xx", transcribe=False))  # all at hand: no early decode
    assert asr.calls == [(1.2, None)]


def test_a_stable_sentence_is_translated_before_the_pause():
    def script(seconds, prefix):
        if seconds < 1.5:
            return "Good morning."
        if seconds < 2.5:
            return "Good morning. How are"
        return "Good morning. How are you?"

    interp, _ = make(script)
    out = []
    for i, f in enumerate(frames("s" * 14 + "...")):
        out += [(i, o) for o in interp.process([f], SessionRequest("xx", transcribe=False))]
    texts = [(i, o.delta) for i, o in out if isinstance(o, TargetText)]
    # the first sentence went out mid-segment (at the second partial), the rest after the pause
    assert texts[0][1] == "GOOD MORNING." and texts[0][0] < 14
    assert [t for _, t in texts] == ["GOOD MORNING.", " HOW ARE YOU?"]
    first_audio = next(i for i, o in out if isinstance(o, TargetAudio))
    assert first_audio == texts[0][0]
    assert not [o for _, o in out if isinstance(o, SourceText)]  # early translation needs no captions


# --- issue 12: the speaker's language, identified once; speech already in the target language ------


class IdentifyingASR(ScriptedASR):
    """A multilingual recogniser: records what identification was asked, hears `language` when told none."""

    fixed_language = None
    languages = frozenset({"en", "es", "fr"})

    def __init__(self, script, heard: str) -> None:
        super().__init__(script)
        self.heard = heard
        self.identified: list[tuple[float, frozenset[str] | None]] = []
        self.told: list[str | None] = []

    def identify(self, audio, candidates=None):
        self.identified.append((round(len(audio) / 16000, 1), candidates))
        return Identified(self.heard, 0.9)

    def transcribe(self, audio, prefix=None, language=None):
        self.told.append(language)
        return Transcript(self.script(len(audio) / 16000, prefix), language or self.heard)


class TwoWayMT(UpperMT):
    def pairs(self):
        return {("en", "xx"): "upper", ("es", "xx"): "upper"}


def make_identifying(heard: str, spoken=None, candidates=frozenset(), **local):
    asr = IdentifyingASR(lambda s, p: "hola amigos.", heard)
    config = LocalRTConfig.model_validate(
        {"vad": {"min_silence_ms": 400, "pre_roll_ms": 200}, "asr": {"candidate_languages": ["fr"]}, **local}
    )
    engines = ScriptedEngines(config=config, asr=asr, mt=RoutedTranslator(TwoWayMT()), tts=BeepTTS())
    return Interpreter(engines, spoken, candidates), asr


def test_the_language_is_identified_once_from_enough_speech_then_kept():
    interp, asr = make_identifying("es", candidates=frozenset({"en", "es"}))
    request = SessionRequest("xx", transcribe=True)
    # 1.4 s into the segment a partial is due, but 1.5 s of speech is needed: no partial, no identification
    out = run(interp, "." + "s" * 7, request)
    assert asr.identified == [] and asr.told == [] and out == []
    out = run(interp, "s" * 8 + "...", request)
    # the next partial (2.4 s of audio) identifies, among the client's candidates and the config's
    assert asr.identified == [(2.4, frozenset({"en", "es", "fr"}))]
    assert interp.language == "es" and set(asr.told) == {"es"}
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["HOLA AMIGOS."]
    run(interp, "ssssssssss...", request)
    assert len(asr.identified) == 1  # kept for the session: never paid again


def test_a_short_first_segment_is_identified_for_itself_only():
    interp, asr = make_identifying("es")
    run(interp, "sss...", SessionRequest("xx", transcribe=False))  # 0.6 s + pre-roll: too short to keep
    assert len(asr.identified) == 1 and asr.identified[0][1] == frozenset({"fr"})  # the config's list
    assert interp.language is None and asr.told == ["es"]


def test_a_given_language_skips_identification():
    interp, asr = make_identifying("fr", spoken="es")
    out = run(interp, "ssssssssss...", SessionRequest("xx", transcribe=False))
    assert asr.identified == [] and set(asr.told) == {"es"}
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["HOLA AMIGOS."]


@pytest.mark.parametrize("mode", ["revoice", "silent"])
def test_speech_already_in_the_target_language_is_not_translated(mode):
    interp, _ = make_identifying("es", spoken="es", same_language=mode)
    out = run(interp, "ssssssssss...", SessionRequest("es", transcribe=False))
    assert [o.delta for o in out if isinstance(o, TargetText)] == ["hola amigos."]  # the text as heard, no MT
    audio = [o for o in out if isinstance(o, TargetAudio)]
    assert bool(audio) == (mode == "revoice")
