"""The sandbox voice server against real peers: discord.py 2.7's VoiceClient, davey, libopus, `cryptography`.

No main gateway here: a tiny fake guild plays its part (VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE with a token
from `VoiceServer.grant`), everything below that is discord.py's own voice code over wss + UDP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import davey
import discord
import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from discord.voice_state import VoiceConnectionState

from bot.sandbox import dave
from bot.sandbox.sfu import AES_GCM, XCHACHA, Sfu, open_packet, seal
from bot.sandbox.tls import make_tls
from bot.sandbox.voice import VoiceServer

GUILD, CHANNEL = 700_000_000_000_000_001, 700_000_000_000_000_002
TONE_HZ = 440.0


# --- dave.py: framing and MLS pieces ------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 63, 64, 300, 16383, 16384, 70_000, (1 << 30) - 1])
def test_varint_round_trip(n: int) -> None:
    encoded = dave.encode_varint(n)
    assert len(encoded) == (1 if n < 64 else 2 if n < 16384 else 4)
    assert dave.decode_varint(encoded + b"tail") == (n, len(encoded))
    assert dave.Reader(dave.vec(b"x" * n if n < 20000 else b"")).vec() == (b"x" * n if n < 20000 else b"")


def test_frames() -> None:
    assert dave.encode_server_frame(0x1234, 25, b"ab") == b"\x12\x34\x19ab"
    assert dave.decode_server_frame(b"\x12\x34\x19ab") == (0x1234, 25, b"ab")
    assert dave.decode_client_frame(dave.encode_client_frame(26, b"kp")) == (26, b"kp")
    with pytest.raises(dave.MlsDecodeError):
        dave.decode_server_frame(b"\x00\x01")


def test_external_proposal_signature_verifies() -> None:
    """The Remove proposal is an RFC 9420 PublicMessage signed with SignWithLabel("FramedContentTBS")."""
    sender = dave.ExternalSender()
    pkg = dave.Reader(sender.package())
    public = pkg.vec()
    assert pkg.u16() == 1 and pkg.vec() == sender.identity and pkg.remaining == 0
    signed = sender.remove(dave.group_id_for(CHANNEL), 7, 3)
    r = dave.Reader(signed.message)
    assert (r.u16(), r.u16()) == (1, 1)
    assert r.vec() == struct.pack(">Q", CHANNEL)
    assert (r.u64(), r.u8(), r.u32()) == (7, 2, 0)
    assert r.vec() == b"" and r.u8() == 2
    assert (r.u16(), r.u32()) == (3, 3)
    content_end = r.pos
    signature = r.vec()
    assert r.remaining == 0
    tbs = signed.message[:content_end]  # version ‖ wire_format ‖ FramedContent
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
    key.verify(signature, dave.vec(b"MLS 1.0 FramedContentTBS") + dave.vec(tbs), ec.ECDSA(hashes.SHA256()))


def _session(user_id: int, sender: dave.ExternalSender) -> tuple[davey.DaveSession, bytes]:
    session = davey.DaveSession(1, user_id, CHANNEL)
    key_package = session.get_serialized_key_package()
    session.set_external_sender(sender.package())
    return session, key_package


def test_group_tracks_davey_leaves_and_splits_op28() -> None:
    """Adds, a Remove, and an Add into the blank: our leaf bookkeeping equals each davey member's own view."""
    sender = dave.ExternalSender()
    group = dave.DaveGroup(CHANNEL, sender)
    sessions: dict[int, davey.DaveSession] = {}
    packages: dict[int, bytes] = {}
    for uid in (1, 2, 3, 4, 5):
        sessions[uid], packages[uid] = _session(uid, sender)
    group.found(1)

    def cycle(adds: list[int], removes: list[int]) -> bytes:
        members = group.members
        payload = group.propose([(u, packages[u]) for u in adds], removes)
        assert payload[0] == 0
        expected = [*members, *adds]
        results = [
            sessions[u].process_proposals(davey.ProposalsOperationType.append, payload[1:], expected)
            for u in members
            if u not in removes
        ]
        winner = results[-1]
        assert winner is not None
        commit, welcome = dave.split_commit_welcome(winner.commit + (winner.welcome or b""))
        assert commit == winner.commit and welcome == winner.welcome
        outcome = group.apply_commit(commit)
        assert set(outcome.added) == set(adds) and set(outcome.removed) == set(removes)
        for u in members:
            if u not in removes:
                sessions[u].process_commit(commit)
        for u in adds:
            assert welcome is not None
            sessions[u].process_welcome(welcome)
        for u in group.members:
            assert sessions[u].ready and sessions[u].epoch == group.epoch
            assert sessions[u].own_leaf_index == group.leaf_of(u)
        return commit

    cycle([2], [])
    cycle([3, 4], [])
    cycle([], [2])
    assert group.leaves == [1, None, 3, 4]
    last = cycle([5], [])
    assert group.leaves == [1, 5, 3, 4] and group.epoch == 4
    frame = sessions[5].encrypt_opus(b"\xfc" + bytes(range(40)))
    assert frame.endswith(b"\xfa\xfa")
    assert sessions[3].decrypt(5, davey.MediaType.audio, frame) == b"\xfc" + bytes(range(40))
    with pytest.raises(dave.MlsDecodeError, match="epoch"):  # a stale commit (a late loser of a race)
        group.apply_commit(last)


