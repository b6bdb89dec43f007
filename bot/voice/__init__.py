"""Discord voice receive: UDP datagrams → RTP → transport AEAD → DAVE → per-member speech frames.

Public surface:
- :class:`bot.voice.client.ListeningVoiceClient` — ``channel.connect(cls=ListeningVoiceClient.configured(cfg))``;
  members' speech arrives on ``vc.frames`` (``asyncio.Queue`` of :class:`bot.voice.worker.VoiceFrame`:
  ``user_id``, 960 bytes of 24 kHz mono s16le, or ``end=True`` when the member stops talking).
- :class:`bot.voice.worker.ReceiveWorker` — runs the receiver on its own thread.
- :class:`bot.voice.receiver.VoiceReceiver` — the pure, single-threaded core (used by replay and tests).
- :class:`bot.voice.config.VoiceConfig` — the ``voice:`` settings section.
"""
