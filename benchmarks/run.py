"""`python -m bot bench`: what the whole bot costs per speaker and what delay it adds, as ratios to floors
measured in the same run (or percentiles), with the machine named.

Sections, each in its own process where it measures a process (so one run's memory is not the next one's):
  1. receive path per packet vs bare libopus decode (benchmarks/bench_receive.py);
  2. the whole bot with N speakers (benchmarks/whole_bot.py) against an echo backend in another process:
     CPU per speaker-second, its ratio to the libopus decode floor, speakers per core, memory per speaker;
  3. the delay Parley adds: in (packet → websocket), for `audio.chunk_ms` 20/40/100/200 under the largest
     load, and out (delta → frame handed to discord.py);
  4. bot.localrt with 1, 2, 4, 8 speakers at once (benchmarks/bench_localrt.py; not with --quick);
  5. bot.localrt with multilingual whisper base: WER and ear-voice span per input language, 1/2/4 speakers
     (benchmarks/bench_languages.py; not with --quick).

    python -m bot bench [--quick] [--json FILE] [--plot DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL_SPEAKERS = (8, 32, 128)
QUICK_SPEAKERS = (8,)
CHUNKS = (20, 40, 100, 200)
DEFAULT_CHUNK = 200
LOCALRT_SPEAKERS = (1, 2, 4, 8)
GOALS = {"receive_ratio": 1.2, "speakers_per_core": 150, "mb_per_speaker": 2.0, "in_processing_p99_ms": 5.0,
         "out_processing_p99_ms": 10.0, "localrt_ear_voice_p90_s_at_4": 2.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="8 speakers only, shorter windows, no bot.localrt "
                        "(under a minute)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    parser.add_argument("--plot", metavar="DIR", help="write PNGs (latency distributions, CPU and memory against "
                        "speakers) to DIR; needs matplotlib")


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import discord

    return {"cpu": model, "cores": usable, "python": platform.python_version(), "discord.py": discord.__version__}


def whole_bot(speakers: int, chunk_ms: int, warmup: float, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "whole_bot.py"), "--speakers", str(speakers),
               "--chunk-ms", str(chunk_ms), "--warmup", str(warmup), "--seconds", str(seconds), "--out", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"whole_bot.py --speakers {speakers} --chunk-ms {chunk_ms} failed:\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def healthy(run: dict) -> bool:
    h = run["health"]
    return (run["cpu"]["kept_up"] and h["worker_overflow"] == 0 and h["frames_dropped_listener"] == 0
            and h["frames_dropped_speakers"] == 0
            and h["mixer"]["samples_dropped"] == 0 and h["sessions_opened"] == run["speakers"])


def collect(quick: bool, log) -> dict:
    from benchmarks.bench_receive import PACKETS_PER_SECOND, measure

    started = time.monotonic()
    result: dict = {"machine": machine(), "quick": quick, "goals": GOALS}
    log(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores")

    log("1/4 receive path ...")
    r = measure(frames=1000 if quick else 3000, repeats=3 if quick else 5)
    floor = r["floor_stereo_s"]
    result["floor"] = {"libopus_decode_stereo_us_per_frame": floor * 1e6,
                       "libopus_decode_mono_us_per_frame": r["floor_mono_s"] * 1e6,
                       "per_speaker_second_ms": floor * PACKETS_PER_SECOND * 1000}
    result["receive"] = {"us_per_packet": r["path_s"] * 1e6, "ratio_to_floor": r["path_s"] / floor,
                         "speakers_per_core": 1 / (r["path_s"] * PACKETS_PER_SECOND),
                         "stages_us": {k: v * 1e6 for k, v in r["stages_s"].items()}}

    speakers = QUICK_SPEAKERS if quick else FULL_SPEAKERS
    warmup, seconds = (2.0, 4.0) if quick else (3.0, 10.0)
    floor_ss = floor * PACKETS_PER_SECOND  # CPU seconds of bare decoding per speaker-second
    runs: dict[str, dict] = {}
    for n in speakers:
        log(f"2/4 whole bot, {n} speakers, chunk {DEFAULT_CHUNK} ms ...")
        runs[f"{n}x{DEFAULT_CHUNK}"] = whole_bot(n, DEFAULT_CHUNK, warmup + (1.0 if n >= 100 else 0.0), seconds)
    # the delay sweep runs under the largest load this machine keeps up with (all of them are in "runs")
    for run in runs.values():
        run["healthy"] = healthy(run)
    kept = [n for n in speakers if runs[f"{n}x{DEFAULT_CHUNK}"]["healthy"]]
    load = max(kept) if kept else min(speakers)
    if not quick:
        for c in CHUNKS:
            if c != DEFAULT_CHUNK:
                log(f"3/4 delay in, {load} speakers, chunk {c} ms ...")
                runs[f"{load}x{c}"] = whole_bot(load, c, warmup + 1.0, seconds)
    for run in runs.values():
        cpu = run["cpu"]
        cpu["ratio_to_decode_floor"] = cpu["per_speaker_second_ms"] / 1000 / floor_ss
    result["whole_bot"] = {
        str(n): {
            "cpu_ms_per_speaker_second": runs[f"{n}x{DEFAULT_CHUNK}"]["cpu"]["per_speaker_second_ms"],
            "ratio_to_decode_floor": runs[f"{n}x{DEFAULT_CHUNK}"]["cpu"]["ratio_to_decode_floor"],
            "speakers_per_core": runs[f"{n}x{DEFAULT_CHUNK}"]["cpu"]["speakers_per_core"],
            "mb_per_speaker": runs[f"{n}x{DEFAULT_CHUNK}"]["memory"]["rss_per_speaker_mb"],
            "cores_used": runs[f"{n}x{DEFAULT_CHUNK}"]["cpu"]["cores_used"],
            "healthy": runs[f"{n}x{DEFAULT_CHUNK}"]["healthy"],
            "processed_share": runs[f"{n}x{DEFAULT_CHUNK}"]["cpu"]["speaker_seconds_processed"]
            / runs[f"{n}x{DEFAULT_CHUNK}"]["cpu"]["speaker_seconds_offered"],
        }
        for n in speakers
    }
    result["delay_in"] = {
        str(run["chunk_ms"]): dict(run["delay_in"], speakers=run["speakers"],
                                   cpu_ms_per_speaker_second=run["cpu"]["per_speaker_second_ms"],
                                   ratio_to_decode_floor=run["cpu"]["ratio_to_decode_floor"])
        for key, run in sorted(runs.items(), key=lambda kv: kv[1]["chunk_ms"]) if run["speakers"] == load
    }
    main = runs[f"{load}x{DEFAULT_CHUNK}"]
    result["delay_out"] = dict(main["delay_out"], speakers=load)
    result["delay_load_speakers"] = load
    result["runs"] = runs

    if not quick:
        log("4/4 bot.localrt under load (1, 2, 4, 8 speakers) ...")
        try:
            from benchmarks.bench_localrt import load as localrt_load

            result["localrt"] = asyncio.run(localrt_load(LOCALRT_SPEAKERS))
        except Exception as e:  # engines missing or being changed: the rest of the run still counts
            result["localrt"] = {"error": f"{type(e).__name__}: {e}"}
        log("5/5 bot.localrt languages (whisper base: es, fr, pt, de, it, en; 1, 2, 4 speakers) ...")
        try:
            from benchmarks.bench_languages import collect as languages_collect

            result["localrt_languages"] = asyncio.run(languages_collect(log=lambda _line: None))
        except Exception as e:
            result["localrt_languages"] = {"error": f"{type(e).__name__}: {e}"}
    result["wall_s"] = time.monotonic() - started
    return result


def _f(x, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def table(r: dict) -> str:
    m, f = r["machine"], r["floor"]
    rows: list[tuple[str, str, str]] = []
    rows.append(("floor: libopus decode, 20 ms 48 kHz stereo", f"{f['libopus_decode_stereo_us_per_frame']:.1f} µs",
                 f"= {f['per_speaker_second_ms']:.2f} ms CPU per speaker-second"))
    rec = r["receive"]
    rows.append(("receive path per packet", f"{rec['us_per_packet']:.1f} µs",
                 f"{rec['ratio_to_floor']:.2f}× floor (goal ≤ {GOALS['receive_ratio']}×); "
                 f"{rec['speakers_per_core']:.0f} speakers/core"))
    for n, w in r["whole_bot"].items():
        rows.append((f"whole bot, {n} speakers: CPU per speaker-second", f"{w['cpu_ms_per_speaker_second']:.2f} ms",
                     f"{w['ratio_to_decode_floor']:.2f}× floor; {w['speakers_per_core']:.0f} speakers/core "
                     f"(goal ≥ {GOALS['speakers_per_core']}); {w['cores_used']:.2f} cores busy"
                     + ("" if w["healthy"] else f"; NOT KEEPING UP (processed {w['processed_share']:.0%} of the "
                                                  "audio offered; figures per speaker-second processed)")))
        rows.append((f"whole bot, {n} speakers: memory per speaker", f"{w['mb_per_speaker']:.2f} MB",
                     f"goal ≤ {GOALS['mb_per_speaker']} MB"))
    for c, d in r["delay_in"].items():
        rows.append((f"delay in, chunk {c} ms, {d['speakers']} speakers: total p50/p99",
                     f"{_f(d['total_ms']['p50'])}/{_f(d['total_ms']['p99'])} ms",
                     f"receive wait p50 {_f(d['receive_wait_ms']['p50'])}, chunk wait p50/p99 "
                     f"{_f(d['chunk_wait_ms']['p50'])}/{_f(d['chunk_wait_ms']['p99'])}, processing p50/p99 "
                     f"{_f(d['processing_ms']['p50'], '.2f')}/{_f(d['processing_ms']['p99'], '.2f')} ms "
                     f"(goal p99 ≤ {GOALS['in_processing_p99_ms']:.0f}); CPU {d['ratio_to_decode_floor']:.2f}× floor"))
    d = r["delay_out"]
    rows.append((f"delay out, {d['speakers']} speakers: total p50/p99",
                 f"{_f(d['total_ms']['p50'])}/{_f(d['total_ms']['p99'])} ms",
                 f"prebuffer+queue+clock wait p50/p99 {_f(d['wait_ms']['p50'])}/{_f(d['wait_ms']['p99'])}, "
                 f"processing p50/p99 {_f(d['processing_ms']['p50'], '.2f')}/{_f(d['processing_ms']['p99'], '.2f')} ms "
                 f"(goal p99 ≤ {GOALS['out_processing_p99_ms']:.0f})"))
    lrt = r.get("localrt")
    if lrt and "error" in lrt:
        rows.append(("bot.localrt under load", "failed", lrt["error"][:120]))
    elif lrt:
        for n, x in lrt["by_speakers"].items():
            rows.append((f"bot.localrt, {n} speakers at once: RTF per speaker", f"{x['rtf_per_speaker']:.2f}",
                         f"ear-voice span p50/p90 {_f(x['ear_voice_p50_s'], '.2f')}/{_f(x['ear_voice_p90_s'], '.2f')} s"
                         f" ({x['spans_found']}/{x['spans_expected']}); WER {x['wer']:.3f}"
                         + ("" if x["keeps_up"] else "; falls behind")))
    lang = r.get("localrt_languages")
    if lang and "error" in lang:
        rows.append(("bot.localrt languages (whisper base)", "failed", lang["error"][:120]))
    elif lang:
        for code, x in lang["languages"].items():
            span = (f"ear-voice span p50 {x['ear_voice_p50_s']:.2f} s ({x['spans']}/{x['sentences']})"
                    if x["spans"] else "no translated audio" + ("" if x["route"] else " (no route)"))
            rows.append((f"bot.localrt base, {code}→{x['target']}: WER", f"{x['wer']:.2f}", span))
        for n, x in lang["by_speakers"].items():
            rows.append((f"bot.localrt base, {n} Spanish speakers at once: RTF per speaker",
                         f"{x['rtf_per_speaker']:.2f}",
                         f"ear-voice span p50/p90 {_f(x['ear_voice_p50_s'], '.2f')}/{_f(x['ear_voice_p90_s'], '.2f')} s"
                         + (f" (goal p50 ≤ {lang['goal_ear_voice_p50_s']} s for one)" if n == "1" else "")))
        d = lang["decode_s"]
        rows.append(("bot.localrt decode per utterance, base / tiny.en", f"{d['ratio']:.1f}×",
                     f"{d['base']:.2f} s / {d['tiny.en']:.2f} s"))
    w1 = max(len(a) for a, _, _ in rows)
    w2 = max(len(b) for _, b, _ in rows)
    head = f"Parley bench — {m['cpu']}, {m['cores']} cores, Python {m['python']}, discord.py {m['discord.py']}"
    if r["quick"]:
        head += " (--quick)"
    lines = [head, ""]
    lines += [f"{a:<{w1}}  {b:>{w2}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def plot(r: dict, directory: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return []
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    ns = [int(n) for n in r["whole_bot"]]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(ns, [r["whole_bot"][str(n)]["cpu_ms_per_speaker_second"] for n in ns], "o-")
    ax[0].axhline(r["floor"]["per_speaker_second_ms"], ls="--", c="grey", label="libopus decode floor")
    ax[0].set(xscale="log", xlabel="speakers", ylabel="CPU ms per speaker-second", title="bot CPU")
    ax[0].legend()
    ax[1].plot(ns, [r["whole_bot"][str(n)]["mb_per_speaker"] for n in ns], "o-")
    ax[1].axhline(GOALS["mb_per_speaker"], ls="--", c="grey", label="goal")
    ax[1].set(xscale="log", xlabel="speakers", ylabel="MB RSS per speaker", title="bot memory")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "cpu_memory.png", dpi=110)
    written.append(str(out / "cpu_memory.png"))
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    chunks = list(r["delay_in"])
    parts = ("receive_wait_ms", "chunk_wait_ms", "processing_ms")
    bottom = [0.0] * len(chunks)
    for part in parts:
        vals = [r["delay_in"][c][part]["p50"] or 0.0 for c in chunks]
        ax[0].bar(chunks, vals, bottom=bottom, label=part.replace("_ms", "").replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax[0].set(xlabel="audio.chunk_ms", ylabel="ms (p50)", title="delay in: packet → websocket")
    ax[0].legend()
    d = r["delay_out"]
    ax[1].bar(["wait", "processing"], [d["wait_ms"]["p50"] or 0, d["processing_ms"]["p50"] or 0], label="p50")
    ax[1].bar(["wait", "processing"], [d["wait_ms"]["p99"] or 0, d["processing_ms"]["p99"] or 0], alpha=0.4,
              label="p99")
    ax[1].set(ylabel="ms", title="delay out: delta → frame to discord.py")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "delay.png", dpi=110)
    written.append(str(out / "delay.png"))
    plt.close("all")
    return written


def main(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = collect(args.quick, log)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        for path in plot(result, args.plot):
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
