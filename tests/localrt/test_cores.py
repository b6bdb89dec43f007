"""Pure cores: framing, segmentation, append-only text, language routing, session state, config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.localrt import languages
from bot.localrt.config import LocalRTConfig
from bot.localrt.errors import ProtocolError
from bot.localrt.framing import FrameBuffer
from bot.localrt.segmenter import Segmenter, Step
from bot.localrt.session import SessionState
from bot.localrt.transcript import StableText, join_delta
from bot.realtime.translation_events import SessionUpdateRequest


def test_framebuffer_reframes_any_chunking_to_9600_bytes():
    data = bytes(range(256)) * 200  # 51200 bytes: 5 frames + 3200 bytes
    fb = FrameBuffer()
    frames = []
    for size in (1, 9599, 3, 20000, 7):
        frames += fb.push(data[:size])
        data = data[size:]
    frames += fb.push(data)
    assert [len(f) for f in frames] == [9600] * 5
    assert b"".join(frames) == (bytes(range(256)) * 200)[:48000]
    assert fb.pending_bytes == 3200 and fb.elapsed_ms == 1000
    tail = fb.flush()
    assert tail is not None and len(tail) == 9600 and tail[3200:] == bytes(6400)
    assert fb.elapsed_ms == 1200 and fb.flush() is None


def seg_run(probs: list[float], **kw) -> list[Step]:
    seg = Segmenter(**kw)
    return [seg.push(bytes([i]), p) for i, p in enumerate(probs)]


def test_segment_opens_on_speech_and_ends_after_silence():
    steps = seg_run([0, 0, 1, 1, 0, 1, 0, 0, 0], min_silence_ms=400, pre_roll_ms=200)
    assert steps == [Step.IDLE, Step.IDLE, Step.START] + [Step.CONTINUE] * 4 + [Step.END, Step.IDLE]


def test_segment_keeps_pre_roll_and_its_frames():
    seg = Segmenter(min_silence_ms=200, pre_roll_ms=400)
    for i, p in enumerate([0, 0, 0, 1, 1, 0]):
        seg.push(bytes([i]), p)
    assert seg.frames == [bytes([i]) for i in (1, 2, 3, 4, 5)]


def test_short_blips_are_dropped_and_long_speech_is_cut():
    assert seg_run([1, 0, 0], min_speech_ms=400, min_silence_ms=400)[-1] is Step.DROP
    steps = seg_run([1] * 12, max_segment_ms=2000, max_grace_ms=0)
    assert steps.count(Step.END) == 1 and steps.index(Step.END) == 9 and steps[10] is Step.START
    # past the limit, the first quiet frame ends it (no mid-word cut) ...
    steps = seg_run([1] * 11 + [0.2] + [1] * 3, max_segment_ms=2000, max_grace_ms=1000, min_silence_ms=400)
    assert steps.index(Step.END) == 11 and steps[12] is Step.START
    # ... and without one, the grace period bounds it
    steps = seg_run([1] * 20, max_segment_ms=2000, max_grace_ms=1000)
    assert steps.index(Step.END) == 14
    seg = Segmenter()
    seg.push(b"a", 1.0)
    assert seg.finish() is Step.END and seg.finish() is Step.IDLE


def test_stable_text_commits_only_what_two_hypotheses_agree_on():
    st = StableText()
    assert st.update("where is") == []
    assert st.update("where it is the") == ["where"]
    assert st.update("Where it is the train") == ["it", "is", "the"]
    assert st.update("where it was the train station") == []  # disagreement: nothing new, nothing undone
    assert st.finish("Where it is the train station?") == ["train", "station?"]
    assert st.text == "where it is the train station?"


def test_stable_text_never_retracts():
    st = StableText()
    st.update("a b c")
    st.update("a b d")
    assert st.committed == ["a", "b"]
    assert st.finish("x y z w") == ["z", "w"]  # sent text stands; only what lies beyond is added
    assert st.committed == ["a", "b", "z", "w"]


def test_deltas_are_append_only_fragments():
    assert join_delta(["Hola"], first=True) == "Hola"
    assert join_delta(["buenos", "días"], first=False) == " buenos días"
    assert join_delta([], first=False) == ""


def test_language_codes():
    assert languages.normalize("ES") == "es" and languages.normalize("es-419") == "es"
    assert languages.normalize("cat") == "ca" and languages.normalize("12") is None
    assert languages.parse_mode_name("eng-spa") == [("en", "es")]
    assert languages.parse_mode_name("en-eo") == [("en", "eo")]
    assert languages.parse_mode_name("eo-en-bytecode") == []
    assert languages.parse_mode_name("eng-cat_valencia") == []
    assert languages.parse_mode_name("xyz-spa") == []


def test_routes_direct_pivot_and_passthrough():
    pairs = {("en", "es"): "eng-spa", ("ca", "en"): "cat-eng", ("en", "ca"): "eng-cat"}
    assert languages.mt_path("en", "es", pairs) == [("en", "es")]
    assert languages.mt_path("ca", "es", pairs) == [("ca", "en"), ("en", "es")]
    assert languages.mt_path("ca", "es", pairs, pivot=False) is None
    assert languages.mt_path("es", "ca", pairs) is None
    assert languages.mt_path("es", "es", pairs) == []
    voices = {"es": "es", "en": "en-us"}  # no Catalan voice: no ca output
    rows = languages.routes(["en", "ca"], pairs, voices)
    assert {(r.source, r.target) for r in rows} == {("en", "es"), ("en", "en"), ("ca", "es"), ("ca", "en")}
    table = languages.format_table(rows)
    assert "| ca | es | usable | cat-eng → eng-spa | es |" in table


def test_espeak_voice_listing_parses():
    listing = (
        "Pty Language       Age/Gender VoiceName          File                 Other Languages\n"
        " 5  ca              --/M      Catalan            roa/ca\n"
        " 3  es-es           --/F      spanish-mbrola-3   mb/mb-es3            (es 3)\n"
        " 5  es              --/M      Spanish_(Spain)    roa/es\n"
        " 2  en-gb           --/M      English_(GB)       gmw/en\n"
    )
    assert languages.parse_espeak_voices(listing) == {"ca": "ca", "es": "es", "en": "en-us"}


def make_state() -> SessionState:
    return SessionState("m", "es", 3600, {"es", "ca", "en"})


def update(audio: dict) -> SessionUpdateRequest:
    return SessionUpdateRequest.model_validate({"audio": audio})


def test_session_update_changes_only_what_was_sent():
    st = make_state()
    assert st.id.startswith("sess_") and st.target == "es" and not st.transcribe
    st.apply(update({"input": {"transcription": {"model": "w"}}}))
    assert st.transcribe and st.target == "es"
    st.apply(update({"output": {"language": "CA"}}))
    assert st.target == "ca" and st.transcribe
    st.apply(update({"input": {"transcription": None}}))
    assert not st.transcribe
    info = st.info()
    assert info.type == "translation" and info.audio.output.language == "ca"


def test_session_update_with_bad_language_changes_nothing():
    st = make_state()
    with pytest.raises(ProtocolError) as err:
        st.apply(update({"output": {"language": "de"}, "input": {"transcription": {"model": "w"}}}), "e1")
    assert err.value.code == "unsupported_language" and err.value.event_id == "e1"
    assert st.target == "es" and not st.transcribe  # all or nothing
    event = err.value.to_event()
    assert event.error.param == "session.audio.output.language"


def test_config_forbids_unknown_keys_and_reads_key_from_env(monkeypatch):
    with pytest.raises(ValidationError):
        LocalRTConfig.model_validate({"prot": 1})
    with pytest.raises(ValidationError):
        LocalRTConfig.model_validate({"asr": {"engine": "nonsense"}})
    cfg = LocalRTConfig.model_validate({"port": 9000, "api_key_env": "MY_KEY", "mt": {"pivot": False}})
    monkeypatch.delenv("MY_KEY", raising=False)
    assert cfg.api_key() is None and cfg.url == "ws://127.0.0.1:9000"
    monkeypatch.setenv("MY_KEY", "s3cret")
    assert cfg.api_key() == "s3cret"


def test_cut_repeat_drops_a_restarted_sentence():
    from bot.localrt.transcript import cut_repeat

    prefix = ["I", "would", "like", "a", "cup", "of", "coffee,", "please."]
    assert cut_repeat(prefix, ["I", "would", "like", "a", "cup"]) == []
    assert cut_repeat(prefix, ["and", "tea.", "i", "would", "like"]) == ["and", "tea."]
    assert cut_repeat(prefix, ["and", "tea."]) == ["and", "tea."]
    assert cut_repeat([], ["x"]) == ["x"]


def test_sentence_end_finds_the_last_complete_sentence():
    from bot.localrt.transcript import sentence_end

    words = ["Hello.", "How", "are", "you?", "I", "am"]
    assert sentence_end(words) == 4
    assert sentence_end(words, 4) == 4  # nothing complete after index 4
    assert sentence_end(["Ask", "Mr.", "Smith"]) == 0  # an abbreviation is not a sentence end
    assert sentence_end(['"Stop!"', "he", "said."]) == 3