# --- sfu.py: transport re-encryption, AES-GCM receiver --------------------------------------------


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    return sock


async def _recv(sock: socket.socket) -> bytes:
    return await asyncio.get_running_loop().run_in_executor(None, sock.recv, 2048)


async def test_sfu_reencrypts_for_an_aes_gcm_receiver() -> None:
    sfu = Sfu()
    await sfu.start()
    a, b, c = _udp(), _udp(), _udp()
    try:
        key_a, key_b = bytes(range(32)), bytes(range(32, 64))
        sfu.join(1, 111, (GUILD, CHANNEL))
        sfu.join(2, 222, (GUILD, CHANNEL))
        sfu.join(3, 333, (GUILD, CHANNEL + 1))  # another channel: must hear nothing
        for sock, ssrc in ((a, 111), (b, 222), (c, 333)):
            sock.sendto(struct.pack(">HHI", 1, 70, ssrc) + bytes(66), ("127.0.0.1", sfu.port))
            answer = await _recv(sock)
            assert len(answer) == 74 and answer[:2] == b"\x00\x02"
            assert answer[8 : answer.index(0, 8)] == b"127.0.0.1"
            assert struct.unpack(">H", answer[-2:])[0] == sock.getsockname()[1]
        sfu.set_session(1, GUILD, XCHACHA, key_a)
        sfu.set_session(2, GUILD, AES_GCM, key_b)
        sfu.set_session(3, GUILD, AES_GCM, key_b)
        # The sender uses a CSRC and its own header extension: both must be gone after relaying.
        header = bytes([0x91, 0x78]) + struct.pack(">HII", 5, 960, 111) + struct.pack(">I", 42)
        ext = b"\xbe\xde\x00\x02" + b"\x22\x01\x02\x00" + b"\x00\x00\x00\x00"
        aad, body = header + ext[:4], ext[4:] + b"opus-frame"
        a.sendto(b"\x00" * 8, ("127.0.0.1", sfu.port))  # a keepalive: ignored
        a.sendto(seal(XCHACHA, key_a, aad, body, 9), ("127.0.0.1", sfu.port))
        a.sendto(bytes([0x80, 0x78]) + struct.pack(">HII", 6, 1920, 111) + b"x" * 30, ("127.0.0.1", sfu.port))
        packet = await _recv(b)
        assert packet[0] == 0x90 and packet[12:16] == b"\xbe\xde\x00\x01"
        assert struct.unpack(">HII", packet[2:12]) == (5, 960, 111)
        assert packet[-4:] == b"\x00\x00\x00\x00"  # the receiver's own nonce counter starts at 0
        _, payload = open_packet(AES_GCM, key_b, packet)
        assert payload == b"opus-frame"
        await asyncio.sleep(0.05)
        counters = sfu.counters(1)
        assert (counters["packets_in"], counters["packets_out"], counters["dropped"]) == (2, 0, 1)
        assert counters["bytes_in"] > 80
        assert sfu.counters(2)["packets_out"] == 1 and sfu.counters(3)["packets_out"] == 0
        assert sfu.stats["keepalives"] == 1
        c.settimeout(0.1)
        with pytest.raises(TimeoutError):
            c.recv(2048)
    finally:
        for sock in (a, b, c):
            sock.close()
        sfu.close()


