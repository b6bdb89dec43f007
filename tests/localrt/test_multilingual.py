"""Issue 12 through the real server and the official `openai` client: multilingual whisper base, the speaker's
language from the websocket URL or identified once, Romance routes direct and through a pivot, a crashing pair,
same-language speech, and what stays impossible (German has no apertium pair).

Speech is espeak-ng's, which whisper base hears well in English, less well in Spanish and German, and poorly in
French, Portuguese and Italian (robotic prosody): the word error rates are measured and asserted loosely, and the
translation tests speak Spanish or English. Whisper base is loaded once per test session (`base_engines`).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI

from bot.localrt.config import MTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.engines.mt import make_translator
from bot.localrt.server import LocalRTServer
from tests.localrt.conftest import API_KEY
from tests.localrt.sdk import SERVER_EVENT, append_all, errors, sdk_session, text_of, update_for
from tests.localrt.speech import SENTENCES_BY_LANGUAGE, silence, speech

MODES = Path("/usr/share/apertium/modes")
# Measured here with whisper base int8 on espeak-ng at 130 wpm, over five runs (benchmarks/bench_languages.py
# prints them too): en 0.00, es 0.29–0.42, de 0.45, fr 0.74–0.91, pt 0.68–0.77, it 0.48–0.90. CTranslate2 does
# not decode borderline audio identically run after run, and espeak-ng's French, Portuguese and Italian are
# borderline for base: those three are bounded together (their mean) and each only below a wrong-language
# decode (≈ 1.0 and more). English, Spanish and German are bounded each.
WER_BOUNDS = {"en": 0.1, "es": 0.6, "de": 0.7, "fr": 1.0, "pt": 1.0, "it": 1.0}
HARD = ("fr", "pt", "it")
HARD_MEAN_BOUND = 0.9


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def audio16(lang: str, sentence: str) -> np.ndarray:
    pcm = np.frombuffer(speech(sentence, SENTENCES_BY_LANGUAGE[lang][0]), dtype="<i2").astype(np.float32) / 32768
    return soxr.resample(pcm, 24_000, 16_000).astype(np.float32)


def said(lang: str, *which: int) -> bytes:
    voice, sentences = SENTENCES_BY_LANGUAGE[lang]
    out = silence(0.4)
    for i in which:
        out += speech(sentences[i], voice) + silence(1.0)
    return out


def need_pairs(*modes: str) -> None:
    missing = [m for m in modes if not (MODES / f"{m}.mode").is_file()]
    if missing:
        pytest.skip(f"apertium modes not installed: {', '.join(missing)} (make system-deps)")


async def session_to(url: str, audio: bytes, target: str, query: dict | None = None, then=None) -> list:
    return await sdk_session(url, audio, update_for(target), query=query, then=then)


@pytest.fixture
async def base_server(base_engines: Engines):
    config = base_engines.config.model_copy(update={"port": 0})
    async with LocalRTServer(config, base_engines, api_key=API_KEY) as srv:
        yield srv


# --- recognition and identification (the recogniser alone) -----------------------------------------


def test_word_error_rate_per_language(base_engines: Engines):
    import jiwer

    asr = base_engines.asr
    measured = {}
    for lang, (_, sentences) in SENTENCES_BY_LANGUAGE.items():
        hyps = [asr.transcribe(audio16(lang, s), language=lang).text for s in sentences]
        measured[lang] = jiwer.wer([norm(s) for s in sentences], [norm(h) for h in hyps])
    print("WER per language:", {k: round(v, 2) for k, v in measured.items()})
    assert {k for k, v in measured.items() if v >= WER_BOUNDS[k]} == set(), measured
    assert sum(measured[k] for k in HARD) / len(HARD) <= HARD_MEAN_BOUND, measured


def test_language_identification_among_five_candidates(base_engines: Engines):
    candidates = frozenset({"es", "fr", "pt", "de", "it"})
    clips = [(lang, s) for lang in sorted(candidates) for s in SENTENCES_BY_LANGUAGE[lang][1]]
    assert len(clips) == 20
    right = [lang for lang, s in clips if base_engines.asr.identify(audio16(lang, s), candidates).language == lang]
    print(f"language identification: {len(right)}/20 right ({', '.join(sorted(right))})")
    # measured 13–15/20 (espeak-ng's French and Portuguese are the hard ones); chance is 4/20
    assert len(right) >= 11
    assert right.count("es") >= 3 and right.count("de") >= 3


# --- through the server with the official client ----------------------------------------------------


async def test_spanish_to_english_with_the_language_given(base_server):
    need_pairs("spa-eng")
    events = await session_to(base_server.url, said("es", 3, 2), "en", {"input_language": "es"})
    assert not errors(events)
    source = text_of(events, "session.input_transcript.delta").lower()
    assert "los niños juegan en el parque" in source
    target = text_of(events, "session.output_transcript.delta").lower()
    assert "park" in target and "beach" in target, target
    assert any(e.type == "session.output_audio.delta" for e in events)


@pytest.mark.parametrize(
    ("target", "mode", "expected"),
    [("pt", "es-pt", "parque"), ("it", "spa-ita", "parco"), ("ca", "spa-cat", "parc"), ("fr", "es-fr", "parc")],
)
async def test_spanish_into_romance_languages_directly(base_server, target, mode, expected):
    need_pairs(mode)
    events = await session_to(base_server.url, said("es", 3), target, {"input_language": "es"})
    assert not errors(events)
    out = text_of(events, "session.output_transcript.delta").lower()
    assert expected in out, out
    assert any(e.type == "session.output_audio.delta" for e in events)


async def test_english_identified_then_translated_into_french_through_spanish(base_server):
    """No `input_language`: identified among the client's candidates; en→fr has no pair, en→es→fr does."""
    need_pairs("eng-spa", "es-fr")
    events = await session_to(base_server.url, said("en", 3, 1), "fr", {"languages": "en,es,fr"})
    assert not errors(events)
    assert "children are playing in the park" in text_of(events, "session.input_transcript.delta").lower()
    out = text_of(events, "session.output_transcript.delta").lower()
    assert "enfants" in out and "parc" in out and "frère" in out, out


