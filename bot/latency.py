"""The delays a member feels, as Prometheus histograms: observed where they end, read at `/metrics`.

Three spans, each on the monotonic clock of this process:

- packet in → bytes on the websocket: from the arrival of the datagram whose frame completes a chunk's
  first speech to the moment that chunk is written upstream (receive worker, jitter hold, room queues,
  the speaker's 200 ms chunking);
- translated delta in → frame out: from a translated audio delta read off the websocket to the 20 ms
  frame that starts playing it handed to discord.py's player (mixer backlog, catch-up tempo, pre-buffer);
- end of speech → first translated audio: from the end of a member's stream (they stopped talking) to
  the next translated audio delta for them — the wait a listener notices.

Module-level and unregistered: the histograms cost one lock and a bucket search per observation (no
per-member labels), and `bot.metrics` registers them in its own registry only when `metrics.port` is set.
This module imports nothing of Parley's, so every layer may observe into it.
"""

from __future__ import annotations

import time

from prometheus_client import Histogram

now = time.monotonic  # the clock every span is measured on (the receive worker's and asyncio's default)

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

PACKET_TO_WEBSOCKET = Histogram(
    "parley_packet_to_websocket_seconds",
    "From a voice datagram's arrival to its audio written to the translation websocket",
    buckets=_BUCKETS,
    registry=None,
)
DELTA_TO_FRAME = Histogram(
    "parley_delta_to_frame_seconds",
    "From a translated audio delta's arrival to the first 20 ms frame of it handed to the player",
    buckets=_BUCKETS,
    registry=None,
)
SPEECH_END_TO_AUDIO = Histogram(
    "parley_speech_end_to_audio_seconds",
    "From the end of a member's speech to the first translated audio after it",
    buckets=_BUCKETS,
    registry=None,
)

ALL = (PACKET_TO_WEBSOCKET, DELTA_TO_FRAME, SPEECH_END_TO_AUDIO)


def count(histogram: Histogram) -> float:
    """Observations so far (for tests and benchmarks; Prometheus reads `_count` itself)."""
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0
