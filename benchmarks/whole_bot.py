"""The whole bot with N speakers, in one process, against an echo backend in another.

What runs here is what runs in `python -m bot run`, minus Discord's sockets:

  a feeder thread (standing in for discord.py's socket-reader thread) hands every member's real datagrams —
  Opus frames sent through discord.py's own `VoiceClient.send_audio_packet` (DAVE + XChaCha20, as
  tests/voice/peers.py does) — to the listener's `ReceiveWorker` at the real 20 ms pace
  → `VoiceReceiver` (RTP, AEAD, DAVE, jitter, Opus, soxr) → `AsyncioFrameSink` → the `RoomManager`'s room
  → one `Speaker` per member → its `TranslationSession` over a real websocket to `echo_backend.py` (another
  process: its CPU is not counted) → translated audio deltas → the room's `Mixer` → the speaker account's
  `MixerSource`, read on discord.py's own `AudioPlayer` thread and Opus-encoded (and DAVE/AEAD-sealed) by
  discord.py's `send_audio_packet`.

Measured over a steady window after a warm-up: CPU seconds of this process (`getrusage(RUSAGE_SELF)`, and per
thread from /proc), resident memory, and the delays Parley adds on each leg, by timestamps taken in wrappers
installed here (product code is not changed):

  in:  packet handed to the receive worker → the websocket write of the chunk holding its audio, split into
       receive wait (jitter buffer / resampler look-ahead), chunk wait (the rest of `audio.chunk_ms` arriving)
       and processing (the chunk's last packet → its bytes written);
  out: an `output_audio.delta` received → the first 20 ms frame holding its audio returned to discord.py's
       player, split into wait (prebuffer, queue, the player's 20 ms clock) and processing (parse → mixer push,
       plus the `read()` that hands it over).

    python benchmarks/whole_bot.py --speakers 8 [--chunk-ms 200] [--warmup 3] [--seconds 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GUILD, SOURCE, OUTPUT = 1, 100, 200
LISTENER, SPEAKER_ACCOUNT = 1, 2
FIRST_MEMBER = 1000
ENGINE_FRAME_BYTES = 960  # 20 ms of 24 kHz mono pcm16
SLOTS = 4  # members' packets are spread over 4 phases of the 20 ms clock, as real senders are not in step


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu() -> dict[int, float]:
    """Native thread id → CPU seconds, from /proc."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return out