# --- the whole voice server against discord.py --------------------------------------------------


@dataclass
class Harness:
    """Plays the main gateway for discord.py VoiceClients: op 4 → VOICE_STATE_UPDATE + VOICE_SERVER_UPDATE."""

    server: VoiceServer
    session: aiohttp.ClientSession
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    clients: list[discord.VoiceClient] = field(default_factory=list)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def join(self, user_id: int) -> RecordingVoiceClient:
        harness = self
        user = SimpleNamespace(id=user_id, name=f"user{user_id}")
        http = SimpleNamespace(ws_connect=lambda url, compress=0: harness.session.ws_connect(url, compress=compress))
        state = SimpleNamespace(
            loop=asyncio.get_running_loop(), user=user, http=http, _remove_voice_client=lambda key: None
        )
        client = SimpleNamespace(_connection=state, loop=state.loop, user=user)
        guild = SimpleNamespace(id=GUILD, me=SimpleNamespace(voice=None))
        channel = SimpleNamespace(id=CHANNEL, guild=guild, _get_voice_client_key=lambda: (GUILD, "guild_id"))
        session_id = f"session-{user_id}"

        async def change_voice_state(*, channel: Any, self_deaf: bool = False, self_mute: bool = False) -> None:
            if channel is None:  # leaving: Discord confirms with VOICE_STATE_UPDATE(channel_id=null)

                async def left() -> None:
                    await asyncio.sleep(0.01)
                    await harness.server.revoke(GUILD, user_id)
                    await vc.on_voice_state_update({"channel_id": None, "session_id": session_id})

                harness.spawn(left())
                return
            token = harness.server.grant(GUILD, channel.id, user_id, session_id)

            async def dispatch() -> None:
                await asyncio.sleep(0.05)  # after discord.py starts waiting for these events, as over a network
                await vc.on_voice_state_update({"channel_id": channel.id, "session_id": session_id})
                await vc.on_voice_server_update(
                    {"token": token, "guild_id": str(GUILD), "endpoint": harness.server.endpoint}
                )

            harness.spawn(dispatch())

        guild.change_voice_state = change_voice_state
        vc = RecordingVoiceClient(client, channel)  # type: ignore[arg-type]
        self.clients.append(vc)
        await vc.connect(reconnect=False, timeout=10.0)
        return vc

    async def kick(self, vc: discord.VoiceClient) -> None:
        """What Discord does when a member is removed from voice: VOICE_STATE_UPDATE null, then close 4014."""
        await vc.on_voice_state_update({"channel_id": None, "session_id": vc.session_id})
        await self.server.revoke(GUILD, vc.user.id)


