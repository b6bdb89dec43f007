"""`DisnakeMember`: a person in the sandbox driven by disnake 2.12 + Discord's libdave (`dave-py`).

It is an independent witness for whole-process tests: it sends with disnake's own voice client (DAVE
encryption by libdave's `dave.Encryptor`), and receives with nothing from `bot/` — transport AEAD
decryption of the rtpsize layout (docs/protocols.md §3), libdave's `dave.Decryptor` per sender, and
libopus through `disnake.opus.Decoder`. If the bot and the sandbox agreed on a mistake, this client
would not share it.

Receive is hooked into disnake at three points, all in `_RecvVoiceClient`:
- the voice websocket gets a `hook` (disnake's `DiscordVoiceWebSocket(hook=...)`): op 5 SPEAKING maps
  SSRC → user, op 11/13 add and drop senders;
- `DaveState.execute_transition` is extended: after disnake sets its own encryption ratchet, every
  remote sender's decryptor moves to `session.get_key_ratchet(user_id)`;
- the UDP socket disnake opened (and reads only during IP discovery) gets an event-loop reader once the
  voice websocket is ready; the reader is removed before disnake closes or replaces the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import dave
import disnake
import disnake.http
import numpy as np
import soxr
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from disnake.gateway import DiscordVoiceWebSocket
from disnake.utils import MISSING
from disnake.voice_client import DaveState, VoiceClient
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from nacl.exceptions import CryptoError

log = logging.getLogger("tests.disnake_member")

RATE = 48_000  # what `heard()` returns: 48 kHz mono float32
FRAME_BYTES = 3840  # 20 ms of 48 kHz stereo s16le, what disnake's player reads per tick
OPUS_PAYLOAD_TYPE = 0x78
DAVE_MAGIC = b"\xfa\xfa"
PENDING_MAX = 250  # packets held per unknown SSRC (5 s) until its op 5 names the sender

AES_GCM = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"


class TransportError(ValueError):
    """A packet that does not parse or authenticate with our key."""


def open_packet(packet: bytes, mode: str, key: bytes) -> tuple[int, int, int, bytes]:
    """(sequence, timestamp, ssrc, payload) of one rtpsize packet: the RTP header (with the extension preamble)
    is the AEAD's associated data, the last 4 bytes are the nonce counter, and the extension body is skipped
    after decrypting. The payload is still DAVE-encrypted Opus."""
    if len(packet) < 12 + 16 + 4:
        raise TransportError("short packet")
    b0 = packet[0]
    if b0 >> 6 != 2:
        raise TransportError("not RTP v2")
    header_len = 12 + 4 * (b0 & 0x0F)
    ext_words = 0
    if b0 & 0x10:
        if len(packet) < header_len + 4 + 16 + 4:
            raise TransportError("short extension")
        ext_words = struct.unpack_from(">H", packet, header_len + 2)[0]
        header_len += 4
    aad, ciphertext, counter = packet[:header_len], packet[header_len:-4], packet[-4:]
    try:
        if mode == XCHACHA:
            plain = crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, counter + bytes(20), key)
        elif mode == AES_GCM:
            plain = AESGCM(key).decrypt(counter + bytes(8), ciphertext, aad)
        else:
            raise TransportError(f"mode {mode!r} not supported")
    except (CryptoError, InvalidTag) as exc:
        raise TransportError("authentication failed") from exc
    if len(plain) < ext_words * 4:
        raise TransportError("extension longer than payload")
    seq, ts, ssrc = struct.unpack_from(">HII", packet, 2)
    return seq, ts, ssrc, plain[ext_words * 4:]


@dataclass
class _Stream:
    """One SSRC's decoded audio, placed by RTP timestamp from the arrival of its first frame."""

    user_id: int
    decoder: disnake.opus.Decoder
    anchor: int = -1  # sample index on the receiver's clock where timestamp ts0 sits
    ts0: int = 0
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (sample offset from ts0, mono float32)


