"""Offline engines behind small Protocols: VAD, ASR, MT, TTS. Heavy imports happen lazily inside."""