class RecordingVoiceClient(discord.VoiceClient):
    """discord.py's VoiceClient with a gateway hook recording JSON messages and a raw UDP tap."""

    def create_connection_state(self) -> VoiceConnectionState:
        self.messages: list[dict] = []
        self.packets: list[bytes] = []

        async def hook(ws: Any, msg: dict) -> None:
            self.messages.append(msg)

        return VoiceConnectionState(self, hook=hook)

    def tap(self) -> None:
        self._connection.add_socket_listener(self.packets.append)

    def ops(self, op: int) -> list[dict]:
        return [m for m in self.messages if m["op"] == op]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    tls = make_tls(tmp_path / "tls")
    events: list[tuple[str, dict]] = []
    server = VoiceServer(tls.server_context(), on_event=lambda name, data: events.append((name, data)))
    await server.start()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context()))
    h = Harness(server, session)
    h.events = events  # type: ignore[attr-defined]
    try:
        yield h
    finally:
        for vc in h.clients:
            if vc.is_connected():
                await vc.disconnect(force=True)
        for task in list(h.tasks):
            task.cancel()
        await asyncio.gather(*h.tasks, return_exceptions=True)
        await server.close()
        await session.close()


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


def _tone(seconds: float) -> bytes:
    t = np.arange(int(48_000 * seconds)) / 48_000
    mono = (np.sin(2 * np.pi * TONE_HZ * t) * 12_000).astype("<i2")
    return np.repeat(mono, 2).tobytes()


async def _play(vc: discord.VoiceClient, seconds: float = 0.6) -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    vc.play(discord.PCMAudio(io.BytesIO(_tone(seconds))), after=lambda _: loop.call_soon_threadsafe(done.set))
    await asyncio.wait_for(done.wait(), 5.0)
    await asyncio.sleep(0.1)


def _heard(receiver: RecordingVoiceClient, sender: discord.VoiceClient) -> np.ndarray:
    """Transport-decrypt with the receiver's key, DAVE-decrypt with its session, decode Opus: the PCM heard."""
    key = bytes(receiver.secret_key)
    decoder = discord.opus.Decoder()
    pcm = []
    for packet in receiver.packets:
        if len(packet) < 12 or packet[1] != 0x78 or struct.unpack_from(">I", packet, 8)[0] != sender.ssrc:
            continue
        _, frame = open_packet(receiver.mode, key, packet)
        opus = receiver._connection.dave_session.decrypt(sender.user.id, davey.MediaType.audio, frame)
        pcm.append(decoder.decode(opus))
    receiver.packets.clear()
    samples = np.frombuffer(b"".join(pcm), "<i2").astype(float)
    return samples[::2]


def _assert_tone(samples: np.ndarray) -> None:
    assert len(samples) > 48_000 * 0.3, f"heard only {len(samples)} samples"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = np.fft.rfftfreq(len(samples), 1 / 48_000)[int(np.argmax(spectrum))]
    assert abs(peak - TONE_HZ) < 5, peak
    freqs = np.fft.rfftfreq(len(samples), 1 / 48_000)
    band = np.abs(freqs - TONE_HZ) < 20
    assert (spectrum[band] ** 2).sum() > 0.9 * (spectrum**2).sum()  # the tone, not noise or garbage


def _dave_ready(*clients: discord.VoiceClient) -> bool:
    return all(vc._connection.dave_session is not None and vc._connection.dave_session.ready for vc in clients)