class VoiceReceiver:
    """Transport-decrypt → DAVE-decrypt → Opus-decode every packet the SFU relays to us.

    Keeps what it heard per sender on one clock (samples at 48 kHz since the receiver was created), so a
    test can ask for one person or the mix.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0 = clock()
        self.mode = ""
        self.key = b""
        self.self_ssrc: int | None = None
        self._ssrc_user: dict[int, int] = {}
        self._streams: dict[int, _Stream] = {}
        self._retired: list[_Stream] = []  # streams of senders who left: still part of what was heard
        self._pending: dict[int, list[tuple[float, int, int, bytes]]] = {}
        self._decryptors: dict[int, dave.Decryptor] = {}
        self._session: dave.Session | None = None
        self._passthrough = False
        self.stats: dict[str, int] = dict.fromkeys(
            ("packets", "ignored", "transport_failed", "e2ee_frames", "pending_dropped", "dave_decrypted",
             "passthrough", "dave_failed", "decoded", "decode_failed"), 0)

    # --- what the voice connection tells us --------------------------------------------------------

    def set_transport(self, mode: str, key: bytes) -> None:
        self.mode, self.key = mode, bytes(key)

    def map_ssrc(self, ssrc: int, user_id: int) -> None:
        """op 5: this SSRC is this user's; frames held for it are processed now."""
        if self._ssrc_user.get(ssrc) == user_id:
            return
        old = self._streams.pop(ssrc, None)
        if old is not None:
            self._retired.append(old)
        self._ssrc_user[ssrc] = user_id
        self._decryptor(user_id)
        for arrival, seq, ts, payload in self._pending.pop(ssrc, []):
            self._frame(ssrc, arrival, seq, ts, payload)

    def forget_user(self, user_id: int) -> None:
        """op 13: the sender left; keep its audio, drop its decoder and decryptor."""
        for ssrc in [s for s, u in self._ssrc_user.items() if u == user_id]:
            del self._ssrc_user[ssrc]
            stream = self._streams.pop(ssrc, None)
            if stream is not None:
                self._retired.append(stream)
        self._decryptors.pop(user_id, None)

    def refresh_ratchets(self, session: dave.Session, passthrough: bool) -> None:
        """After a DAVE transition: each sender's decryptor takes its new key ratchet (libdave's own pattern)."""
        self._session, self._passthrough = session, passthrough
        for user_id, decryptor in self._decryptors.items():
            self._set_ratchet(user_id, decryptor)

    def _decryptor(self, user_id: int) -> dave.Decryptor:
        decryptor = self._decryptors.get(user_id)
        if decryptor is None:
            decryptor = self._decryptors[user_id] = dave.Decryptor()
            self._set_ratchet(user_id, decryptor)
        return decryptor

    def _set_ratchet(self, user_id: int, decryptor: dave.Decryptor) -> None:
        if self._passthrough:
            decryptor.transition_to_passthrough_mode(True)
            return
        if self._session is None or not self._session.has_established_group():
            return
        ratchet = self._session.get_key_ratchet(str(user_id))
        if ratchet is not None:
            decryptor.transition_to_key_ratchet(ratchet)

    # --- packets ------------------------------------------------------------------------------------

    def packet(self, data: bytes) -> None:
        self.stats["packets"] += 1
        if len(data) < 12 or data[1] & 0x7F != OPUS_PAYLOAD_TYPE or not self.key:
            self.stats["ignored"] += 1  # keepalives, RTCP, IP discovery echoes, anything before op 4
            return
        try:
            seq, ts, ssrc, payload = open_packet(data, self.mode, self.key)
        except TransportError as exc:
            self.stats["transport_failed"] += 1
            log.debug("transport: %s", exc)
            return
        if ssrc == self.self_ssrc:
            self.stats["ignored"] += 1
            return
        arrival = self._clock()
        if ssrc not in self._ssrc_user:
            held = self._pending.setdefault(ssrc, [])
            if len(held) >= PENDING_MAX:
                held.pop(0)
                self.stats["pending_dropped"] += 1
            held.append((arrival, seq, ts, payload))
            return
        self._frame(ssrc, arrival, seq, ts, payload)

    def _frame(self, ssrc: int, arrival: float, seq: int, ts: int, payload: bytes) -> None:
        user_id = self._ssrc_user[ssrc]
        if payload.endswith(DAVE_MAGIC):
            self.stats["e2ee_frames"] += 1
        frame = self._decryptor(user_id).decrypt(dave.MediaType.audio, payload)
        if frame is not None:
            self.stats["dave_decrypted"] += 1
        elif payload.endswith(DAVE_MAGIC):
            self.stats["dave_failed"] += 1  # no key (yet) for this sender: a real client drops it too
            return
        else:
            frame = payload  # unencrypted (silence frames, transitions): DAVE passes these through
            self.stats["passthrough"] += 1
        stream = self._streams.get(ssrc)
        if stream is None:
            stream = self._streams[ssrc] = _Stream(user_id, disnake.opus.Decoder())
        try:
            pcm = stream.decoder.decode(frame, fec=False)
        except disnake.opus.OpusError:
            self.stats["decode_failed"] += 1
            return
        stereo = np.frombuffer(pcm, dtype="<i2").astype(np.float32).reshape(-1, 2)
        mono = stereo.mean(axis=1) / 32768.0
        if stream.anchor < 0:
            stream.anchor = round((arrival - self._t0) * RATE)
            stream.ts0 = ts
        offset = (ts - stream.ts0) & 0xFFFFFFFF
        if offset >= 1 << 31:
            return  # older than the stream's first frame (reordered): nothing to place it after
        stream.frames.append((offset, mono))
        self.stats["decoded"] += 1

    # --- what was heard -----------------------------------------------------------------------------

    def senders(self) -> set[int]:
        return {s.user_id for s in [*self._streams.values(), *self._retired] if s.frames}

    def heard(self, user_id: int | None = None) -> np.ndarray:
        """48 kHz mono float32 of `user_id` (or everyone, mixed) from the first frame heard of them."""
        streams = [s for s in [*self._retired, *self._streams.values()]
                   if s.frames and (user_id is None or s.user_id == user_id)]
        if not streams:
            return np.zeros(0, dtype=np.float32)
        start = min(s.anchor for s in streams)
        end = max(s.anchor + off + len(pcm) for s in streams for off, pcm in s.frames)
        out = np.zeros(end - start, dtype=np.float32)
        for s in streams:
            for off, pcm in s.frames:
                at = s.anchor - start + off
                out[at:at + len(pcm)] += pcm
        return np.clip(out, -1.0, 1.0)


