"""ListeningVoiceClient against discord.py's real connection state, websocket dispatch and UDP reader.

Offline: no Discord. discord.py's ``DiscordVoiceWebSocket.received_message`` dispatches real op
payloads (so the hook is reached exactly as in production, after discord.py stored the key), and
its ``SocketReader`` thread reads real UDP datagrams from a loopback socket.
"""

import asyncio
import gc
import socket
from types import SimpleNamespace

import discord
import numpy as np
import pytest
from discord.gateway import DiscordVoiceWebSocket

from bot.audio.opus import SILENCE_FRAME
from bot.voice.client import ListeningVoiceClient
from bot.voice.config import VoiceConfig
from tests.voice.dave_group import make_group
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, similarity, to_stereo_bytes

ALICE, BOT = 111_111_111_111, 222_222_222_222


@pytest.fixture
async def voice_client(tmp_path, monkeypatch):
    loop = asyncio.get_running_loop()
    removed = []
    client = SimpleNamespace(_connection=SimpleNamespace(loop=loop, _remove_voice_client=removed.append))
    guild = SimpleNamespace(id=5555)
    members = [SimpleNamespace(id=ALICE, display_name="Alice")]
    channel = SimpleNamespace(id=7777, guild=guild, members=members, _get_voice_client_key=lambda: (5555, "guild_id"))
    cls = ListeningVoiceClient.configured(VoiceConfig(capture=True, capture_dir=tmp_path / "captures"))
    assert ListeningVoiceClient.voice_config.capture is False  # the base class is untouched

    async def fake_connect(self, **kwargs):  # discord.py's connect minus the network:
        self._connection._socket_reader.resume()  # what VoiceConnectionState._create_socket does

    monkeypatch.setattr(discord.VoiceClient, "connect", fake_connect)
    vc = cls(client, channel)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    vc._connection.socket = rx
    yield vc
    vc.cleanup()
    assert removed == [5555]
    vc.receive.stop()  # cleanup() does not wait; the test does, so nothing outlives it
    assert not vc.receive._thread.is_alive()
    vc._connection._socket_reader.stop()
    rx.close()
    del vc
    gc.collect()


async def dispatch(vc, op, d):
    ws = DiscordVoiceWebSocket(None, asyncio.get_running_loop(), hook=vc._connection.hook)
    ws._connection = vc._connection

    async def sent(payload):
        return None

    ws.send_as_json = sent  # op 4 makes discord.py send SPEAKING(none)
    await ws.received_message({"op": op, "d": d})


async def collect(vc, user_id, until_end=True, timeout=10.0):
    frames = []
    while True:
        frame = await asyncio.wait_for(vc.frames.get(), timeout)
        assert frame.user_id == user_id
        if frame.end:
            return b"".join(frames)
        frames.append(frame.pcm)


async def test_hook_is_installed_and_fed_by_discord_py(voice_client):
    vc = voice_client
    assert vc._connection.hook == vc._voice_ws_hook
    await dispatch(vc, 4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY), "dave_protocol_version": 0})
    assert vc._connection.secret_key == list(SECRET_KEY)  # discord.py processed it first
    await dispatch(vc, 5, {"user_id": str(ALICE), "ssrc": 1111, "speaking": 1})
    await asyncio.sleep(0.1)
    assert vc.receive.receiver.speakers == {1111: ALICE}
    await dispatch(vc, 13, {"user_id": str(ALICE)})
    await asyncio.sleep(0.1)
    assert vc.receive.receiver.speakers == {}


async def test_udp_to_frames_with_dave_through_discord_py_reader(voice_client, speech):
    vc = voice_client
    group = make_group([ALICE, BOT], channel_id=7777)
    await dispatch(vc, 4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY), "dave_protocol_version": 0})
    vc._connection.dave_session = group[BOT]  # as after discord.py's MLS handshake (ops 25-30)
    vc._connection.dave_protocol_version = 1
    await vc.connect(reconnect=False, timeout=1.0)
    assert vc.receive.feed_datagram in vc._connection._socket_reader._callbacks
    peer = DiscordPeer(ssrc=1111, dave_session=group[ALICE])
    clip = speech[: 48000 * 2]
    datagrams = [*peer.send_pcm(to_stereo_bytes(clip)), peer.send_opus(SILENCE_FRAME)]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = vc._connection.socket.getsockname()
    for d in datagrams[:5]:  # before op 5: held, not lost
        tx.sendto(d, target)
    await asyncio.sleep(0.05)
    await dispatch(vc, 5, {"user_id": str(ALICE), "ssrc": 1111, "speaking": 1})
    for d in datagrams[5:]:
        tx.sendto(d, target)
        await asyncio.sleep(0.001)
    tx.close()
    pcm = await collect(vc, ALICE)
    await asyncio.sleep(0.1)  # counters are a snapshot published every 20 ms
    counters = vc.receive_counters
    assert counters["outcomes"]["decoded"] == len(datagrams) - 1, counters
    assert counters["outcomes"]["dave_failed"] == 0
    sim = similarity(clip, np.frombuffer(pcm, dtype=np.int16))
    assert sim["env_corr"] >= 0.97 and sim["snr_db"] >= 10, sim
    vc.receive.stop()
    capture = next((vc.voice_config.capture_dir).glob("*.jsonl"))
    lines = capture.read_text().splitlines()
    assert lines[0].startswith('{"parley_capture":1')
    assert sum('"data"' in line for line in lines) == len(datagrams)
