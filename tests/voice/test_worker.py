"""ReceiveWorker: ordering of events and datagrams across threads, batching to asyncio, backlog bound."""

import asyncio
import threading

from bot.audio.sink import CollectingSink
from bot.voice import worker as worker_mod
from bot.voice.receiver import VoiceReceiver
from bot.voice.worker import AsyncioFrameSink, ReceiveWorker, VoiceFrame
from tests.voice.peers import SECRET_KEY, XCHACHA, DiscordPeer, to_stereo_bytes


async def test_frames_reach_asyncio_in_order_and_end_is_signalled(speech):
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[VoiceFrame] = asyncio.Queue()
    sink = AsyncioFrameSink(loop, frames)
    w = ReceiveWorker(VoiceReceiver(sink), after_burst=sink.flush)
    w.start()
    w.feed_gateway(4, {"mode": XCHACHA, "secret_key": list(SECRET_KEY)})
    w.feed_gateway(5, {"user_id": "3", "ssrc": 9})
    datagrams = DiscordPeer(ssrc=9).send_pcm(to_stereo_bytes(speech[:48000]))
    feeder = threading.Thread(target=lambda: [w.feed_datagram(d) for d in datagrams])  # like SocketReader
    feeder.start()
    feeder.join()
    await asyncio.sleep(0.2)
    w.stop()  # flushes: the stream ends
    await asyncio.sleep(0.05)
    got = [frames.get_nowait() for _ in range(frames.qsize())]
    assert got[-1] == VoiceFrame(3, b"", True)
    assert [f.user_id for f in got] == [3] * len(got)
    assert 49 <= len(got) - 1 <= 51 and all(len(f.pcm) == 960 for f in got[:-1])
    assert w.counters()["outcomes"]["decoded"] == 50


def test_backlog_is_bounded(monkeypatch):
    monkeypatch.setattr(worker_mod, "MAX_BACKLOG", 10)
    w = ReceiveWorker(VoiceReceiver(CollectingSink()))  # not started: nothing drains the queue
    for _ in range(25):
        w.feed_datagram(b"\x00" * 20)
    assert w.overflow == 15
    w.start()
    w.stop()
    c = w.counters()
    assert c["received"] == 10 and c["outcomes"]["not_rtp"] == 10 and c["overflow"] == 15
