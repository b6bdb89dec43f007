"""MixerSource under discord.py's own AudioPlayer thread (the peer): paced reads, libopus encode, clean stop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from discord import opus
from discord.player import AudioPlayer

from bot.audio.mixer import Mixer
from bot.playback.source import MixerSource


class FakeVoiceClient:
    """What AudioPlayer touches on a VoiceClient; packets are encoded exactly as `send_audio_packet` does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.encoder = opus.Encoder()
        self.packets: list[bytes] = []
        self.lock = threading.Lock()
        self.client = self  # AudioPlayer._speak uses client.client.loop
        self.loop = loop
        self.ws = self
        self.timeout = 1.0

    async def speak(self, _state: object) -> None:
        return None

    def is_connected(self) -> bool:
        return True

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        packet = self.encoder.encode(data, self.encoder.SAMPLES_PER_FRAME) if encode else data
        with self.lock:
            self.packets.append(packet)


async def test_discord_py_player_plays_the_mix_pushed_from_the_loop() -> None:
    mixer = Mixer()
    voice = FakeVoiceClient(asyncio.get_running_loop())
    source = MixerSource(mixer)
    ended = threading.Event()
    player = AudioPlayer(source, voice, after=lambda _error: ended.set())  # type: ignore[arg-type]
    player.start()
    t = np.arange(24_000 // 50) / 24_000
    frame = (0.4 * 32767 * np.sin(2 * np.pi * 600 * t)).astype(np.int16).tobytes()
    for _ in range(25):  # 0.5 s of a tone, pushed on the loop while the player thread reads
        mixer.push(1, frame)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    source.close()  # the next read returns b"": discord.py ends the player by itself
    assert await asyncio.to_thread(ended.wait, 2.0)

    with voice.lock:
        packets = list(voice.packets)
    assert 30 <= len(packets) <= 100  # paced at 20 ms for ~0.8 s (+ 5 silence frames at the end)
    decoder = opus.Decoder()
    pcm = np.frombuffer(b"".join(decoder.decode(p, fec=False) for p in packets), dtype=np.int16)
    left = pcm[0::2].astype(np.float64)
    loud = np.nonzero(np.abs(left) > 2000)[0]
    assert (loud[-1] - loud[0]) / 48_000 >= 0.45
    body = left[loud[0] : loud[-1]]
    spectrum = np.abs(np.fft.rfft(body * np.hanning(body.size)))
    assert abs(np.argmax(spectrum) * 48_000 / body.size - 600) < 5
    stats = mixer.stats()
    assert stats.samples_mixed == 25 * 480
    assert stats.output_gaps == 0
