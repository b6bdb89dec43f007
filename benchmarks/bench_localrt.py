"""bot.localrt end to end: real-time factor, ear-voice span and ASR word error rate on 2 cores.

English speech with the fast English-only recogniser (asr.model: tiny.en), so these figures stay comparable
across runs; whisper base and other languages: benchmarks/bench_languages.py.

Speech is synthesized here (espeak-ng, 12 English sentences), sent to an in-process server over a
real websocket, translated to Spanish. Three runs:
  1. RTF: all audio appended as fast as possible; processing wall time / audio time.
  2. Ear-voice span: audio paced in real time (200 ms every 200 ms); for each sentence, the time from
     sending its last spoken frame to receiving its first translated audio. Median and p90.
  3. WER of the source transcript against the sentences spoken (jiwer, case and punctuation ignored).
Run: .venv/bin/python benchmarks/bench_localrt.py
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from websockets.asyncio.client import connect

from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer

RATE = 24_000
FRAME = 9600
GAP_S = 1.2
SENTENCES = [
    "Where is the train station?",
    "My brother lives in a big house.",
    "We are going to the beach tomorrow.",
    "The children are playing in the park.",
    "I would like a cup of coffee, please.",
    "The weather is very nice today.",
    "She reads a book every night.",
    "Can you help me find my keys?",
    "The red car is parked outside.",
    "We need to buy bread and milk.",
    "My friend works at the hospital.",
    "The museum opens at nine in the morning.",
]


TINY_EN = {"port": 0, "asr": {"model": "tiny.en", "language": "en"}}


def speak(text: str, voice: str = "en-us") -> bytes:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "130", "--stdout", text], capture_output=True, check=True
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return soxr.resample(pcm, rate, RATE).astype("<i2").tobytes()


def build_audio(
    sentences: list[str] = SENTENCES, gap_s: float = GAP_S, voice: str = "en-us"
) -> tuple[bytes, list[int]]:
    """All sentences with gaps, frame-aligned; and the frame index where each sentence's speech ends."""
    audio = bytearray(bytes(int(RATE * 0.4) * 2))
    ends = []
    for s in sentences:
        pcm = speak(s, voice)
        if gap_s < 0.5:  # espeak-ng ends each sentence with ~0.5 s of silence: keep 150 ms of it
            samples = np.frombuffer(pcm, dtype="<i2")
            last = int(np.nonzero(np.abs(samples) > 300)[0][-1])
            pcm = pcm[: 2 * min(len(samples), last + RATE * 15 // 100)]
        audio += pcm
        ends.append(-(-len(audio) // FRAME))  # first frame boundary after the speech
        audio += bytes(int(RATE * gap_s) * 2)
    audio += bytes(-len(audio) % FRAME)
    return bytes(audio), ends


def append(chunk: bytes) -> str:
    return json.dumps({"type": "session.input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


async def session(
    url: str, audio: bytes, paced: bool, target: str = "es", query: str = ""
) -> tuple[list[tuple[float, dict]], list[float], float]:
    """Send audio (paced or not); return (receive time, event) pairs, frame send times, t0. `query` is
    appended to the URL (e.g. `&input_language=fr`)."""
    events: list[tuple[float, dict]] = []
    sent: list[float] = []
    async with connect(f"{url}/v1/realtime/translations?model=gpt-realtime-translate{query}", max_size=None) as ws:
        json.loads(await ws.recv())
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "audio": {"output": {"language": target}, "input": {"transcription": {"model": "local"}}}
                    },
                }
            )
        )

        async def reader() -> None:
            async for raw in ws:
                event = json.loads(raw)
                events.append((time.perf_counter(), event))
                if event["type"] == "session.closed":
                    return

        task = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for i in range(0, len(audio), FRAME):
            if paced:
                await asyncio.sleep(max(0.0, t0 + len(sent) * 0.2 - time.perf_counter()))
            await ws.send(append(audio[i : i + FRAME]))
            sent.append(time.perf_counter())
        await ws.send(json.dumps({"type": "session.close"}))
        await task
    return events, sent, t0


def norm(text: str) -> str:
    """Lowercase words without punctuation: WER counts words, not commas."""
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def ear_voice_spans(events: list[tuple[float, dict]], sent: list[float], ends: list[int]) -> list[float]:
    """Per sentence: first translated audio at or after its end on the input clock, minus the wall
    time its last spoken frame was sent."""
    audio_events = [(ts, e) for ts, e in events if e["type"] == "session.output_audio.delta"]
    spans = []
    for end_frame in ends:
        first = next((ts for ts, e in audio_events if e["elapsed_ms"] >= end_frame * 200), None)
        if first is not None:
            spans.append(first - sent[end_frame - 1])
    return sorted(spans)


def describe(spans: list[float], total: int) -> str:
    p90 = spans[min(len(spans) - 1, round(0.9 * (len(spans) - 1)))]
    return (
        f"{len(spans)}/{total} sentences: median {statistics.median(spans):.2f} s, p90 {p90:.2f} s, "
        f"min {spans[0]:.2f} s, max {spans[-1]:.2f} s"
    )


async def main() -> None:
    import jiwer

    cfg = LocalRTConfig.model_validate(TINY_EN)
    t = time.perf_counter()
    engines = Engines.load(cfg)
    print(f"engines loaded in {time.perf_counter() - t:.1f} s; cores: {os.cpu_count()}")
    audio, ends = build_audio()
    audio_s = len(audio) / (2 * RATE)
    print(f"audio {audio_s:.1f} s, {len(SENTENCES)} sentences (espeak-ng en-us, 130 wpm)\n")
    async with LocalRTServer(cfg, engines) as server:
        await session(server.url, audio[: FRAME * 20], paced=False)  # warm-up

        # 1. real-time factor
        events, sent, t0 = await session(server.url, audio, paced=False)
        wall = events[-1][0] - t0
        print(f"RTF, one session, unpaced: {wall / audio_s:.3f} ({wall:.1f} s wall)")
        both = await asyncio.gather(*(session(server.url, audio, paced=False) for _ in range(2)))
        wall2 = max(ev[-1][0] - t0_ for ev, _, t0_ in both)
        print(f"RTF, two sessions at once, unpaced: {wall2 / audio_s:.3f} each")

        # 2. ear-voice span, real-time pacing: one session, then four at once
        events, sent, t0 = await session(server.url, audio, paced=True)
        print(f"ear-voice span, one session: {describe(ear_voice_spans(events, sent, ends), len(ends))}")
        many = await asyncio.gather(*(session(server.url, audio, paced=True) for _ in range(4)))
        pooled = sorted(x for ev, st, _ in many for x in ear_voice_spans(ev, st, ends))
        print(f"ear-voice span, four sessions at once: {describe(pooled, 4 * len(ends))}")

    # 2b. speech without pauses long enough to end a segment: early sentence translation on vs off
    talk, talk_ends = build_audio(SENTENCES[:8], gap_s=0.0)
    talk_ends = talk_ends[:-1]  # the last sentence ends the segment anyway
    for early in (True, False):
        cfg_early = cfg.model_copy(update={"mt": cfg.mt.model_copy(update={"translate_sentences_early": early})})
        variant = Engines(config=cfg_early, asr=engines.asr, mt=engines.mt, tts=engines.tts)
        async with LocalRTServer(cfg_early, variant) as server:
            ev, st, _ = await session(server.url, talk, paced=True)
        spans = ear_voice_spans(ev, st, talk_ends)
        label = "on " if early else "off"
        print(f"ear-voice span, 8 sentences without pauses, early translation {label}: {describe(spans, 7)}")

    # 3. WER of the source transcript (the single paced session)
    hyp = "".join(e["delta"] for _, e in events if e["type"] == "session.input_transcript.delta")
    ref = " ".join(SENTENCES)
    print(f"ASR WER (whisper tiny.en, int8): {jiwer.wer(norm(ref), norm(hyp)):.3f}")
    out = "".join(e["delta"] for _, e in events if e["type"] == "session.output_transcript.delta")
    print(f"\nsource: {hyp.strip()}\ntarget: {out.strip()}")


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q / 100 * (len(v) - 1)))]