async def test_two_clients_hear_each_other_through_dave_then_a_third_then_a_kick(harness: Harness) -> None:
    server = harness.server
    a = await harness.join(1001)
    b = await harness.join(1002)
    assert sorted(server.members(GUILD, CHANNEL)) == [1001, 1002]
    assert a.mode == b.mode == XCHACHA
    await _until(lambda: _dave_ready(a, b))
    assert server.dave_epoch(GUILD, CHANNEL) == 1
    # CLIENTS_CONNECT both ways, SPEAKING relayed with user_id, EXECUTE_TRANSITION after the commit.
    await _until(lambda: any(m["d"].get("user_ids") == ["1002"] for m in a.ops(11)))
    assert any(m["d"].get("user_ids") == ["1001"] for m in b.ops(11))
    await _until(lambda: any(m["d"].get("user_id") == "1001" for m in b.ops(5)))
    # op 22 follows every member's op 23, which races SPEAKING: wait for it rather than assume the order.
    await _until(lambda: bool(a.ops(22) and b.ops(22)))
    assert all("seq" in m for m in a.messages if m["op"] != 8)

    b.tap()
    await _play(a)
    _assert_tone(_heard(b, a))
    assert server.counters(1001)["packets_in"] >= 25 and server.counters(1002)["packets_out"] >= 25

    c = await harness.join(1003)
    await _until(lambda: _dave_ready(c) and server.dave_epoch(GUILD, CHANNEL) == 2 and len(a.ops(22)) >= 2)
    await _until(lambda: len(b.ops(22)) >= 2 and len(c.ops(22)) >= 1)
    assert [a._connection.dave_session.epoch, b._connection.dave_session.epoch, c._connection.dave_session.epoch] == [
        2,
        2,
        2,
    ]
    assert server.stats.get("late_commits", 0) >= 1  # a and b both committed; b or a processed the winner's
    c.tap()
    await _play(a)
    _assert_tone(_heard(b, a))
    _assert_tone(_heard(c, a))

    await harness.kick(c)
    await _until(lambda: any(m["d"].get("user_id") == "1003" for m in a.ops(13)))
    assert any(m["d"].get("user_id") == "1003" for m in b.ops(13))
    await _until(lambda: server.dave_epoch(GUILD, CHANNEL) == 3 and len(a.ops(22)) >= 3 and len(b.ops(22)) >= 3)
    commits = [d for name, d in harness.events if name == "commit"]  # type: ignore[attr-defined]
    assert commits[-1]["removed"] == [1003]
    assert sorted(server.members(GUILD, CHANNEL)) == [1001, 1002]
    assert a._connection.dave_session.epoch == b._connection.dave_session.epoch == 3
    await _play(a)
    _assert_tone(_heard(b, a))


async def test_bad_token_is_refused(harness: Harness) -> None:
    harness.server.grant(GUILD, CHANNEL, 42, "s")
    ws = await harness.session.ws_connect(f"wss://{harness.server.endpoint}/?v=8")
    hello = await ws.receive_json()
    assert hello["op"] == 8 and hello["d"]["heartbeat_interval"] > 0
    await ws.send_json({"op": 0, "d": {"server_id": str(GUILD), "user_id": "42", "session_id": "s", "token": "no"}})
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4004
    await ws.close()


# --- discord.js (@discordjs/voice 0.19 + @snazzah/davey): the peer that negotiates AES-GCM ------------