class _RecvDaveState(DaveState):
    """disnake's DAVE state, plus: every executed transition re-keys our decryptors for the other senders."""

    def __init__(self, vc: _RecvVoiceClient) -> None:
        super().__init__(vc)
        self._receiver = vc.receiver

    def execute_transition(self, transition_id: int) -> None:
        version = self._prepared_transitions.get(transition_id)
        super().execute_transition(transition_id)
        if version is not None:
            self._receiver.refresh_ratchets(self._session, passthrough=version == self.DISABLED_VERSION)
            self.vc.dave_transitions += 1  # type: ignore[attr-defined]

    async def handle_mls_proposals(self, data: bytes) -> None:
        if not self.vc.leaving:  # type: ignore[attr-defined]
            await super().handle_mls_proposals(data)

    @property
    def established(self) -> bool:
        return self._session.has_established_group()


class _RecvVoiceClient(VoiceClient):
    """disnake's VoiceClient with a receive path; sending is disnake's own, untouched."""

    def __init__(self, client: disnake.Client, channel: Any) -> None:
        super().__init__(client, channel)
        self.receiver = VoiceReceiver()
        self.dave_transitions = 0
        self.leaving = False
        self.dave = _RecvDaveState(self)
        self._reading_fd: int | None = None

    async def connect_websocket(self, *, resume: bool = False) -> None:
        """disnake's own, with our hook on the voice websocket and our UDP reader once it is ready."""
        self._stop_reading()
        seq = self.ws.sequence if resume and self.ws is not MISSING else None
        self.ws = ws = await DiscordVoiceWebSocket.from_client(self, sequence=seq, resume=resume, hook=self._ws_hook)
        self._connected.clear()
        event = ws._resumed if resume else ws._ready
        while not event.is_set():
            await ws.poll_event()
        self.receiver.set_transport(self.mode, bytes(self.secret_key))
        self.receiver.self_ssrc = self.ssrc
        self._connected.set()
        self._start_reading()

    async def on_voice_server_update(self, data: Any) -> None:
        self._stop_reading()  # disnake closes and replaces the socket here
        await super().on_voice_server_update(data)

    async def disconnect(self, *, force: bool = False) -> None:
        self._stop_reading()
        await super().disconnect(force=force)

    async def _ws_hook(self, ws: DiscordVoiceWebSocket, msg: dict[str, Any]) -> None:
        op, data = msg.get("op"), msg.get("d") or {}
        if op == DiscordVoiceWebSocket.SPEAKING and "user_id" in data and "ssrc" in data:
            self.receiver.map_ssrc(int(data["ssrc"]), int(data["user_id"]))
        elif op == DiscordVoiceWebSocket.CLIENT_DISCONNECT and "user_id" in data:
            self.receiver.forget_user(int(data["user_id"]))

    def _start_reading(self) -> None:
        if self.socket and self._reading_fd is None:
            self._reading_fd = self.socket.fileno()
            self.loop.add_reader(self._reading_fd, self._readable)

    def _stop_reading(self) -> None:
        if self._reading_fd is not None:
            self.loop.remove_reader(self._reading_fd)
            self._reading_fd = None

    def _readable(self) -> None:
        for _ in range(64):  # drain what is queued without starving the loop
            try:
                data = self.socket.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("voice socket: %s", exc)
                self._stop_reading()
                return
            try:
                self.receiver.packet(data)
            except Exception:  # one bad packet must not kill the reader
                log.exception("receive failed")


