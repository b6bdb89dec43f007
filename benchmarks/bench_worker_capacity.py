"""How many sessions one bot.localrt worker takes before its ear-voice span passes 2 s (a pool's sizing figure).

Real-time paced sessions (bench_localrt.py's speech, server and span measure) are added one at a time to one
in-process worker: 1, 2, 3, … at once, each speaking the same sentences with pauses; it stops at the first count
whose median ear-voice span (end of a sentence → its first translated audio) passes the limit, and prints each
count's median and p90. The answer depends on the cores the worker gets; run it on the machine that will run it.
Run: .venv/bin/python benchmarks/bench_worker_capacity.py [--limit 2.0] [--max 8] [--sentences 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_localrt import SENTENCES, build_audio, ear_voice_spans, session
from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.bundle import Engines
from bot.localrt.server import LocalRTServer


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=float, default=2.0, help="ear-voice span limit (s), median")
    parser.add_argument("--max", type=int, default=8, help="most sessions tried")
    parser.add_argument("--sentences", type=int, default=6)
    args = parser.parse_args()
    cfg = LocalRTConfig(port=0)
    engines = Engines.load(cfg)
    audio, ends = build_audio(SENTENCES[: args.sentences])
    print(f"cores: {os.cpu_count()}; {len(ends)} sentences, {len(audio) / 48000:.1f} s of audio per session")
    fits = 0
    async with LocalRTServer(cfg, engines) as server:
        await session(server.url, audio[: 9600 * 20], paced=False)  # warm-up
        for n in range(1, args.max + 1):
            t = time.perf_counter()
            runs = await asyncio.gather(*(session(server.url, audio, paced=True) for _ in range(n)))
            spans = sorted(x for ev, st, _ in runs for x in ear_voice_spans(ev, st, ends))
            median = statistics.median(spans) if spans else float("inf")
            p90 = spans[min(len(spans) - 1, round(0.9 * (len(spans) - 1)))] if spans else float("inf")
            print(f"{n} session(s): ear-voice span median {median:.2f} s, p90 {p90:.2f} s "
                  f"({len(spans)}/{n * len(ends)} sentences, {time.perf_counter() - t:.0f} s)", flush=True)
            if median > args.limit:
                break
            fits = n
    print(f"one worker takes {fits} session(s) with a median ear-voice span within {args.limit:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