async def load(speakers: tuple[int, ...] = (1, 2, 4, 8), sentences: int = 8) -> dict:
    """N members talking at once into one server (the bot's load): per N, the real-time factor per speaker
    (N unpaced sessions at once: the slowest one's processing wall time / its audio time), the ear-voice
    span p50/p90 pooled over N real-time paced sessions, and the WER of their source transcripts."""
    import jiwer

    cfg = LocalRTConfig.model_validate(TINY_EN)
    t = time.perf_counter()
    engines = Engines.load(cfg)
    loaded_s = time.perf_counter() - t
    said = SENTENCES[:sentences]
    audio, ends = build_audio(said)
    audio_s = len(audio) / (2 * RATE)
    ref = norm(" ".join(said))
    out: dict = {"engines_load_s": loaded_s, "audio_s": audio_s, "sentences": len(said), "by_speakers": {}}
    async with LocalRTServer(cfg, engines) as server:
        await session(server.url, audio[: FRAME * 20], paced=False)  # warm-up
        for n in speakers:
            runs = await asyncio.gather(*(session(server.url, audio, paced=False) for _ in range(n)))
            rtf = max(ev[-1][0] - t0 for ev, _, t0 in runs) / audio_s
            paced = await asyncio.gather(*(session(server.url, audio, paced=True) for _ in range(n)))
            spans = [x for ev, st, _ in paced for x in ear_voice_spans(ev, st, ends)]
            wers = []
            for ev, _, _ in paced:
                hyp = "".join(e["delta"] for _, e in ev if e["type"] == "session.input_transcript.delta")
                wers.append(jiwer.wer(ref, norm(hyp)))
            out["by_speakers"][str(n)] = {
                "rtf_per_speaker": rtf,
                "ear_voice_p50_s": _p(spans, 50),
                "ear_voice_p90_s": _p(spans, 90),
                "spans_found": len(spans),
                "spans_expected": n * len(ends),
                "wer": sum(wers) / len(wers),
                "keeps_up": rtf < 1.0,
            }
    return out


if __name__ == "__main__":
    asyncio.run(main())