class _PcmSource(disnake.AudioSource):
    """20 ms frames of 48 kHz stereo s16le from memory, for disnake's player to Opus-encode."""

    def __init__(self, pcm: bytes) -> None:
        self._pcm = pcm
        self._at = 0

    def read(self) -> bytes:
        chunk = self._pcm[self._at:self._at + FRAME_BYTES]
        self._at += FRAME_BYTES
        if not chunk:
            return b""
        return chunk.ljust(FRAME_BYTES, b"\0")

    def is_opus(self) -> bool:
        return False


def read_wav_48k_stereo(path: Path) -> bytes:
    """Any-rate 8/16/32-bit PCM WAV → 48 kHz stereo s16le (soxr), what disnake's player encodes."""
    with wave.open(str(path), "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV not supported")
    x = x.reshape(-1, channels)
    x = x.mean(axis=1, keepdims=True) if channels != 2 else x
    if rate != RATE:
        x = soxr.resample(x, rate, RATE)
    x = np.broadcast_to(x, (len(x), 2)) if x.shape[1] == 1 else x
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class DisnakeMember:
    """A person in the sandbox, driven by disnake: joins voice, speaks a WAV, records what it hears.

    `heard()` is 48 kHz mono float32. disnake's REST base is a class attribute (`Route.BASE`): every
    DisnakeMember in one process talks to the same sandbox.
    """

    def __init__(self, sandbox: Any, user: Any, *, tmpdir: Path) -> None:
        self.sandbox = sandbox
        self.user = user
        self.tmpdir = tmpdir
        self.client: disnake.Client | None = None
        self.voice: _RecvVoiceClient | None = None
        self._receivers: list[VoiceReceiver] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        """Log in through the sandbox's REST, find the gateway with /gateway/bot, wait for READY + guilds."""
        if not disnake.opus.is_loaded() and not disnake.opus._load_default():
            raise RuntimeError("libopus not found: disnake cannot encode or decode")
        disnake.http.Route.BASE = self.sandbox.api_base
        ctx = ssl.create_default_context(cafile=str(self.sandbox.tls.ca_file))
        # GUILD_CREATEs follow READY at once on localhost: disnake's default 2 s wait for more is dead time.
        self.client = disnake.Client(intents=disnake.Intents(guilds=True, voice_states=True),
                                     connector=aiohttp.TCPConnector(ssl=ctx), guild_ready_timeout=0.25)
        await self.client.login(self.user.token)
        self._task = asyncio.create_task(self.client.connect(reconnect=False), name=f"disnake {self.user.name}")
        ready = asyncio.create_task(self.client.wait_until_ready())
        try:
            done, _ = await asyncio.wait({ready, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        if self._task in done:
            self._task.result()  # raises what ended the gateway connection
            raise ConnectionError(f"{self.user.name}: gateway connection ended before READY")
        if not done:
            raise TimeoutError(f"{self.user.name}: no READY within {timeout} s")

    async def join(self, channel: Any, timeout: float = 10.0) -> None:
        """`VoiceChannel.connect()`; then, if anyone else is in the channel, wait until DAVE is keyed."""
        assert self.client is not None, "start() first"
        if self.voice is not None:
            await self.leave()
        ch = self.client.get_channel(int(getattr(channel, "id", channel)))
        if not isinstance(ch, disnake.VoiceChannel):
            raise LookupError(f"{channel!r} is not a voice channel {self.user.name} can see")
        self.voice = await ch.connect(cls=_RecvVoiceClient, timeout=timeout, reconnect=False)
        self._receivers.append(self.voice.receiver)
        if set(ch.voice_states) - {self.user.id}:
            await self.wait_dave(timeout)

    def dave_ready(self) -> bool:
        """Our encryptor has a ratchet from an established MLS group (what a lone member never gets)."""
        vc = self.voice
        return bool(vc and vc.dave and vc.dave.can_encrypt() and vc.dave.established)

    async def wait_dave(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.dave_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.user.name}: DAVE not ready within {timeout} s")
            await asyncio.sleep(0.02)

    async def speak(self, wav: Path, timeout: float | None = None) -> None:
        """Play `wav` through disnake's player (it Opus-encodes and DAVE-encrypts); return once it has played."""
        vc = self.voice
        assert vc is not None and vc.dave is not None, "join() first"
        if vc.dave._recognized_users - {self.user.id}:
            await self.wait_dave()  # otherwise the first frames go out unencrypted (passthrough)
        pcm = read_wav_48k_stereo(wav)
        loop = asyncio.get_running_loop()
        played: asyncio.Future[None] = loop.create_future()

        def after(error: Exception | None) -> None:  # runs on the player thread
            def settle() -> None:
                if played.done():
                    return
                if error is None:
                    played.set_result(None)
                else:
                    played.set_exception(error)
            loop.call_soon_threadsafe(settle)

        vc.play(_PcmSource(pcm), after=after)
        duration = len(pcm) / (RATE * 4)
        try:
            await asyncio.wait_for(played, timeout if timeout is not None else duration + 5.0)
        finally:
            vc.stop()

    def heard(self, user_id: int | None = None) -> np.ndarray:
        """48 kHz mono float32 received from `user_id` (or everyone mixed), decoded independently of bot/.

        Within one join, senders sit on one clock; audio from successive joins is concatenated."""
        parts = [r.heard(user_id) for r in self._receivers]
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def save_heard(self, user_id: int | None = None, name: str = "heard.wav") -> Path:
        """Write `heard(user_id)` as a 48 kHz mono s16 WAV under tmpdir: something to listen to when a test fails."""
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        path = self.tmpdir / name
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes((self.heard(user_id) * 32767.0).astype("<i2").tobytes())
        return path

    @property
    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self._receivers:
            for k, v in r.stats.items():
                total[k] = total.get(k, 0) + v
        return total

    async def leave(self) -> None:
        vc, self.voice = self.voice, None
        if vc is None:
            return
        vc.leaving = True  # from here on, MLS proposals are not answered (the commit would race our close)
        try:
            await vc.disconnect(force=True)
        finally:
            # disnake's voice-websocket poller is nobody's to await: collect it so nothing is left unretrieved.
            runner = vc._runner
            if runner is not MISSING and runner is not None:
                if not runner.done():
                    runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await runner

    async def close(self) -> None:
        try:
            await self.leave()
        finally:
            task, self._task = self._task, None
            try:
                if self.client is not None:
                    await self.client.close()
            finally:
                if task is not None:
                    if not task.done():
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
