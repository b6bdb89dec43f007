"""The sandbox's voice server: Discord voice gateway v8 over wss, DAVE delivery service, and the UDP SFU.

Real client libraries (discord.py, disnake + libdave, discord.js) connect to it unchanged, so it follows the
message order they were observed to need (docs/protocols.md §4): HELLO, IDENTIFY, READY, IP discovery,
SELECT_PROTOCOL, SESSION_DESCRIPTION, then CLIENTS_CONNECT / SPEAKING relays and the MLS commit cycle
(op 27 proposals → op 28 commit‖welcome → op 29/30 → op 23 ready → op 22 execute), one cycle at a time
per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bot.sandbox import dave
from bot.sandbox.sfu import SUPPORTED_MODES, Sfu

log = logging.getLogger(__name__)

# JSON opcodes (Discord voice gateway v8).
IDENTIFY = 0
SELECT_PROTOCOL = 1
READY = 2
HEARTBEAT = 3
SESSION_DESCRIPTION = 4
SPEAKING = 5
HEARTBEAT_ACK = 6
RESUME = 7
HELLO = 8
CLIENTS_CONNECT = 11
CLIENT_CONNECT = 12
CLIENT_DISCONNECT = 13

CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_SESSION_INVALID = 4006
CLOSE_SESSION_TIMEOUT = 4009
CLOSE_DISCONNECTED = 4014
CLOSE_UNKNOWN_MODE = 4016

HEARTBEAT_INTERVAL_MS = 13_750
OUTBOX_SIZE = 512
COMMIT_TIMEOUT = 10.0  # no commit for our proposals in this long: propose again
READY_TIMEOUT = 5.0  # members that have not said op 23 by then get op 22 anyway

Room = tuple[int, int]


@dataclass
class _Grant:
    guild_id: int
    channel_id: int
    user_id: int
    session_id: str
    token: str
    speak: bool = True  # the Speak permission: without it Discord forwards none of the member's audio


@dataclass(eq=False)
class _Conn:
    """One voice websocket, from IDENTIFY on."""

    ws: web.WebSocketResponse
    grant: _Grant
    ssrc: int
    outbox: asyncio.Queue[tuple[str, Any] | None] = field(default_factory=lambda: asyncio.Queue(OUTBOX_SIZE))
    seq: int = 0
    seq_ack: int = -1
    described: bool = False  # SESSION_DESCRIPTION sent: announced to the room, receives media
    dave_version: int = 0
    speaking: int | None = None
    closing: bool = False
    close_code: int = CLOSE_DISCONNECTED

    @property
    def user_id(self) -> int:
        return self.grant.user_id

    @property
    def room(self) -> Room:
        return (self.grant.guild_id, self.grant.channel_id)


@dataclass(eq=False)
class _Channel:
    """A room's DAVE state: the MLS group and the one commit cycle that may be in flight."""

    group: dave.DaveGroup
    pending_adds: dict[int, bytes] = field(default_factory=dict)  # user → key package
    pending_removes: set[int] = field(default_factory=set)
    phase: str = "idle"  # idle | commit | ready
    waiting: set[int] = field(default_factory=set)  # op 27 recipients, or op 23 owed
    transition_id: int = 0
    transition_members: set[int] = field(default_factory=set)
    deadline: asyncio.TimerHandle | None = None