def pct(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summary_ms(values) -> dict[str, float | int | None]:
    v = np.asarray(values, dtype=float) * 1000
    return {"p50": pct(v, 50), "p99": pct(v, 99), "n": int(v.size)}


# --- the members' datagrams (made before anything is measured) ----------------------------------------------


def make_datagrams(members: list[int], frames: int, group) -> list[list[bytes]]:
    from discord import opus

    from benchmarks.bench_receive import speech_like
    from tests.voice.peers import DiscordPeer, to_stereo_bytes

    pcm = to_stereo_bytes(speech_like(frames / 50 + 0.1))
    enc = opus.Encoder()  # discord.py's encoder with its defaults, as a member's client
    raw = [enc.encode(pcm[i : i + 3840], 960) for i in range(0, len(pcm) - 3839, 3840)]
    out = []
    for s, uid in enumerate(members):
        peer = DiscordPeer(ssrc=5000 + s, dave_session=group[uid], sequence=s * 977 % 65536, timestamp=s * 31)
        offset = s * 37
        for i in range(frames):
            peer.send_opus(raw[(i + offset) % len(raw)])
        out.append(peer.sent)
    return out


class PlayerClient:
    """What discord.py's `AudioPlayer` needs of a `VoiceClient`; sending is discord.py's own code
    (Opus encode, DAVE, XChaCha20), the datagram is dropped instead of going to a socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dave_session) -> None:
        from tests.voice.peers import DiscordPeer

        self.peer = DiscordPeer(ssrc=99, dave_session=dave_session)
        self.packets = 0
        self.peer.vc._connection.send_packet = self._count
        self.client = SimpleNamespace(loop=loop)
        self.ws = SimpleNamespace(speak=self._speak)
        self.timeout = 1.0
        self.send_s = 0.0

    def _count(self, packet: bytes) -> None:
        self.packets += 1

    async def _speak(self, state) -> None:
        return None

    def is_connected(self) -> bool:
        return True

    def send_audio_packet(self, data: bytes, *, encode: bool = True) -> None:
        t = time.perf_counter()
        self.peer.vc.send_audio_packet(data, encode=encode)
        self.send_s += time.perf_counter() - t


# --- the run ---------------------------------------------------------------------------------------------------


class Probe:
    """Timestamps from wrappers around product objects (benchmark side only)."""

    def __init__(self, members: list[int], frames: int) -> None:
        self.index = {uid: s for s, uid in enumerate(members)}
        self.arrival = np.full((len(members), frames), np.nan)
        self.current = 0.0  # arrival stamp of the datagram the receive worker is handling now
        self.trigger: list[list[float]] = [[] for _ in members]  # frame m → arrival that released it
        self.sent: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)  # session → (pos, t)
        self.written: dict[str, dict[int, float]] = collections.defaultdict(dict)  # session → chunk pos → t
        self.received: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.pushes: list[tuple[int, int, float, float]] = []  # (key, pos, t_push, t_recv)
        self.pushed: dict[int, int] = collections.defaultdict(int)
        self.consumed: dict[int, int] = collections.defaultdict(int)
        self.reads: list[tuple[float, float, list[tuple[int, int]]]] = []
        self.took: list[tuple[int, int]] = []
        self.read_s = 0.0
        self.read_n = 0

    def install_session(self) -> None:
        from bot.realtime.session import TranslationSession

        probe = self
        silence = bytes(ENGINE_FRAME_BYTES)
        send_audio, send_chunk, handle = (TranslationSession.send_audio, TranslationSession._send_chunk,
                                          TranslationSession._handle)

        async def _send_audio(self, pcm16: bytes, arrived_at: float = 0.0) -> None:
            if len(pcm16) == ENGINE_FRAME_BYTES and pcm16 != silence:
                probe.sent[self.name].append((self._sent + len(self._pending), time.monotonic()))
            await send_audio(self, pcm16, arrived_at)

        async def _send_chunk(self, chunk: bytes, since: float = 0.0) -> None:
            pos, live = self._sent, self._live is not None
            await send_chunk(self, chunk, since)
            if live:
                probe.written[self.name][pos] = time.monotonic()

        def _handle(self, conn, raw) -> None:
            if '"session.output_audio.delta"' in raw[:48]:
                probe.received[self.name].append(time.monotonic())
            handle(self, conn, raw)

        TranslationSession.send_audio = _send_audio  # type: ignore[method-assign]
        TranslationSession._send_chunk = _send_chunk  # type: ignore[method-assign]
        TranslationSession._handle = _handle  # type: ignore[method-assign]

    def install_receiver(self, receiver, sink) -> None:
        feed, on_frame = receiver.feed, sink.on_frame
        index, trigger = self.index, self.trigger

        def _feed(data: bytes, now: float) -> None:
            self.current = now
            feed(data, now)

        def _on_frame(user_id: int, pcm: bytes, at: float = 0.0) -> None:
            trigger[index[user_id]].append(self.current)
            on_frame(user_id, pcm, at)

        receiver.feed = _feed
        sink.on_frame = _on_frame

    def install_mixer(self, mixer, source) -> None:
        mixer._lock = threading.RLock()  # so the probe can look at the queues atomically with a take
        push, take, read = mixer.push, mixer._take, source.read
        received = self.received

        def _push(key: int, pcm: bytes, received_at: float | None = None) -> None:
            q = received.get(f"speaker-{key}")
            t_recv = q.popleft() if q else float("nan")
            self.pushes.append((key, self.pushed[key], time.monotonic(), t_recv))
            self.pushed[key] += len(pcm)
            push(key, pcm, received_at)

        def _take() -> list[bytes]:
            with mixer._lock:
                voices = mixer._voices
                before = {k: len(v.buf) for k, v in voices.items()}
                chunks = take()
                took = []
                consumed = self.consumed
                for k, v in voices.items():
                    n = before.get(k, 0) - len(v.buf)
                    if n > 0:
                        consumed[k] += n
                        took.append((k, consumed[k]))
            self.took = took
            return chunks

        def _read() -> bytes:
            t0 = time.monotonic()
            data = read()
            t1 = time.monotonic()
            self.read_s += t1 - t0
            self.read_n += 1
            if self.took:
                self.reads.append((t0, t1, self.took))
                self.took = []
            return data

        mixer._take = _take
        mixer.push = _push
        source.read = _read

    # --- analysis --------------------------------------------------------------------------------------------

    def way_in(self, members: list[int], chunk_bytes: int, since: float) -> dict:
        total, recv_wait, chunk_wait, processing = [], [], [], []
        for s, uid in enumerate(members):
            sent = self.sent.get(f"speaker-{uid}", [])
            written = self.written.get(f"speaker-{uid}", {})
            trig = self.trigger[s]
            arr = self.arrival[s]
            n = min(len(sent), len(trig), arr.size)
            chunk_of = [(sent[m][0] + ENGINE_FRAME_BYTES - 1) // chunk_bytes for m in range(n)]
            last: dict[int, int] = {}
            for m, c in enumerate(chunk_of):
                last[c] = m

            def complete(c: int, sent=sent, last=last) -> bool:  # the last chunk may be padded with silence
                return sent[last[c]][0] + ENGINE_FRAME_BYTES == (c + 1) * chunk_bytes

            for c, m_last in last.items():
                t_w = written.get(c * chunk_bytes)
                if t_w is not None and arr[m_last] >= since and complete(c):
                    processing.append(t_w - trig[m_last])
            for m in range(n):
                if not arr[m] >= since:
                    continue
                c = chunk_of[m]
                t_w = written.get(c * chunk_bytes)
                if t_w is None or not complete(c):
                    continue
                total.append(t_w - arr[m])
                recv_wait.append(trig[m] - arr[m])
                chunk_wait.append(trig[last[c]] - trig[m])
        return {"total_ms": summary_ms(total), "receive_wait_ms": summary_ms(recv_wait),
                "chunk_wait_ms": summary_ms(chunk_wait), "processing_ms": summary_ms(processing)}

    def way_out(self, since: float) -> dict:
        per_key: dict[int, tuple[list[int], list[tuple[float, float]]]] = collections.defaultdict(lambda: ([], []))
        for t0, t1, took in self.reads:
            for k, after in took:
                ends, times = per_key[k]
                ends.append(after)
                times.append((t0, t1))
        total, wait, processing = [], [], []
        for key, pos, t_push, t_recv in self.pushes:
            if not t_recv >= since:
                continue
            ends, times = per_key.get(key, ([], []))
            i = bisect.bisect_right(ends, pos)
            if i >= len(ends):
                continue
            t0, t1 = times[i]
            lat = t1 - t_recv
            w = max(0.0, t0 - t_push)
            total.append(lat)
            wait.append(w)
            processing.append(lat - w)
        return {"total_ms": summary_ms(total), "wait_ms": summary_ms(wait), "processing_ms": summary_ms(processing)}


def run(speakers: int, chunk_ms: int, warmup_s: float, window_s: float) -> dict:
    from benchmarks.echo_backend import EchoBackend
    from tests.voice.dave_group import make_group

    members = [FIRST_MEMBER + s for s in range(speakers)]
    frames = int((warmup_s + window_s + 0.5) * 50)
    t = time.perf_counter()
    group = make_group([LISTENER, SPEAKER_ACCOUNT, *members])
    dave_s = time.perf_counter() - t
    t = time.perf_counter()
    datagrams = make_datagrams(members, frames, group)
    gen_s = time.perf_counter() - t
    backend = EchoBackend()
    try:
        gc.collect()
        rss0 = rss_bytes()
        result = asyncio.run(_bot(members, datagrams, group, backend, chunk_ms, warmup_s, window_s, frames))
    finally:
        backend.close()
    result.update(
        speakers=speakers, chunk_ms=chunk_ms, warmup_s=warmup_s, window_s=window_s,
        setup={"dave_group_s": round(dave_s, 2), "datagrams_s": round(gen_s, 2)},
    )
    result["memory"]["rss_baseline_mb"] = rss0 / 2**20
    result["memory"]["rss_per_speaker_mb"] = (result["memory"]["rss_peak_bytes"] - rss0) / speakers / 2**20
    return result


async def _bot(members, datagrams, group, backend, chunk_ms, warmup_s, window_s, frames) -> dict:
    import discord

    from bot.config import Endpoint, load_settings
    from bot.pipeline.rooms import RoomManager, VoiceLink
    from bot.playback.source import MixerSource
    from bot.store import Store
    from bot.voice.dave import DaveDecryptor
    from bot.voice.receiver import VoiceReceiver
    from bot.voice.worker import AsyncioFrameSink, ReceiveWorker
    from tests.voice.peers import SECRET_KEY, XCHACHA

    loop = asyncio.get_running_loop()
    settings = load_settings(None, env={})
    settings.backend = backend.url
    settings.audio.chunk_ms = chunk_ms
    settings.caps.max_sessions = len(members) + 8
    endpoint = Endpoint(backend.url, "translation", "gpt-realtime-translate", None, 0.034)
    probe = Probe(members, frames)
    probe.install_session()
    state: dict = {}

    async def join_voice(guild_id, channel_id, exclude=None) -> VoiceLink:
        queue: asyncio.Queue = asyncio.Queue(maxsize=settings.voice.frame_queue_size)
        sink = AsyncioFrameSink(loop, queue)
        receiver = VoiceReceiver(sink, settings.voice, dave=DaveDecryptor(lambda: group[LISTENER]), mode=XCHACHA,
                                 secret_key=SECRET_KEY)
        probe.install_receiver(receiver, sink)
        worker = ReceiveWorker(receiver, after_burst=sink.flush, dropped=lambda: sink.dropped)
        worker.start()
        for s, uid in enumerate(members):
            worker.feed_gateway(5, {"user_id": str(uid), "ssrc": 5000 + s, "speaking": 1})
        state["worker"], state["frames"] = worker, queue

        async def disconnect() -> None:
            await asyncio.to_thread(worker.stop)

        return VoiceLink(queue, disconnect)

    class Playback:
        async def play(self, guild_id, channel_id, mixer) -> None:
            source = MixerSource(mixer)
            probe.install_mixer(mixer, source)
            client = PlayerClient(loop, group[SPEAKER_ACCOUNT])
            player = discord.player.AudioPlayer(source, client)  # type: ignore[arg-type]
            state["mixer"], state["player"], state["client"] = mixer, player, client
            player.start()

        async def stop(self, guild_id) -> None:
            state["player"].stop()
            await asyncio.to_thread(state["player"].join, 2)

    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "parley.sqlite3")
        rooms = RoomManager(settings, store, endpoint, join_voice, playback=Playback())
        await rooms.join(GUILD, SOURCE, OUTPUT, None)
        worker = state["worker"]
        stop = threading.Event()
        late = [0.0]

        def feeder() -> None:  # discord.py's socket reader hands each datagram to the worker as it arrives
            feed = worker.feed_datagram
            arrival = probe.arrival
            slots = [list(range(k, len(members), SLOTS)) for k in range(SLOTS)]
            t0 = time.monotonic() + 0.02
            for i in range(frames):
                for k, slot in enumerate(slots):
                    target = t0 + i * 0.02 + k * 0.02 / SLOTS
                    d = target - time.monotonic()
                    if d > 0:
                        time.sleep(d)
                    else:
                        late[0] = max(late[0], -d)
                    if stop.is_set():
                        return
                    for s in slot:
                        arrival[s, i] = time.monotonic()
                        feed(datagrams[s][i])

        feed_thread = threading.Thread(target=feeder, name="bench-socket-reader", daemon=True)
        feed_thread.start()
        await asyncio.sleep(warmup_s)
        names = {t.native_id: t.name for t in threading.enumerate()}
        names[threading.main_thread().native_id] = "event loop"
        d0 = worker.counters()["outcomes"]["decoded"]
        c0, th0, w0, r0 = cpu_self(), thread_cpu(), time.monotonic(), rss_bytes()
        enc0 = state["client"].send_s, state["client"].packets
        read0 = probe.read_s, probe.read_n
        peak = r0
        while time.monotonic() < w0 + window_s:
            await asyncio.sleep(0.25)
            peak = max(peak, rss_bytes())
        c1, th1, w1 = cpu_self(), thread_cpu(), time.monotonic()
        d1 = worker.counters()["outcomes"]["decoded"]
        enc1 = state["client"].send_s, state["client"].packets
        read1 = probe.read_s, probe.read_n
        backend_cpu = backend.cpu_seconds()
        stop.set()
        feed_thread.join()
        await asyncio.sleep(0.5)  # let the pipeline drain what is in flight
        counters = worker.counters()
        running = rooms._rooms[GUILD]
        mixer_stats = running.mixer.stats()
        room = running.room
        sessions = [sp.session for sp in room.speakers.values() if sp.session is not None]
        opened = sum(sp.sessions_opened for sp in room.speakers.values())
        t_leave = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rooms.leave(GUILD), 30)
        leave_s = time.monotonic() - t_leave
        await rooms.close()  # its caps' checkpointer ends with it
        await store.close()

    wall = w1 - w0
    cpu = c1 - c0
    per_thread: dict[str, float] = collections.defaultdict(float)
    for tid, v in th1.items():
        name = names.get(tid, "other")
        if name.startswith("audio-player"):
            name = "audio player"
        per_thread[name] += v - th0.get(tid, v)
    offered_s = len(members) * wall
    audio_s = (d1 - d0) / 50  # speaker-seconds the bot actually processed (less than offered if it fell behind)
    chunk_bytes = chunk_ms * 48
    return {
        "cpu": {
            "window_wall_s": wall,
            "process_s": cpu,
            "per_speaker_second_ms": cpu / audio_s * 1000,
            "speakers_per_core": audio_s / cpu if cpu else None,
            "cores_used": cpu / wall,
            "speaker_seconds_offered": offered_s,
            "speaker_seconds_processed": audio_s,
            "kept_up": audio_s >= 0.97 * offered_s,
            "by_thread_s": {k: round(v, 3) for k, v in sorted(per_thread.items(), key=lambda x: -x[1])},
            "player_send_us_per_frame": (enc1[0] - enc0[0]) / max(1, enc1[1] - enc0[1]) * 1e6,
            "mixer_read_us_per_frame": (read1[0] - read0[0]) / max(1, read1[1] - read0[1]) * 1e6,
            "backend_process_s": backend_cpu,
        },
        "memory": {"rss_peak_bytes": peak},
        "delay_in": probe.way_in(members, chunk_bytes, w0),
        "delay_out": probe.way_out(w0),
        "health": {
            "feeder_max_late_ms": late[0] * 1000,
            "receive_outcomes": counters["outcomes"],
            "worker_overflow": counters["overflow"],
            "frames_dropped_listener": counters["frames_dropped"],
            "frames_dropped_speakers": room.frames_dropped,
            "sessions_opened": opened,
            "sessions_live_at_end": len(sessions),
            "mixer": {"underruns": mixer_stats.underruns, "samples_dropped": mixer_stats.samples_dropped,
                      "output_gaps": mixer_stats.output_gaps, "frames_mixed": mixer_stats.frames_mixed},
            "leave_s": leave_s,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speakers", type=int, default=8)
    ap.add_argument("--chunk-ms", type=int, default=200)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", help="write the result as JSON here (default: stdout)")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    result = run(args.speakers, args.chunk_ms, args.warmup, args.seconds)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
