"""Discord voice receive: UDP datagrams → RTP → transport AEAD → DAVE → per-member speech frames.

Entry points: :class:`bot.voice.receiver.VoiceReceiver` (pure core), :class:`bot.voice.worker.ReceiveWorker`
(thread + asyncio delivery), :class:`bot.voice.client.ListeningVoiceClient` (discord.py glue).
"""