DJS_MEMBER = r"""
const { joinVoiceChannel, VoiceConnectionStatus, entersState, createAudioPlayer, createAudioResource, StreamType,
        EndBehaviorType, AudioPlayerStatus } = require('@discordjs/voice');
const { Readable } = require('node:stream');
const fs = require('node:fs');
const readline = require('node:readline');
const env = process.env;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const connection = joinVoiceChannel({
  channelId: env.CHANNEL_ID, guildId: env.GUILD_ID, selfDeaf: false,
  adapterCreator: (methods) => ({
    sendPayload: () => {
      setImmediate(() => {
        methods.onVoiceStateUpdate({ guild_id: env.GUILD_ID, channel_id: env.CHANNEL_ID, user_id: env.USER_ID,
                                     session_id: env.SESSION_ID, deaf: false, mute: false, self_deaf: false,
                                     self_mute: false, suppress: false });
        methods.onVoiceServerUpdate({ token: env.TOKEN, guild_id: env.GUILD_ID, endpoint: env.ENDPOINT });
      });
      return true;
    },
    destroy: () => {},
  }),
});
const packets = [];
let player = null;
(async () => {
  await entersState(connection, VoiceConnectionStatus.Ready, 10000);
  const net = connection.state.networking.state;
  out({ event: 'ready', mode: net.connectionData.encryptionMode });
})().catch((e) => { out({ event: 'error', error: String(e) }); process.exit(1); });
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  const cmd = JSON.parse(line);
  try {
    if (cmd.cmd === 'dave') {
      const dave = connection.state.networking.state.dave;
      out({ event: 'dave', ready: Boolean(dave && dave.session && dave.session.ready),
            epoch: dave && dave.session ? Number(dave.session.epoch) : null });
    } else if (cmd.cmd === 'listen') {
      const stream = connection.receiver.subscribe(cmd.user, { end: { behavior: EndBehaviorType.Manual } });
      stream.on('data', (p) => packets.push(p.toString('base64')));
      stream.on('error', (e) => out({ event: 'stream_error', error: String(e) }));
      out({ event: 'listening' });
    } else if (cmd.cmd === 'dump') {
      out({ event: 'packets', packets: packets.splice(0) });
    } else if (cmd.cmd === 'play') {
      const frames = fs.readFileSync(cmd.file, 'utf8').trim().split('\n').map((b) => Buffer.from(b, 'base64'));
      player = createAudioPlayer();
      connection.subscribe(player);
      player.play(createAudioResource(Readable.from(frames, { objectMode: true }), { inputType: StreamType.Opus }));
      await entersState(player, AudioPlayerStatus.Playing, 5000);
      await entersState(player, AudioPlayerStatus.Idle, 10000);
      out({ event: 'played', frames: frames.length });
    } else if (cmd.cmd === 'leave') {
      connection.destroy();
      out({ event: 'left' });
      setTimeout(() => process.exit(0), 50);
    }
  } catch (e) {
    out({ event: 'error', error: String(e) });
  }
});
"""


NODE_MODULES = Path(__file__).resolve().parents[2] / ".node" / "node_modules"  # `make test` installs it there
DJS_NODE = (22, 12)  # @discordjs/voice 0.19's engines.node


def _find_node() -> tuple[str, str] | str:
    """(node binary, node_modules holding @discordjs/voice), or why the discord.js witness is skipped.

    node_modules: PARLEY_NODE_PATH, else .node/node_modules (`make node-deps`, from tests/sandbox/node).
    node: the Node 24 that package installs (node_modules/.bin/node), else the one on PATH.
    """
    modules = Path(os.environ.get("PARLEY_NODE_PATH") or NODE_MODULES)
    if not (modules / "@discordjs" / "voice").is_dir():
        return f"no @discordjs/voice in {modules}: run `make node-deps` (needs npm) or set PARLEY_NODE_PATH"
    node = modules / ".bin" / "node"
    binary = str(node) if node.is_file() else shutil.which("node")
    if binary is None:
        return f"no node binary in {modules / '.bin'} or on PATH"
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        found = tuple(int(x) for x in version.lstrip("v").split(".")[:2])
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return f"{binary} --version failed: {e}"
    if found < DJS_NODE:
        return f"{binary} is {version}; @discordjs/voice 0.19 needs Node >= {'.'.join(map(str, DJS_NODE))}"
    return binary, str(modules)


NODE = _find_node()


