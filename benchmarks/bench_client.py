"""TranslationSession cost: CPU per 20 ms frame sent, and the gap of a reconnect after a transport abort.

The client's per-frame CPU (chunking, base64, JSON, websocket framing, replay buffer) is printed as a
ratio to bare libopus decode of one 20 ms 48 kHz stereo frame, measured in the same run. The server
is a minimal translations-protocol sink in a child process, so its CPU does not count.

    python benchmarks/bench_client.py [--seconds 120] [--speakers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import statistics
import time

import numpy as np

FRAME = 960  # 20 ms of 24 kHz pcm16


def sink_server(port_q: mp.Queue, abort_after: int) -> None:
    """Acknowledge every 200 ms of input with a tiny output event; abort the first socket once."""
    from websockets.asyncio.server import serve

    aborted = {"done": False}

    async def handle(ws) -> None:
        await ws.send(json.dumps({"type": "session.created", "event_id": "e", "session": {
            "id": "sess_bench", "type": "translation", "model": "m", "expires_at": int(time.time()) + 3600,
            "audio": {}}}))
        got = 0
        async for raw in ws:
            ev = json.loads(raw)
            if ev["type"] == "session.update":
                await ws.send(json.dumps({"type": "session.updated", "event_id": "e", "session": {
                    "id": "sess_bench", "type": "translation", "model": "m",
                    "expires_at": int(time.time()) + 3600, "audio": {}}}))
            elif ev["type"] == "session.input_audio_buffer.append":
                got += len(base64.b64decode(ev["audio"]))
                if abort_after and not aborted["done"] and got >= abort_after:
                    aborted["done"] = True
                    ws.transport.abort()
                    return
                await ws.send(json.dumps({"type": "session.output_transcript.delta", "event_id": "e",
                                          "delta": ".", "elapsed_ms": got // 48}))
            elif ev["type"] == "session.close":
                await ws.send(json.dumps({"type": "session.closed", "event_id": "e"}))
                return

    async def main() -> None:
        async with serve(handle, "127.0.0.1", 0, max_size=None) as server:
            port_q.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


def libopus_floor(frames: int = 3000) -> float:
    """Seconds of CPU to decode one 20 ms 48 kHz stereo frame with bare libopus."""
    import discord.opus

    from bot.audio.opus import OpusDecoder

    enc = discord.opus.Encoder()
    t = np.arange(960) / 48_000
    pcm = (np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 8000).astype("<i2").tobytes()
    packets = [enc.encode(pcm, 960) for _ in range(50)]
    dec = OpusDecoder(channels=2)
    start = time.process_time()
    for i in range(frames):
        dec.decode(packets[i % 50])
    return (time.process_time() - start) / frames


async def run_client(port: int, seconds: float, speakers: int) -> tuple[float, int, list[float]]:
    from bot.config import Endpoint, load_settings
    from bot.realtime.session import TranslationSession

    settings = load_settings(None, env={})
    ep = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime/translations", "translation", "m", None, 0.034)
    sessions = [TranslationSession(ep, "es", settings, name=f"s{i}") for i in range(speakers)]
    for s in sessions:
        await s.open()

    async def drain(s: TranslationSession) -> None:
        async for _ in s.outputs():
            pass

    drains = [asyncio.create_task(drain(s)) for s in sessions]
    rng = np.random.default_rng(0)
    frame = (rng.standard_normal(480) * 3000).astype("<i2").tobytes()
    frames = int(seconds * 50)
    cpu0 = time.process_time()
    for _ in range(frames):
        for s in sessions:
            await s.send_audio(frame)
    for s in sessions:
        await s.close()
    cpu = time.process_time() - cpu0
    await asyncio.gather(*drains)
    gaps = [g for s in sessions for g in s.stats.reconnect_gaps_s]
    return cpu, frames * speakers, gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120, help="audio per speaker")
    ap.add_argument("--speakers", type=int, default=8)
    ap.add_argument("--reconnects", type=int, default=10)
    args = ap.parse_args()

    floor = libopus_floor()
    q: mp.Queue = mp.Queue()
    proc = mp.Process(target=sink_server, args=(q, 0), daemon=True)
    proc.start()
    cpu, frames, _ = asyncio.run(run_client(q.get(timeout=10), args.seconds, args.speakers))
    proc.terminate()
    per_frame = cpu / frames

    gaps: list[float] = []
    for _ in range(args.reconnects):
        q2: mp.Queue = mp.Queue()
        p2 = mp.Process(target=sink_server, args=(q2, 48_000), daemon=True)  # abort 1 s in
        p2.start()
        gaps += asyncio.run(run_client(q2.get(timeout=10), 2.0, 1))[2]
        p2.terminate()

    print(f"libopus decode floor        : {floor * 1e6:7.1f} µs per 20 ms frame (48 kHz stereo)")
    print(f"client send path            : {per_frame * 1e6:7.1f} µs per 20 ms frame "
          f"({frames} frames, {args.speakers} sessions)")
    print(f"ratio client / libopus     : {per_frame / floor:7.2f}x")
    print(f"share of one core per speaker: {per_frame / 0.020 * 100:6.2f} %")
    if gaps:
        print(f"reconnect gap (drop → live, replay sent): median {statistics.median(gaps) * 1000:.0f} ms, "
              f"max {max(gaps) * 1000:.0f} ms over {len(gaps)} aborts")


if __name__ == "__main__":
    main()
