"""Real peers for receive tests: discord.py's own sender code, libopus, davey, espeak-ng speech.

``DiscordPeer`` is a bare ``discord.VoiceClient`` (no network) whose ``send_audio_packet`` — the
exact code the library uses to talk — hands its datagrams to us instead of a socket.
"""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import discord
import numpy as np
import soxr
from discord import opus

SECRET_KEY = bytes(range(32))
XCHACHA = "aead_xchacha20_poly1305_rtpsize"


class DiscordPeer:
    """One member's client: encodes 48 kHz stereo pcm with discord.py and produces its datagrams."""

    def __init__(
        self,
        ssrc: int,
        *,
        key: bytes = SECRET_KEY,
        dave_session=None,
        sequence: int = 0,
        timestamp: int = 0,
        encoder: opus.Encoder | None = None,
    ) -> None:
        self.sent: list[bytes] = []
        vc = discord.VoiceClient.__new__(discord.VoiceClient)
        vc._connection = SimpleNamespace(  # the attributes VoiceClient's sender code reads
            secret_key=list(key),
            mode=XCHACHA,
            ssrc=ssrc,
            dave_session=dave_session,
            can_encrypt=dave_session is not None,
            send_packet=lambda packet: self.sent.append(bytes(packet)),  # recv() yields bytes
        )
        vc.sequence = sequence
        vc.timestamp = timestamp
        vc._incr_nonce = 0
        vc.encoder = encoder or opus.Encoder()
        self.vc = vc

    def send_pcm(self, pcm48_stereo: bytes) -> list[bytes]:
        """Send whole 20 ms frames of s16le 48 kHz stereo; return the datagrams they became."""
        start = len(self.sent)
        size = opus.Encoder.FRAME_SIZE
        for i in range(0, len(pcm48_stereo) - size + 1, size):
            self.vc.send_audio_packet(pcm48_stereo[i : i + size])
        return self.sent[start:]

    def send_opus(self, frame: bytes) -> bytes:
        """Send one already-encoded frame (e.g. Discord's silence frame)."""
        self.vc.send_audio_packet(frame, encode=False)
        return self.sent[-1]

    def send_with_extension(self, pcm48_stereo: bytes, ext_words: int = 1) -> list[bytes]:
        """Datagrams as Discord's server forwards them: X bit, 0xBEDE preamble, encrypted ext body."""
        vc, out = self.vc, []
        size = opus.Encoder.FRAME_SIZE
        for i in range(0, len(pcm48_stereo) - size + 1, size):
            vc.checked_add("sequence", 1, 65535)
            payload = vc.encoder.encode(pcm48_stereo[i : i + size], opus.Encoder.SAMPLES_PER_FRAME)
            if vc._connection.dave_session is not None:
                payload = vc._connection.dave_session.encrypt_opus(payload)
            header = bytearray(16)
            header[0] = 0x90  # version 2, X bit
            header[1] = 0x78
            struct.pack_into(">HII", header, 2, vc.sequence, vc.timestamp, vc._connection.ssrc)
            struct.pack_into(">HH", header, 12, 0xBEDE, ext_words)
            ext_body = bytes([0x10, 0x7F, 0, 0]) + bytes(4 * (ext_words - 1))  # audio level element
            out.append(bytes(vc._encrypt_aead_xchacha20_poly1305_rtpsize(bytes(header), ext_body + payload)))
            vc.checked_add("timestamp", opus.Encoder.SAMPLES_PER_FRAME, 4294967295)
        self.sent.extend(out)
        return out


@functools.cache
def espeak_speech(text: str = "Parley listens to every member and interprets their speech live.") -> np.ndarray:
    """Synthesised speech as int16 mono 48 kHz (espeak-ng → sox), cached per text."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise RuntimeError("espeak-ng and sox are required (apt-get install espeak-ng sox)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        out = Path(tmp) / "speech48.raw"
        subprocess.run(["espeak-ng", "-v", "en", "-s", "160", "-w", str(raw), text], check=True)
        subprocess.run(
            ["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", "-e", "signed-integer", str(out)],
            check=True,
        )
        pcm = np.frombuffer(out.read_bytes(), dtype=np.int16).copy()
    frames = len(pcm) // 960
    return pcm[: frames * 960]


def to_stereo_bytes(mono48: np.ndarray) -> bytes:
    return np.repeat(mono48[:, None], 2, axis=1).astype(np.int16).tobytes()


def tone(seconds: float, freq: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    """int16 mono 48 kHz test tone with a slow amplitude envelope (so envelopes are informative)."""
    n = int(seconds * 48000) // 960 * 960
    t = np.arange(n) / 48000
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 1.3 * t)
    return (amplitude * env * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def reference24(mono48: np.ndarray) -> np.ndarray:
    """What the receive path should approximate: the source at 24 kHz, float."""
    return soxr.resample(mono48.astype(np.float32), 48000, 24000)


def envelope(x: np.ndarray, win: int = 240) -> np.ndarray:
    """10 ms RMS envelope of a 24 kHz signal."""
    n = len(x) // win
    x = x[: n * win].astype(np.float64).reshape(n, win)
    return np.sqrt((x * x).mean(axis=1))


def best_alignment(ref: np.ndarray, out: np.ndarray, max_lag: int = 2400) -> tuple[int, float]:
    """Lag (samples, out relative to ref) and peak normalized waveform correlation."""
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    best = (0, -1.0)
    for lag in range(0, max_lag):
        a = ref[: len(out) - lag]
        b = out[lag : lag + len(a)]
        n = min(len(a), len(b))
        if n < 2400:
            break
        a, b = a[:n], b[:n]
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        c = float((a * b).sum() / denom) if denom else 0.0
        if c > best[1]:
            best = (lag, c)
    return best


def similarity(source48: np.ndarray, out24: np.ndarray) -> dict[str, float]:
    """Envelope correlation (10 ms RMS, after best alignment) and SNR of the aligned waveform."""
    ref = reference24(source48)
    lag, corr = best_alignment(ref, out24)
    a = ref[: len(out24) - lag].astype(np.float64)
    b = out24[lag : lag + len(a)].astype(np.float64)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ea, eb = envelope(a), envelope(b)
    env_corr = float(np.corrcoef(ea, eb)[0, 1])
    gain = float((a * b).sum() / (b * b).sum()) if (b * b).sum() else 0.0
    noise = a - gain * b
    snr = float(10 * np.log10((a * a).sum() / max((noise * noise).sum(), 1e-9)))
    return {"lag": lag, "wave_corr": corr, "env_corr": env_corr, "snr_db": snr, "length_ratio": len(out24) / len(ref)}
