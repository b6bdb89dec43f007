"""The sandbox's main gateway (v10, JSON, optional zlib-stream): hello, identify, ready, guilds, voice, interactions.

One `GatewaySession` per connected client. Events are sent in Discord's envelope `{op, d, s, t}` with a
per-session sequence. When a client asks for `compress=zlib-stream`, every message goes through one
shared zlib stream ending in a `Z_SYNC_FLUSH`, as Discord sends it. A session that ends takes its account
out of voice, as Discord does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from bot.sandbox.state import Guild, User, World

log = logging.getLogger("parley.sandbox.gateway")

HEARTBEAT_INTERVAL_MS = 41250
# Discord answers across a network; clients are written for that. A local answer in microseconds races them:
# discord.py's heartbeat thread then logs a bogus "Can't keep up", and its voice connection sets its state only
# after its op 4 is written, so an instant VOICE_STATE/SERVER_UPDATE would be ignored and the join time out.
NETWORK_DELAY_S = 0.02
INTENT_GUILDS = 1 << 0
INTENT_VOICE_STATES = 1 << 7

# Close codes clients act on (Discord's gateway close event codes).
AUTHENTICATION_FAILED = 4004
INVALID_SHARD = 4010
NOT_AUTHENTICATED = 4003
DECODE_ERROR = 4002


def shard_of(guild_id: int, shard_count: int) -> int:
    """Discord's rule: a guild's events go to shard (guild_id >> 22) % shard_count."""
    return (guild_id >> 22) % shard_count


@dataclass(eq=False)
class GatewaySession:
    ws: web.WebSocketResponse
    zlib_stream: bool
    user: User | None = None
    intents: int = 0
    shard: tuple[int, int] | None = None  # (shard_id, shard_count) from identify; None: every guild

    def holds(self, guild_id: int | None) -> bool:
        """Whether this connection's shard gets a guild's events (DMs go to shard 0)."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        return (0 if guild_id is None else shard_of(guild_id, count)) == shard_id
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    seq: int = 0
    _compressor: Any = field(default_factory=zlib.compressobj)
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, op: int, d: Any, t: str | None = None) -> None:
        async with self._send_lock:
            payload: dict[str, Any] = {"op": op, "d": d, "s": None, "t": t}
            if op == 0:
                self.seq += 1
                payload["s"] = self.seq
            text = json.dumps(payload, separators=(",", ":"))
            if self.ws.closed:
                return
            try:
                if self.zlib_stream:
                    data = self._compressor.compress(text.encode()) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(text)
            except ConnectionError:
                log.debug("gateway: send to a closing connection dropped")

    async def dispatch(self, event: str, data: Any) -> None:
        await self.send(0, data, event)


VoiceStateHandler = Callable[[GatewaySession, dict[str, Any]], Awaitable[None]]
SessionEndHandler = Callable[[GatewaySession], Awaitable[None]]


class Gateway:
    """Accepts gateway websockets and routes events to the sessions that should see them."""

    def __init__(self, world: World, on_voice_state: VoiceStateHandler, on_session_end: SessionEndHandler,
                 resume_url: str = "") -> None:
        self.world = world
        self.on_voice_state = on_voice_state
        self.on_session_end = on_session_end
        self.resume_url = resume_url
        self.sessions: list[GatewaySession] = []
        self.counters = {"connections": 0, "identified": 0, "bad_messages": 0}

    def sessions_of(self, user_id: int) -> list[GatewaySession]:
        return [s for s in self.sessions if s.user is not None and s.user.id == user_id]

    async def dispatch_to_user(self, user_id: int, event: str, data: Any, guild_id: int | None = None) -> bool:
        """To the user's sessions; about a guild (`guild_id`), only to the session holding its shard."""
        sessions = [s for s in self.sessions_of(user_id) if s.holds(guild_id)]
        for s in sessions:
            await s.dispatch(event, data)
        return bool(sessions)

    async def dispatch_guild(self, guild: Guild, event: str, data: Any, intent: int) -> None:
        """To every identified session of a guild member that asked for `intent`."""
        for s in list(self.sessions):
            if s.user is not None and s.user.id in guild.members and s.intents & intent and s.holds(guild.id):
                await s.dispatch(event, data)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4096 * 1024, autoping=True)
        await ws.prepare(request)
        session = GatewaySession(ws, zlib_stream=request.query.get("compress") == "zlib-stream")
        self.sessions.append(session)
        self.counters["connections"] += 1
        try:
            await session.send(10, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:  # clients send JSON text; binary is ETF, which we don't speak
                        await ws.close(code=DECODE_ERROR, message=b"Error while decoding payload.")
                    continue
                try:
                    payload = json.loads(msg.data)
                    op, d = payload["op"], payload.get("d")
                except (ValueError, KeyError, TypeError):
                    self.counters["bad_messages"] += 1
                    await ws.close(code=DECODE_ERROR, message=b"Error while decoding payload.")
                    break
                await self._received(session, op, d)
        finally:
            self.sessions.remove(session)
            if session.user is not None:
                await self.on_session_end(session)
        return ws

    async def _received(self, session: GatewaySession, op: int, d: Any) -> None:
        if op == 1:  # heartbeat
            await asyncio.sleep(NETWORK_DELAY_S)
            await session.send(11, None)
        elif op == 2:
            await self._identify(session, d)
        elif op == 6:  # resume: sessions are not kept, so the client identifies again
            await session.send(9, False)
        elif session.user is None:
            await session.ws.close(code=NOT_AUTHENTICATED, message=b"Not authenticated.")
        elif op == 4 and isinstance(d, dict):
            await asyncio.sleep(NETWORK_DELAY_S)
            await self.on_voice_state(session, d)
        # op 3 presence, op 8 request members, …: accepted and ignored (nothing Parley relies on)

    async def _identify(self, session: GatewaySession, d: Any) -> None:
        user = self.world.user_by_token(str((d or {}).get("token", "")))
        if user is None:
            await session.ws.close(code=AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return
        session.user, session.intents = user, int((d or {}).get("intents", 0) or 0)
        shard = (d or {}).get("shard")
        if shard is not None:
            try:
                shard_id, count = int(shard[0]), int(shard[1])
                if not 0 <= shard_id < count:
                    raise ValueError(shard)
            except (TypeError, ValueError, IndexError):
                await session.ws.close(code=INVALID_SHARD, message=b"Invalid shard.")
                return
            session.shard = (shard_id, count)
        self.counters["identified"] += 1
        guilds = [g for g in self.world.guilds_of(user.id) if session.holds(g.id)]
        ready: dict[str, Any] = {
            "v": 10, "user": user.payload(), "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id, "resume_gateway_url": self.resume_url, "private_channels": [],
            "relationships": [], "presences": [], "user_settings": {}, "geo_ordered_rtc_regions": ["sandbox"],
            "session_type": "normal", "auth_session_id_hash": "", "guild_join_requests": [],
        }
        if user.bot:
            ready["application"] = {"id": str(user.id), "flags": 0}
        if shard is not None:
            ready["shard"] = shard
        await session.dispatch("READY", ready)
        if session.intents & INTENT_GUILDS:
            for g in guilds:  # READY listed them unavailable: each now becomes available
                await session.dispatch("GUILD_CREATE", {**self.world.guild_payload(g, user.id), "unavailable": False})

    async def close(self) -> None:
        for s in list(self.sessions):
            with contextlib.suppress(ConnectionError):
                await s.ws.close(code=1001, message=b"sandbox closing")
