"""Thin ctypes binding to the system libopus decoder.

Why not ``discord.opus.Decoder``: it always decodes stereo and copies through Python lists/arrays
(~133 µs/frame here). The receive path decodes every frame of every speaker, so it calls libopus
directly into a preallocated numpy buffer (no per-frame allocation except the returned view copy).

Why mono at 48 kHz: Discord sends stereo Opus, but libopus decodes a stereo stream into one channel
by downmixing inside the decoder (L+R)/2, which is cheaper than decoding two channels and averaging
them in numpy (measured in ``benchmarks/bench_receive.py``). 48 kHz is kept so the 48→24 kHz
conversion is done by soxr's high-quality filter, as specified.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import numpy as np

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz, Discord's only frame size
MAX_FRAME_SAMPLES = 5760  # 120 ms, the largest Opus packet
OPUS_OK = 0
_OPUS_RESET_STATE = 4028
SILENCE_FRAME = b"\xf8\xff\xfe"


class OpusUnavailable(RuntimeError):
    """libopus could not be loaded (Debian: ``apt-get install libopus0``)."""


@cache
def load_libopus() -> ctypes.CDLL:
    """Load libopus once; raise :class:`OpusUnavailable` with an actionable message."""
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:  # pragma: no cover - depends on the host
        raise OpusUnavailable(f"libopus not found ({name}): install libopus0") from exc
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decoder_destroy.restype = None
    for fn in (lib.opus_decode, lib.opus_decode_float):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
    lib.opus_decoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.opus_decoder_ctl.restype = ctypes.c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int
    return lib


def packet_has_silk(packet: bytes) -> bool:
    """True when the TOC says SILK or hybrid, the only modes that can carry in-band FEC (LBRR)."""
    return bool(packet) and (packet[0] >> 3) < 16


class OpusDecoder:
    """One libopus decoder (one per speaker: Opus decoding is stateful).

    Every method returns float32 mono 48 kHz samples (full scale ±1.0) as a fresh numpy array, or
    ``None`` when libopus rejects the packet (the caller counts it and conceals instead). Float is
    libopus' native output and what soxr filters best; int16 comes back only at the very end.
    """

    __slots__ = ("_buf", "_channels", "_decode", "_lib", "_ptr", "_state")

    def __init__(self, channels: int = 1) -> None:
        self._lib = lib = load_libopus()
        err = ctypes.c_int(0)
        state = lib.opus_decoder_create(SAMPLE_RATE, channels, ctypes.byref(err))
        if err.value != OPUS_OK or not state:
            raise OpusUnavailable(f"opus_decoder_create failed: {err.value}")
        self._state = state
        self._channels = channels
        self._buf = np.zeros(MAX_FRAME_SAMPLES * channels, dtype=np.float32)
        self._ptr = self._buf.ctypes.data
        self._decode = lib.opus_decode_float

    def decode(self, packet: bytes) -> np.ndarray | None:
        """Decode one packet."""
        n = self._decode(self._state, packet, len(packet), self._ptr, MAX_FRAME_SAMPLES, 0)
        return self._buf[: n * self._channels].copy() if n > 0 else None

    def decode_fec(self, next_packet: bytes, samples: int = FRAME_SAMPLES) -> np.ndarray | None:
        """Rebuild the frame *before* ``next_packet`` from its in-band FEC data (PLC if it has none)."""
        n = self._decode(self._state, next_packet, len(next_packet), self._ptr, samples, 1)
        return self._buf[: n * self._channels].copy() if n > 0 else None

    def conceal(self, samples: int = FRAME_SAMPLES) -> np.ndarray | None:
        """Packet loss concealment for one missing frame."""
        n = self._decode(self._state, None, 0, self._ptr, samples, 0)
        return self._buf[: n * self._channels].copy() if n > 0 else None

    def reset(self) -> None:
        """Forget the stream (a new talk spurt must not be concealed from the previous one)."""
        self._lib.opus_decoder_ctl(self._state, _OPUS_RESET_STATE)

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state:
            self._lib.opus_decoder_destroy(state)
            self._state = None
