"""bot.localrt with multilingual whisper base on this machine: per input language WER and ear-voice span,
and 1, 2, 4 speakers at once.

Speech is espeak-ng's (the four sentences of tests/localrt/speech.py in en, es, fr, pt, de, it), sent over a
real websocket to an in-process server, paced in real time. Figures:
  1. decode time per utterance, whisper base vs tiny.en on the same English audio (their ratio is why base
     re-decodes partial text every 2 s, not every 1 s);
  2. per input language (the language given with `input_language=`): WER of the source transcript (jiwer,
     case and punctuation ignored) and the ear-voice span per sentence (its last spoken frame sent → its
     first translated audio received), into Spanish (Spanish into English); German has no route;
  3. Spanish with the language identified instead of given (the first segment pays for identification);
  4. N Spanish speakers at once (N = 1, 2, 4): ear-voice span p50/p90 pooled, and the real-time factor per
     speaker (N unpaced sessions at once: the slowest one's wall time / its audio time).
Run: .venv/bin/python benchmarks/bench_languages.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_localrt import RATE, _p, build_audio, ear_voice_spans, norm, session
from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.asr import make_recognizer
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer
from tests.localrt.speech import SENTENCES_BY_LANGUAGE

GOAL_EAR_VOICE_P50_S = 1.5  # one speaker, whisper base (issue 12)
SPEAKERS = (1, 2, 4)


def _decode_seconds(asr, audio16: list[np.ndarray], language: str) -> float:
    """Median wall time of one final decode per utterance."""
    times = []
    for a in audio16:
        t = time.perf_counter()
        asr.transcribe(a, language=language)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _english16() -> list[np.ndarray]:
    voice, sentences = SENTENCES_BY_LANGUAGE["en"]
    out = []
    for s in sentences:
        pcm, _ = build_audio([s], voice=voice)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
        out.append(soxr.resample(samples, RATE, 16_000).astype(np.float32))
    return out


def _texts(events: list[tuple[float, dict]], kind: str) -> str:
    return "".join(e["delta"] for _, e in events if e["type"] == kind)


async def collect(log=print) -> dict:
    import jiwer

    cfg = LocalRTConfig(port=0)
    t = time.perf_counter()
    engines = Engines.load(cfg)
    result: dict = {"model": engines.asr.label, "engines_load_s": time.perf_counter() - t, "cores": os.cpu_count()}
    if engines.asr.label != "base":
        raise RuntimeError(f"whisper base is not installed (the default recogniser here is {engines.asr.label})")

    # 1. decode time: base vs tiny.en, same audio
    english = _english16()
    tiny = make_recognizer(cfg.asr.model_copy(update={"model": "tiny.en", "language": "en"}))
    base_s, tiny_s = _decode_seconds(engines.asr, english, "en"), _decode_seconds(tiny, english, "en")
    result["decode_s"] = {"base": base_s, "tiny.en": tiny_s, "ratio": base_s / tiny_s}
    log(f"decode per utterance (median of {len(english)}): base {base_s:.2f} s, tiny.en {tiny_s:.2f} s "
        f"({base_s / tiny_s:.1f}x); partial re-decode: base every {engines.asr.partial_interval_ms} ms")

    outputs = engines.output_languages()
    async with LocalRTServer(cfg, engines) as server:
        warm, _ = build_audio(SENTENCES_BY_LANGUAGE["es"][1][:1], voice="es")
        await session(server.url, warm, paced=False, target="en", query="&input_language=es")

        # 2. per input language
        result["languages"] = {}
        for lang, (voice, sentences) in SENTENCES_BY_LANGUAGE.items():
            target = "en" if lang == "es" else "es"
            audio, ends = build_audio(sentences, voice=voice)
            events, sent, _ = await session(server.url, audio, paced=True, target=target,
                                            query=f"&input_language={lang}")
            wer = jiwer.wer(norm(" ".join(sentences)), norm(_texts(events, "session.input_transcript.delta")))
            spans = ear_voice_spans(events, sent, ends)
            routed = engines.mt.can_translate(lang, target) and target in outputs
            row = {"target": target, "wer": wer, "route": routed, "ear_voice_p50_s": _p(spans, 50),
                   "ear_voice_max_s": max(spans) if spans else None, "spans": len(spans), "sentences": len(ends)}
            result["languages"][lang] = row
            span = (f"ear-voice p50 {row['ear_voice_p50_s']:.2f} s, max {row['ear_voice_max_s']:.2f} s "
                    f"({len(spans)}/{len(ends)})" if spans else "no translated audio")
            log(f"{lang}→{target}: WER {wer:.2f}; {span}" + ("" if routed else " (no route)"))

        # 3. the language identified instead of given
        voice, sentences = SENTENCES_BY_LANGUAGE["es"]
        audio, ends = build_audio(sentences, voice=voice)
        events, sent, _ = await session(server.url, audio, paced=True, target="en", query="&languages=en,es,fr,pt,it")
        spans = ear_voice_spans(events, sent, ends)
        result["identified_es"] = {"spans_s": spans, "first_s": spans[0] if spans else None}
        log("es→en, language identified among en,es,fr,pt,it: ear-voice spans "
            + ", ".join(f"{x:.2f}" for x in spans) + " s")

        # 4. speakers at once (Spanish into English)
        result["by_speakers"] = {}
        for n in SPEAKERS:
            runs = await asyncio.gather(*(session(server.url, audio, paced=False, target="en",
                                                  query="&input_language=es") for _ in range(n)))
            rtf = max(ev[-1][0] - t0 for ev, _, t0 in runs) / (len(audio) / (2 * RATE))
            paced = await asyncio.gather(*(session(server.url, audio, paced=True, target="en",
                                                   query="&input_language=es") for _ in range(n)))
            pooled = sorted(x for ev, st, _ in paced for x in ear_voice_spans(ev, st, ends))
            row = {"rtf_per_speaker": rtf, "ear_voice_p50_s": _p(pooled, 50), "ear_voice_p90_s": _p(pooled, 90),
                   "spans": len(pooled), "expected": n * len(ends)}
            result["by_speakers"][str(n)] = row
            log(f"{n} speaker(s) at once, es→en: ear-voice p50/p90 {row['ear_voice_p50_s']:.2f}/"
                f"{row['ear_voice_p90_s']:.2f} s ({len(pooled)}/{n * len(ends)}), RTF per speaker {rtf:.2f}")
    one = result["by_speakers"]["1"]["ear_voice_p50_s"]
    result["goal_ear_voice_p50_s"] = GOAL_EAR_VOICE_P50_S
    result["meets_goal"] = one is not None and one <= GOAL_EAR_VOICE_P50_S
    log(f"one speaker with base: ear-voice median {one:.2f} s, {one / GOAL_EAR_VOICE_P50_S:.2f}x the goal of "
        f"{GOAL_EAR_VOICE_P50_S} s ({'met' if result['meets_goal'] else 'NOT met'})")
    return result


if __name__ == "__main__":
    asyncio.run(collect())
