"""Per-speaker audio: jitter buffer, Opus decode with FEC/PLC, 48→24 kHz, 20 ms pcm16 frames."""