async def test_same_language_is_revoiced_without_translation(base_server):
    events = await session_to(base_server.url, said("es", 3), "es", {"input_language": "es"})
    assert not errors(events)
    source = text_of(events, "session.input_transcript.delta")
    assert text_of(events, "session.output_transcript.delta") == source  # the words as heard, no MT
    assert any(e.type == "session.output_audio.delta" for e in events)


async def test_same_language_silent_sends_text_only(base_engines: Engines):
    config = base_engines.config.model_copy(update={"port": 0, "same_language": "silent"})
    engines = Engines(config=config, asr=base_engines.asr, mt=base_engines.mt, tts=base_engines.tts)
    async with LocalRTServer(config, engines, api_key=API_KEY) as srv:
        events = await session_to(srv.url, said("es", 3), "es", {"input_language": "es"})
    assert "niños" in text_of(events, "session.output_transcript.delta")
    assert not [e for e in events if e.type == "session.output_audio.delta"]


async def test_german_is_heard_but_has_no_route(base_server):
    """Impossible offline: Debian has no apertium pair with German. One error per segment, the session goes on."""
    events = await session_to(base_server.url, said("de", 2), "es", {"input_language": "de"})
    assert "strand" in text_of(events, "session.input_transcript.delta").lower()
    assert [(e.code, e.message) for e in errors(events)] == [("unsupported_language", "no translation route de→es")]
    assert events[-1].type == "session.closed"


# --- a pair that crashes, unknown codes in the URL (the English-only engines: fast) -----------------


def crashing_modes(tmp_path: Path) -> Path:
    """A real apertium data folder: eng-spa and spa-cat as installed, spa-ita a mode that fails (exit 3)."""
    need_pairs("eng-spa", "spa-cat")
    modes = tmp_path / "apertium" / "modes"
    modes.mkdir(parents=True)
    for name in ("eng-spa", "spa-cat"):
        shutil.copyfile(MODES / f"{name}.mode", modes / f"{name}.mode")
    (modes / "spa-ita.mode").write_text("sh -c 'echo \"spa-ita: segmentation fault\" >&2; exit 3'\n")
    return modes