class NodeMember:
    """A discord.js member in a node subprocess, driven by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def expect(self, event: str, timeout: float = 10.0) -> dict:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise AssertionError(f"node exited waiting for {event}")
            msg = json.loads(line)
            if msg.get("event") == "error":
                raise AssertionError(msg["error"])
            if msg.get("event") == event:
                return msg


@pytest.mark.skipif(isinstance(NODE, str), reason=NODE if isinstance(NODE, str) else "")
async def test_discord_js_negotiates_aes_gcm_and_both_directions_decode(harness: Harness, tmp_path: Path) -> None:
    server = harness.server
    assert not isinstance(NODE, str)
    node_binary, node_modules = NODE
    a = await harness.join(1001)
    script = tmp_path / "member.js"
    script.write_text(DJS_MEMBER)
    user_id = 2001
    token = server.grant(GUILD, CHANNEL, user_id, "djs-session")
    env = {
        **os.environ,
        "NODE_PATH": node_modules,
        "NODE_EXTRA_CA_CERTS": str(tmp_path / "tls" / "ca.pem"),
        "GUILD_ID": str(GUILD),
        "CHANNEL_ID": str(CHANNEL),
        "USER_ID": str(user_id),
        "SESSION_ID": "djs-session",
        "TOKEN": token,
        "ENDPOINT": server.endpoint,
    }
    proc = await asyncio.create_subprocess_exec(
        node_binary, str(script), env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    node = NodeMember(proc)
    try:
        ready = await node.expect("ready")
        assert ready["mode"] == AES_GCM  # preferred when offered: the SFU's AES path with a real peer
        await _until(lambda: _dave_ready(a) and server.dave_epoch(GUILD, CHANNEL) == 1)
        await node.send(cmd="dave")
        assert (await node.expect("dave"))["ready"]

        # discord.py (XChaCha) → SFU → discord.js (AES-GCM): discord.js strips transport + DAVE itself.
        await node.send(cmd="listen", user=str(a.user.id))
        await node.expect("listening")
        await _play(a)
        await node.send(cmd="dump")
        opus = [base64.b64decode(p) for p in (await node.expect("packets"))["packets"]]
        decoder = discord.opus.Decoder()
        heard = np.frombuffer(b"".join(decoder.decode(p) for p in opus), "<i2").astype(float)[::2]
        _assert_tone(heard)

        # discord.js (AES-GCM, DAVE via @snazzah/davey) → SFU → discord.py (XChaCha), decrypted here with davey.
        encoder = discord.opus.Encoder()
        pcm = _tone(0.6)
        frames = [encoder.encode(pcm[i : i + 3840], 960) for i in range(0, len(pcm) - 3839, 3840)]
        opus_file = tmp_path / "tone.opus.b64"
        opus_file.write_text("\n".join(base64.b64encode(f).decode() for f in frames))
        a.tap()
        await node.send(cmd="play", file=str(opus_file))
        await node.expect("played")
        await asyncio.sleep(0.1)
        b_ssrc = next(int(m["d"]["ssrc"]) for m in a.ops(5) if m["d"].get("user_id") == str(user_id))
        sender = SimpleNamespace(ssrc=b_ssrc, user=SimpleNamespace(id=user_id))
        _assert_tone(_heard(a, sender))  # type: ignore[arg-type]
        assert server.counters(user_id)["dropped"] == 0 and server.sfu.stats["keepalives"] >= 1

        await node.send(cmd="leave")
        await node.expect("left")
        await _until(lambda: any(m["d"].get("user_id") == str(user_id) for m in a.ops(13)))
        await _until(lambda: server.dave_epoch(GUILD, CHANNEL) == 2)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_new_grant_closes_the_previous_connection_with_4014(harness: Harness) -> None:
    """Moving channels: the main gateway grants again and the old voice websocket is closed as Discord does."""
    server = harness.server
    token = server.grant(GUILD, CHANNEL, 42, "s")
    ws = await harness.session.ws_connect(f"wss://{server.endpoint}/?v=8")
    assert (await ws.receive_json())["op"] == 8
    identify = {"server_id": str(GUILD), "user_id": "42", "session_id": "s", "token": token}
    await ws.send_json({"op": 0, "d": {**identify, "max_dave_protocol_version": 1}})
    ready = await ws.receive_json()
    assert ready["op"] == 2 and ready["d"]["port"] == server.sfu.port and ready["d"]["ip"] == "127.0.0.1"
    assert ready["d"]["modes"] == [AES_GCM, XCHACHA] and ready["seq"] == 1
    await ws.send_json({"op": 3, "d": {"t": 123, "seq_ack": 1}})
    assert (await ws.receive_json())["d"] == {"t": 123}
    assert server.members(GUILD, CHANNEL) == [42]
    server.grant(GUILD, CHANNEL + 1, 42, "s")
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4014
    await ws.close()
    await _until(lambda: server.members(GUILD, CHANNEL) == [])