class VoiceServer:
    """Voice gateway + SFU for the sandbox; the main gateway calls `grant` / `revoke`."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        modes: Sequence[str] = ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"),
        on_event: Callable[[str, dict], None] | None = None,
    ) -> None:
        unknown = [m for m in modes if m not in SUPPORTED_MODES]
        if unknown:
            raise ValueError(f"unsupported modes {unknown}")
        self._ssl = ssl_context
        self._host = host
        self.modes = list(modes)
        self._on_event = on_event
        self.sfu = Sfu()
        self.sender = dave.ExternalSender()
        self._grants: dict[tuple[int, int], _Grant] = {}  # (guild, user) → latest grant
        self._conns: dict[tuple[int, int], _Conn] = {}  # (guild, user) → identified connection
        self._channels: dict[Room, _Channel] = {}
        self._transitions = dave.TransitionIds()
        self._next_ssrc = secrets.randbelow(1 << 20) + 1000
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self.stats: dict[str, int] = {"event_errors": 0, "bad_commits": 0, "invalid_commit_welcome": 0}

    # --- lifecycle ---

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0, ssl_context=self._ssl)
        await site.start()
        self._port = self._runner.addresses[0][1]
        await self.sfu.start(self._host)

    @property
    def endpoint(self) -> str:
        return f"{self._host}:{self._port}"

    async def close(self) -> None:
        await asyncio.gather(*(self._close_conn(conn, 1001) for conn in list(self._conns.values())))
        for channel in self._channels.values():
            if channel.deadline:
                channel.deadline.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self.sfu.close()

    # --- the main gateway's side ---

    def grant(self, guild_id: int, channel_id: int, user_id: int, session_id: str, *, speak: bool = True) -> str:
        old = self._conns.get((guild_id, user_id))
        token = secrets.token_hex(16)
        self._grants[(guild_id, user_id)] = _Grant(guild_id, channel_id, user_id, session_id, token, speak)
        if old is not None:
            self._spawn(self._close_conn(old, CLOSE_DISCONNECTED))
        return token

    async def revoke(self, guild_id: int, user_id: int, code: int = CLOSE_DISCONNECTED) -> None:
        self._grants.pop((guild_id, user_id), None)
        conn = self._conns.get((guild_id, user_id))
        if conn is not None:
            await self._close_conn(conn, code)

    def members(self, guild_id: int, channel_id: int) -> list[int]:
        return [c.user_id for c in self._conns.values() if c.room == (guild_id, channel_id)]

    def counters(self, user_id: int) -> dict[str, int]:
        return self.sfu.counters(user_id)

    def dave_epoch(self, guild_id: int, channel_id: int) -> int | None:
        """The room's MLS epoch as the delivery service tracks it (None before any group)."""
        channel = self._channels.get((guild_id, channel_id))
        return channel.group.epoch if channel and channel.group.leaves else None

    def dave_leaves(self, guild_id: int, channel_id: int) -> list[int | None]:
        channel = self._channels.get((guild_id, channel_id))
        return list(channel.group.leaves) if channel else []

    # --- plumbing ---

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("voice server task failed", exc_info=task.exception())

    def _event(self, name: str, data: dict) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(name, data)
        except Exception:
            self.stats["event_errors"] += 1
            log.exception("on_event(%s) failed", name)

    def _send(self, conn: _Conn, op: int, data: Any) -> None:
        self._enqueue(conn, ("json", {"op": op, "d": data}))

    def _send_binary(self, conn: _Conn, op: int, payload: bytes) -> None:
        self._enqueue(conn, ("binary", (op, payload)))

    def _enqueue(self, conn: _Conn, item: tuple[str, Any]) -> None:
        if conn.closing:
            return
        try:
            conn.outbox.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("voice client %s is not reading; closing it", conn.user_id)
            self._spawn(self._close_conn(conn, CLOSE_SESSION_TIMEOUT))

    async def _writer(self, conn: _Conn) -> None:
        """Sole writer of `conn.ws`: numbers every server message (JSON `seq`, binary u16) in send order."""
        while (item := await conn.outbox.get()) is not None:
            kind, body = item
            conn.seq += 1
            if kind == "json":
                await conn.ws.send_str(json.dumps({**body, "seq": conn.seq}))
            else:
                op, payload = body
                await conn.ws.send_bytes(dave.encode_server_frame(conn.seq, op, payload))

    async def _close_conn(self, conn: _Conn, code: int) -> None:
        if conn.closing:
            return
        conn.closing, conn.close_code = True, code
        with contextlib.suppress(asyncio.QueueFull):
            conn.outbox.put_nowait(None)
        await conn.ws.close(code=code)

    # --- the websocket ---

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(receive_timeout=2.5 * HEARTBEAT_INTERVAL_MS / 1000, max_msg_size=1 << 20)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": HELLO, "d": {"v": 8, "heartbeat_interval": HEARTBEAT_INTERVAL_MS}}))
        conn: _Conn | None = None
        writer: asyncio.Task[None] | None = None
        try:
            conn = await self._identify(ws)
            if conn is None:
                return ws
            writer = asyncio.get_running_loop().create_task(self._writer(conn))
            self._ready(conn)
            await self._read(conn)
        except TimeoutError:
            if not ws.closed:
                await ws.close(code=CLOSE_SESSION_TIMEOUT)
        finally:
            if conn is not None:
                self._disconnected(conn)
                if not ws.closed:
                    await ws.close(code=conn.close_code)
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await writer
        return ws

    async def _identify(self, ws: web.WebSocketResponse) -> _Conn | None:
        """Wait for op 0 (answering early heartbeats); None after closing a bad or failed handshake."""
        while True:
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    await ws.close(code=CLOSE_NOT_AUTHENTICATED)
                return None
            try:
                payload = json.loads(msg.data)
                op, data = payload["op"], payload.get("d")
            except (ValueError, KeyError, TypeError):
                await ws.close(code=CLOSE_DECODE_ERROR)
                return None
            if op == HEARTBEAT:
                await ws.send_str(json.dumps({"op": HEARTBEAT_ACK, "d": _heartbeat_ack(data)}))
                continue
            if op == RESUME:  # sessions do not survive here: the client starts over
                await ws.close(code=CLOSE_SESSION_INVALID)
                return None
            if op != IDENTIFY:
                await ws.close(code=CLOSE_NOT_AUTHENTICATED)
                return None
            try:
                guild_id, user_id = int(data["server_id"]), int(data["user_id"])
                grant = self._grants.get((guild_id, user_id))
                ok = grant is not None and grant.token == data["token"] and grant.session_id == data["session_id"]
                max_dave = int(data.get("max_dave_protocol_version") or 0)
            except (KeyError, TypeError, ValueError):
                await ws.close(code=CLOSE_DECODE_ERROR)
                return None
            if not ok or grant is None:
                await ws.close(code=CLOSE_AUTHENTICATION_FAILED)
                return None
            old = self._conns.get((guild_id, user_id))
            if old is not None:
                await self._close_conn(old, CLOSE_DISCONNECTED)
                self._disconnected(old)
            self._next_ssrc += 1
            conn = _Conn(ws, grant, self._next_ssrc, dave_version=1 if max_dave >= 1 else 0)
            self._conns[(guild_id, user_id)] = conn
            self.sfu.join(user_id, conn.ssrc, conn.room, speak=grant.speak)
            self._event("identified", {"guild_id": guild_id, "channel_id": grant.channel_id, "user_id": user_id})
            return conn

    def _ready(self, conn: _Conn) -> None:
        self._send(
            conn,
            READY,
            {
                "ssrc": conn.ssrc,
                "ip": self._host,
                "port": self.sfu.port,
                "modes": self.modes,
                "heartbeat_interval": HEARTBEAT_INTERVAL_MS,
                "experiments": [],
                "streams": [],
            },
        )

    async def _read(self, conn: _Conn) -> None:
        ws = conn.ws
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    payload = json.loads(msg.data)
                    op, data = payload["op"], payload.get("d")
                except (ValueError, KeyError, TypeError):
                    conn.close_code = CLOSE_DECODE_ERROR
                    return
                if not self._on_json(conn, op, data):
                    return
            elif msg.type == WSMsgType.BINARY:
                try:
                    op, body = dave.decode_client_frame(msg.data)
                except dave.MlsDecodeError:
                    conn.close_code = CLOSE_DECODE_ERROR
                    return
                self._on_binary(conn, op, body)
            else:
                return

    def _on_json(self, conn: _Conn, op: int, data: Any) -> bool:
        """Handle one client message; False closes the connection (with `conn.close_code`)."""
        if op == HEARTBEAT:
            if isinstance(data, dict) and isinstance(data.get("seq_ack"), int):
                conn.seq_ack = data["seq_ack"]
            self._send(conn, HEARTBEAT_ACK, _heartbeat_ack(data))
        elif op == SELECT_PROTOCOL:
            return self._select_protocol(conn, data)
        elif op == SPEAKING:
            self._speaking(conn, data)
        elif op == dave.TRANSITION_READY:
            self._transition_ready(conn, int((data or {}).get("transition_id", 0)))
        elif op == dave.MLS_INVALID_COMMIT_WELCOME:
            # The client resets and sends a fresh key package (op 26); that re-adds it.
            self.stats["invalid_commit_welcome"] += 1
            self._event("invalid_commit_welcome", {"user_id": conn.user_id, "data": data})
            self._transition_ready(conn, int((data or {}).get("transition_id", 0)))
        elif op == IDENTIFY:
            conn.close_code = CLOSE_ALREADY_AUTHENTICATED
            return False
        elif op in (CLIENT_CONNECT, 15, 16, 18, 20):  # client info / video / platform hints: nothing to do
            pass
        else:
            conn.close_code = CLOSE_UNKNOWN_OPCODE
            return False
        return True

    def _select_protocol(self, conn: _Conn, data: Any) -> bool:
        try:
            inner = data["data"]
            mode, address, port = inner["mode"], str(inner["address"]), int(inner["port"])
        except (KeyError, TypeError, ValueError):
            conn.close_code = CLOSE_DECODE_ERROR
            return False
        if mode not in self.modes:
            conn.close_code = CLOSE_UNKNOWN_MODE
            return False
        key = dave.new_secret_key()
        self.sfu.set_session(conn.user_id, conn.room[0], mode, bytes(key), (address, port))
        first = not conn.described
        conn.described = True
        self._send(
            conn,
            SESSION_DESCRIPTION,
            {
                "mode": mode,
                "secret_key": key,
                "audio_codec": "opus",
                "video_codec": "H264",
                "media_session_id": secrets.token_hex(16),
                "dave_protocol_version": conn.dave_version,
            },
        )
        if first:
            self._announce(conn)
        return True

    def _room_conns(self, room: Room, *, described: bool = True) -> list[_Conn]:
        return [c for c in self._conns.values() if c.room == room and (c.described or not described)]

    def _announce(self, conn: _Conn) -> None:
        """op 11 both ways and the newcomer's view of who speaks with which SSRC (libdave checks op 11)."""
        others = [c for c in self._room_conns(conn.room) if c is not conn and not c.closing]
        if others:
            self._send(conn, CLIENTS_CONNECT, {"user_ids": [str(c.user_id) for c in others]})
        for other in others:
            self._send(other, CLIENTS_CONNECT, {"user_ids": [str(conn.user_id)]})
            if other.speaking is not None:
                self._send(
                    conn, SPEAKING, {"user_id": str(other.user_id), "ssrc": other.ssrc, "speaking": other.speaking}
                )
        self._event("session", {"user_id": conn.user_id, "ssrc": conn.ssrc, "room": conn.room})

    def _speaking(self, conn: _Conn, data: Any) -> None:
        try:
            conn.speaking = int(data.get("speaking", 0))
        except (AttributeError, TypeError, ValueError):
            return
        for other in self._room_conns(conn.room):
            if other is not conn:
                self._send(
                    other, SPEAKING, {"user_id": str(conn.user_id), "ssrc": conn.ssrc, "speaking": conn.speaking}
                )

    def _disconnected(self, conn: _Conn) -> None:
        """Forget a connection once (op 13 to the room, MLS Remove, stop relaying)."""
        key = (conn.grant.guild_id, conn.user_id)
        if self._conns.get(key) is not conn:
            return
        del self._conns[key]
        conn.closing = True
        self.sfu.leave(conn.user_id, conn.room[0])
        for other in self._room_conns(conn.room):
            self._send(other, CLIENT_DISCONNECT, {"user_id": str(conn.user_id)})
        channel = self._channels.get(conn.room)
        if channel is not None:
            channel.pending_adds.pop(conn.user_id, None)
            if conn.user_id in channel.group.leaves:
                channel.pending_removes.add(conn.user_id)
            channel.waiting.discard(conn.user_id)
            channel.transition_members.discard(conn.user_id)
            if channel.phase == "commit" and not channel.waiting:
                channel.phase = "idle"  # nobody left to commit our proposals: propose again to who remains
            elif channel.phase == "ready" and not channel.waiting:
                self._execute(conn.room, channel)
            self._advance(conn.room)
        self._event("disconnected", {"user_id": conn.user_id, "room": conn.room, "code": conn.close_code})

    # --- DAVE ---

    def _on_binary(self, conn: _Conn, op: int, body: bytes) -> None:
        if op == dave.MLS_KEY_PACKAGE:
            self._key_package(conn, body)
        elif op == dave.MLS_COMMIT_WELCOME:
            self._commit_welcome(conn, body)
        else:
            self.stats["unknown_binary"] = self.stats.get("unknown_binary", 0) + 1

    def _channel(self, room: Room) -> _Channel:
        channel = self._channels.get(room)
        if channel is None:
            channel = self._channels[room] = _Channel(dave.DaveGroup(room[1], self.sender))
        return channel

    def _key_package(self, conn: _Conn, key_package: bytes) -> None:
        channel = self._channel(conn.room)
        self._send_binary(conn, dave.MLS_EXTERNAL_SENDER, self.sender.package())
        if conn.user_id in channel.group.leaves:
            # A fresh key package from a member (after op 31 / reinit): it starts over at a new leaf.
            if channel.group.members == [conn.user_id]:
                channel.group.reset()
            else:
                channel.pending_removes.add(conn.user_id)
        channel.pending_adds[conn.user_id] = key_package
        self._advance(conn.room)

    def _live(self, room: Room) -> dict[int, _Conn]:
        return {c.user_id: c for c in self._room_conns(room) if not c.closing}

    def _advance(self, room: Room) -> None:
        """Start the next commit cycle for `room` if none is in flight and something changed."""
        channel = self._channels.get(room)
        if channel is None or channel.phase != "idle":
            return
        live = self._live(room)
        if not live:
            channel.group.reset()
            channel.pending_adds.clear()
            channel.pending_removes.clear()
            return
        channel.pending_removes &= set(channel.group.members)
        committers = [u for u in channel.group.members if u in live and u not in channel.pending_removes]
        if not committers:
            # Nobody left who holds the group: the next joiner creates it alone (its own pending group).
            channel.group.reset()
            channel.pending_removes.clear()
            if not channel.pending_adds:
                return
            founder = next(iter(channel.pending_adds))
            del channel.pending_adds[founder]
            channel.group.found(founder)
            self._event("dave_founded", {"room": room, "user_id": founder})
            committers = [founder]
        if not channel.pending_adds and not channel.pending_removes:
            return
        adds = list(channel.pending_adds.items())
        payload = channel.group.propose(adds, sorted(channel.pending_removes))
        channel.phase = "commit"
        channel.waiting = set(committers)
        for user_id in committers:
            self._send_binary(live[user_id], dave.MLS_PROPOSALS, payload)
        self._event(
            "proposals", {"room": room, "adds": [u for u, _ in adds], "removes": sorted(channel.pending_removes)}
        )
        self._arm(room, channel, COMMIT_TIMEOUT)

    def _arm(self, room: Room, channel: _Channel, delay: float) -> None:
        if channel.deadline is not None:
            channel.deadline.cancel()
        channel.deadline = asyncio.get_running_loop().call_later(delay, self._deadline, room)

    def _deadline(self, room: Room) -> None:
        channel = self._channels.get(room)
        if channel is None:
            return
        channel.deadline = None
        if channel.phase == "commit":
            log.warning("no commit in %s for our proposals; proposing again", room)
            channel.phase = "idle"
            self._advance(room)
        elif channel.phase == "ready":
            self._execute(room, channel)

    def _commit_welcome(self, conn: _Conn, body: bytes) -> None:
        channel = self._channels.get(conn.room)
        if channel is None or channel.phase != "commit" or conn.user_id not in channel.waiting:
            self.stats["late_commits"] = self.stats.get("late_commits", 0) + 1  # a race's losers: expected
            return
        before = set(channel.group.members)
        try:
            commit, welcome = dave.split_commit_welcome(body)
            outcome = channel.group.apply_commit(commit)
        except dave.MlsDecodeError as exc:
            self.stats["bad_commits"] += 1
            log.warning("bad commit from %s: %s", conn.user_id, exc)
            return
        if channel.deadline is not None:
            channel.deadline.cancel()
        for user_id in outcome.added:
            channel.pending_adds.pop(user_id, None)
        channel.pending_removes.difference_update(outcome.removed)
        live = self._live(conn.room)
        channel.pending_removes.update(u for u in outcome.added if u not in live)  # left while being added
        transition_id = self._transitions.next()
        channel.transition_id = transition_id
        members = [u for u in before if u in live and u not in outcome.removed]
        joiners = [u for u in outcome.added if u in live]
        for user_id in members:
            self._send_binary(
                live[user_id], dave.MLS_ANNOUNCE_COMMIT_TRANSITION, dave.transition_payload(transition_id, commit)
            )
        if joiners and welcome is None:
            self.stats["bad_commits"] += 1
            log.warning("commit adds %s but came without a welcome", joiners)
        for user_id in joiners:
            if welcome is not None:
                self._send_binary(live[user_id], dave.MLS_WELCOME, dave.transition_payload(transition_id, welcome))
        channel.phase = "ready"
        channel.transition_members = set(members) | set(joiners)
        channel.waiting = set(channel.transition_members)
        self._event(
            "commit",
            {
                "room": conn.room,
                "epoch": outcome.epoch,
                "added": list(outcome.added),
                "removed": list(outcome.removed),
                "committer": conn.user_id,
                "transition_id": transition_id,
            },
        )
        if channel.waiting:
            self._arm(conn.room, channel, READY_TIMEOUT)
        else:
            self._execute(conn.room, channel)

    def _transition_ready(self, conn: _Conn, transition_id: int) -> None:
        channel = self._channels.get(conn.room)
        if channel is None or channel.phase != "ready" or transition_id != channel.transition_id:
            return
        channel.waiting.discard(conn.user_id)
        if not channel.waiting:
            self._execute(conn.room, channel)

    def _execute(self, room: Room, channel: _Channel) -> None:
        if channel.deadline is not None:
            channel.deadline.cancel()
            channel.deadline = None
        live = self._live(room)
        for user_id in channel.transition_members:
            if user_id in live:
                self._send(live[user_id], dave.EXECUTE_TRANSITION, {"transition_id": channel.transition_id})
        channel.phase = "idle"
        channel.waiting.clear()
        self._event(
            "dave_ready",
            {
                "room": room,
                "epoch": channel.group.epoch,
                "members": channel.group.members,
                "transition_id": channel.transition_id,
            },
        )
        self._advance(room)


def _heartbeat_ack(data: Any) -> Any:
    """v8 acks echo the nonce `t`; older clients send the nonce itself."""
    if isinstance(data, dict):
        return {"t": data.get("t")}
    return data
