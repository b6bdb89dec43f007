"""The way back: Mixer CPU per 20 ms output frame versus the libopus encode of that frame.

discord.py's player encodes every frame the speaker account plays with libopus (`discord.opus.Encoder`,
its defaults), once per output channel whatever the number of speakers; the mixer runs in the same player
thread. Measured in the same run, best of a few repeats:
  * floor: `Encoder().encode(frame, 960)` on the mixer's own output (speech-like audio);
  * the mixer with N speakers talking at once (1, 4, 16): N pushes of 20 ms (as the pipeline pushes
    translated audio, in odd-sized chunks) + one `read_frame()` (slice, sum, soft knee, soxr 24→48 kHz,
    stereo int16);
  * a quiet room: `read_frame()` with nothing queued (what the player calls 50 times a second anyway).
  * catch-up tempo: one speaker falling behind, its audio through the WSOLA stretcher at 1.3× (what
    `bot.audio.tempo` costs per 20 ms of output), and the delay the stretcher adds when it engages (an
    impulse fed in 20 ms chunks at 1×: how much later it comes out than it went in).
Goal: 16 speakers under 0.5× one encode, so mixing never costs more than the encode it feeds.

Run: ``python benchmarks/bench_mixer.py [--seconds 30]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from discord import opus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.audio.mixer import Mixer
from bot.audio.pcm import to_pcm16
from bot.audio.tempo import Stretcher

RATE = 24_000
REPEATS = 3


def speech_like(seconds: float, seed: int) -> bytes:
    """Voiced harmonics with a syllable-rate envelope and a little noise, ~-14 dBFS: cheap stand-in for TTS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 110 + 40 * seed % 90
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + seed)
    x = 0.12 * voice * envelope + 0.01 * rng.standard_normal(t.size)
    return to_pcm16(x)


def chunks(pcm: bytes, frames: int, rng: np.random.Generator) -> list[list[bytes]]:
    """Per output frame, the pushes of one speaker: 20 ms on average, in odd sizes (translated deltas)."""
    per_frame: list[list[bytes]] = [[] for _ in range(frames)]
    pos, frame = 0, 0
    while pos < len(pcm) and frame < frames:
        size = int(rng.integers(301, 1801))  # bytes; ~960 on average
        per_frame[frame].append(pcm[pos : pos + size])
        pos += size
        frame = pos // 960
    return per_frame


def bench_mixer(speakers: int, frames: int) -> tuple[float, float, list[bytes], Mixer]:
    """Seconds per frame for the pushes and for read_frame, and the frames produced."""
    rng = np.random.default_rng(speakers)
    plan = [chunks(speech_like(frames * 0.02 + 0.1, s), frames, rng) for s in range(speakers)]
    best_push = best_read = float("inf")
    out: list[bytes] = []
    mixer = Mixer()
    for _ in range(REPEATS):
        mixer = Mixer(max_backlog_s=frames * 0.02 + 1)
        out = []
        push_s = read_s = 0.0
        for f in range(frames):
            t0 = time.perf_counter()
            for key in range(speakers):
                for piece in plan[key][f]:
                    mixer.push(key, piece)
            t1 = time.perf_counter()
            out.append(mixer.read_frame())
            t2 = time.perf_counter()
            push_s += t1 - t0
            read_s += t2 - t1
        best_push, best_read = min(best_push, push_s / frames), min(best_read, read_s / frames)
    return best_push, best_read, out, mixer


def bench_encode(frames: list[bytes]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        encoder = opus.Encoder()
        t0 = time.perf_counter()
        for frame in frames:
            encoder.encode(frame, encoder.SAMPLES_PER_FRAME)
        best = min(best, (time.perf_counter() - t0) / len(frames))
    return best


def bench_stretch(frames: int) -> tuple[float, float]:
    """Seconds of CPU per 20 ms of stretched output at 1.3×, and the delay (ms) the stretcher adds at 1×."""
    x = np.frombuffer(speech_like(frames * 0.02 * 1.3, 3), dtype=np.int16).astype(np.float32) / 32768
    step = int(480 * 1.3)
    best = float("inf")
    for _ in range(REPEATS):
        s = Stretcher()
        produced = 0
        t0 = time.perf_counter()
        for i in range(0, x.size, step):
            produced += s.feed(x[i : i + step], 1.3).size
        best = min(best, (time.perf_counter() - t0) / (produced / 480))
    impulse = np.zeros(24_000, dtype=np.float32)
    impulse[12_000] = 1.0
    s, fed, out_pos, came_out = Stretcher(), 0, 0, None
    for i in range(0, impulse.size, 480):
        y = s.feed(impulse[i : i + 480], 1.0)
        fed += 480
        hit = np.flatnonzero(np.abs(y) > 0.5)
        if came_out is None and hit.size:
            came_out = fed  # input samples fed when the impulse's output became available
        out_pos += y.size
    delay = (came_out - 12_000) / 24 if came_out is not None else float("nan")
    return best, delay


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per measurement (default 20)")
    args = parser.parse_args()
    frames = int(args.seconds * 50)

    _, _, reference, _ = bench_mixer(4, frames)
    encode = bench_encode(reference)
    print(f"frames per run: {frames}, best of {REPEATS}")
    print(f"floor   libopus encode of one 48 kHz stereo frame (discord.py defaults): {encode * 1e6:7.1f} µs")

    quiet = Mixer()
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(frames):
            quiet.read_frame()
        best = min(best, (time.perf_counter() - t0) / frames)
    print(f"quiet room  read_frame: {best * 1e6:6.1f} µs = {best / encode:.3f}x encode")

    worst = 0.0
    for speakers in (1, 4, 16):
        push, read, _, mixer = bench_mixer(speakers, frames)
        total = push + read
        worst = max(worst, total / encode)
        stats = mixer.stats()
        print(
            f"{speakers:2d} speaker(s) push {push * 1e6:6.1f} µs + read_frame {read * 1e6:6.1f} µs "
            f"= {total * 1e6:6.1f} µs per frame = {total / encode:.3f}x encode"
            f"   (underruns {stats.underruns}, dropped {stats.samples_dropped}, gaps {stats.output_gaps})"
        )
    stretch, delay_ms = bench_stretch(frames)
    print(f"catch-up tempo  WSOLA at 1.3x per 20 ms of output: {stretch * 1e6:6.1f} µs = {stretch / encode:.3f}x encode"
          f" (only for a speaker falling behind); added delay when it engages: {delay_ms:.1f} ms")
    print(f"worst ratio: {worst:.3f}x   (goal < 0.5x)")
    return 0 if worst < 0.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
