"""Per-speaker CPU cost of Parley's voice receive path versus bare libopus decoding.

Measures, on one core and in the same run:
  * floor A: bare libopus decode of the same frames, 48 kHz stereo int16 via ctypes
    (the protocols.md reference floor, ~65 µs/frame on the reference EPYC);
  * floor B: bare libopus decode to 48 kHz mono float (what the receive path itself decodes to);
  * the receive path: ``VoiceReceiver.feed`` on real datagrams built by discord.py's sender code,
    DAVE-encrypted by a real davey session — RTP parse + XChaCha20 + DAVE + jitter buffer + Opus
    decode + soxr 48→24 kHz + 20 ms framing.
Goal: ratio to floor A ≤ 1.5× and ≥ 200 speakers per core (one speaker = 50 packets/s).

Run: ``python benchmarks/bench_receive.py`` (needs the test extras: cryptography, for the DAVE group).
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import davey
import numpy as np
from discord import opus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.audio.opus import OpusDecoder, load_libopus
from bot.voice.dave import DaveDecryptor
from bot.voice.receiver import VoiceReceiver
from tests.voice.dave_group import make_group
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, to_stereo_bytes

FRAMES = 3000  # 60 s of audio per measurement
REPEATS = 5
PACKETS_PER_SECOND = 50


def speech_like(seconds: float, seed: int = 7) -> np.ndarray:
    """Voiced harmonics + noise under a syllable-rate envelope, int16 mono 48 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 48000) // 960 * 960
    t = np.arange(n) / 48000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 48000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) ** 0.5
    x = env * (0.6 * voiced + 0.15 * rng.standard_normal(n))
    return (x / np.abs(x).max() * 12000).astype(np.int16)


class NullSink:
    def __init__(self) -> None:
        self.frames = 0

    def on_frame(self, user_id: int, pcm: bytes, at: float = 0.0) -> None:
        self.frames += 1

    def on_stream_end(self, user_id: int) -> None:
        pass


def floor_stereo(frames: list[bytes]) -> float:
    lib = load_libopus()
    err = ctypes.c_int()
    state = lib.opus_decoder_create(48000, 2, ctypes.byref(err))
    buf = np.zeros(5760 * 2, dtype=np.int16)
    ptr = buf.ctypes.data
    decode = lib.opus_decode
    t0 = time.process_time()
    for f in frames:
        decode(state, f, len(f), ptr, 5760, 0)
    elapsed = time.process_time() - t0
    lib.opus_decoder_destroy(state)
    return elapsed / len(frames)


def floor_mono(frames: list[bytes]) -> float:
    dec = OpusDecoder(1)
    t0 = time.process_time()
    for f in frames:
        dec.decode(f)
    return (time.process_time() - t0) / len(frames)


def per_call(fn, items) -> float:
    t0 = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - t0) / len(items)


def stages(datagrams: list[bytes], session, raw: list[bytes]) -> dict[str, float]:
    """Each stage alone on the same packets (µs), to show where the path's overhead goes."""
    from bot.audio.resample import Downsampler
    from bot.voice.rtp import parse_rtp
    from bot.voice.transport import TransportDecryptor

    transport = TransportDecryptor(XCHACHA, SECRET_KEY)
    headers = [parse_rtp(d) for d in datagrams]
    sealed = [transport.decrypt(d, h) for d, h in zip(datagrams, headers, strict=True)]
    dec = OpusDecoder(1)
    pcm = [dec.decode(f) for f in raw]
    ds = Downsampler()
    return {
        "rtp parse": per_call(parse_rtp, datagrams),
        "xchacha20 open": per_call(lambda p: transport.decrypt(*p), list(zip(datagrams, headers, strict=True))),
        "dave decrypt": per_call(lambda f: session.decrypt(1001, davey.MediaType.audio, f), sealed),
        "opus decode mono": per_call(OpusDecoder(1).decode, raw),
        "soxr + framing": per_call(ds.push, pcm),
    }


def measure(frames: int = FRAMES, repeats: int = REPEATS) -> dict:
    """The figures of :func:`main` as a dict (seconds per packet / frame); raises if a packet was lost."""
    pcm = to_stereo_bytes(speech_like(frames / 50))
    group = make_group([1001, 2002])
    enc = opus.Encoder()  # discord.py's encoder with its defaults, as the sender below uses
    raw = [enc.encode(pcm[i : i + 3840], 960) for i in range(0, len(pcm), 3840)]
    results = []
    sizes = 0.0
    breakdown: dict[str, float] = {}
    for rep in range(repeats):
        # DAVE rejects replayed frames, so every repetition gets freshly encrypted datagrams.
        peer = DiscordPeer(ssrc=4242, dave_session=group[1001], sequence=rep * 7000)
        datagrams = peer.send_pcm(pcm)
        sink = NullSink()
        receiver = VoiceReceiver(sink, dave=DaveDecryptor(lambda: group[2002]), mode=XCHACHA, secret_key=SECRET_KEY)
        receiver.on_gateway(5, {"user_id": "1001", "ssrc": 4242, "speaking": 1}, 0.0)
        feed = receiver.feed
        t0 = time.process_time()
        t = 0.0
        for d in datagrams:
            feed(d, t)
            t += 0.02
        path = (time.process_time() - t0) / len(datagrams)
        sizes = float(np.mean([len(x) for x in datagrams]))
        counts = receiver.counters()["outcomes"]
        if counts["decoded"] != len(datagrams):
            raise RuntimeError(f"unexpected outcomes: {counts}")
        results.append((floor_stereo(raw), floor_mono(raw), path))
    # stage breakdown on one more fresh stream (DAVE frames cannot be decrypted twice)
    peer = DiscordPeer(ssrc=4242, dave_session=group[1001], sequence=50000)
    breakdown = stages(peer.send_pcm(pcm), group[2002], raw)
    return {
        "frames": frames, "repeats": repeats, "datagram_bytes": sizes,
        "floor_stereo_s": min(r[0] for r in results), "floor_mono_s": min(r[1] for r in results),
        "path_s": min(r[2] for r in results), "stages_s": breakdown,
    }


def main() -> int:
    try:
        m = measure()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    a, b, p, breakdown = m["floor_stereo_s"], m["floor_mono_s"], m["path_s"], m["stages_s"]
    per_speaker = p * PACKETS_PER_SECOND
    print(f"frames per run: {FRAMES}, best of {REPEATS}, mean datagram {m['datagram_bytes']:.0f} B")
    print(f"floor A  libopus decode 48 kHz stereo int16 : {a * 1e6:7.1f} µs/frame")
    print(f"floor B  libopus decode 48 kHz mono float   : {b * 1e6:7.1f} µs/frame")
    print(f"receive path (parse+AEAD+DAVE+jitter+decode+soxr+framing): {p * 1e6:7.1f} µs/packet")
    for name, cost in breakdown.items():
        print(f"    {name:18s} {cost * 1e6:6.1f} µs")
    print(f"ratio to floor A: {p / a:.2f}x   (goal <= 1.5x)")
    print(f"ratio to floor B: {p / b:.2f}x")
    print(f"speakers per core: {1.0 / per_speaker:.0f}   (goal >= 200; floor A alone: {1.0 / (a * 50):.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