async def test_a_crashing_pair_loses_its_segment_not_the_session(engines: Engines, tmp_path: Path):
    mt = make_translator(MTConfig(apertium_modes_dir=str(crashing_modes(tmp_path))))
    config = engines.config.model_copy(update={"port": 0})
    crashing = Engines(config=config, asr=engines.asr, mt=mt, tts=engines.tts)

    async def then_switch_to_catalan(conn, events):
        # the first sentence (en→es→it) fails at its second hop; the next one goes into Catalan
        while True:
            event = SERVER_EVENT.validate_python(json.loads(await conn.recv_bytes()))
            events.append(event)
            if event.type == "error":
                break
        await conn.session.update(session={"audio": {"output": {"language": "ca"}}})
        await append_all(conn, said("en", 1))

    async with LocalRTServer(config, crashing, api_key=API_KEY) as srv:
        assert "it" in srv.targets  # the broken pair is installed: the route exists
        events = await session_to(srv.url, said("en", 0), "it", then=then_switch_to_catalan)
    failure = errors(events)[0]
    assert failure.code == "engine_failed" and "spa-ita failed" in failure.message
    assert "segmentation fault" in failure.message
    assert "casa gran" in text_of(events, "session.output_transcript.delta")  # en→es→ca after the crash
    assert events[-1].type == "session.closed"


@pytest.mark.parametrize(
    ("query", "param"),
    [({"input_language": "xx"}, "input_language"), ({"languages": "en,klingon"}, "languages"),
     ({"input_language": "es"}, "input_language")],  # tiny.en hears English only
)
async def test_unknown_codes_in_the_url_are_an_openai_shaped_error(server, query, param):
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{server.url}/v1")
    async with client.realtime.translations.connect(model="gpt-realtime-translate", extra_query=query) as conn:
        event = SERVER_EVENT.validate_python(json.loads(await conn.recv_bytes()))
        assert event.type == "error"
        assert (event.error.type, event.error.code, event.error.param) == (
            "invalid_request_error", "unsupported_language", param)
        assert "it knows en" in event.error.message
        with pytest.raises(Exception) as closed:
            await conn.recv_bytes()
    assert "1008" in str(closed.value)


async def test_a_known_language_in_the_url_is_accepted(server):
    events = await session_to(server.url, said("en", 0), "es", {"input_language": "en", "languages": "en"})
    assert not errors(events) and "tren" in text_of(events, "session.output_transcript.delta")


def makefile_pairs() -> list[str]:
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text(encoding="utf-8")
    line = re.search(r"^APT_PACKAGES\s*:=\s*(.+)$", makefile, re.M)
    assert line is not None
    return [p for p in line.group(1).split() if p.startswith("apertium-")]


async def test_the_default_install_gives_at_least_100_routes_on_get_languages(base_server):
    import urllib.request

    missing = [p for p in makefile_pairs() if not Path(f"/usr/share/doc/{p}").exists()]
    if missing:
        pytest.skip(f"not every default apertium pair is installed: {', '.join(missing)} (make system-deps)")
    request = urllib.request.Request(f"http://127.0.0.1:{base_server.port}/v1/languages",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    body = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(request, timeout=10).read()))
    counts = body["counts"]
    assert counts["routes"] >= 100, counts
    assert counts["routes"] == counts["good"] + counts["usable"] + counts["poor"]
    assert {"en", "es", "fr", "pt", "it", "ca"} <= set(body["output_languages"]) <= set(base_server.targets)
    assert "de" in body["recognised_languages"] and "de" not in body["input_languages"]
    routes = {(r["input"], r["output"]): r for r in body["routes"]}
    assert routes[("fr", "it")]["quality"] == "good" and routes[("fr", "it")]["translation"] == "fr-es → spa-ita"
    assert routes[("es", "es")]["quality"] == "same"
