"""`Sandbox`: the local Discord as one object — REST + gateway on one TLS port, voice gateway + SFU beside it.

Its Python surface is what an admin and the people in a server do, for the demo and the tests: create
guilds, channels, bot accounts and members; type a slash command as a member; move or kick someone from
voice; read a channel as a member sees it. Clients (the bot, disnake, discord.js) reach it only through
the real protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.sandbox.gateway import INTENT_GUILDS, INTENT_VOICE_STATES, Gateway, GatewaySession
from bot.sandbox.interactions import Interaction, new_interaction
from bot.sandbox.rest import RateLimits, Rest
from bot.sandbox.state import Channel, ChannelType, Guild, Message, Perm, User, VoiceState, World
from bot.sandbox.tls import Tls, make_tls
from bot.sandbox.voice import VoiceServer

log = logging.getLogger("parley.sandbox")


@dataclass
class Event:
    """One line of the sandbox's timeline (what happened, on the monotonic clock since start)."""

    t: float
    name: str
    data: dict[str, Any] = field(default_factory=dict)


class Sandbox:
    """Start with `async with Sandbox(directory) as sb:`; `sb.api_base`, `sb.gateway_url`, `sb.tls.ca_file`."""

    def __init__(self, directory: Path, *, host: str = "127.0.0.1", rate_limits: RateLimits | None = None) -> None:
        self.directory = directory
        self.host = host
        self.world = World()
        self.tls: Tls = make_tls(directory / "tls", host)
        self.events: list[Event] = []
        self._t0 = time.monotonic()
        self._listeners: list[Callable[[Event], None]] = []
        self.rest = Rest(self.world, lambda: self.gateway_url, rate_limits, on_event=self._event)
        self.gateway = Gateway(self.world, self._voice_state, self._session_ended)
        self.voice = VoiceServer(self.tls.server_context(), host=host, on_event=self._event)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._unanswered: dict[int, int] = {}  # user → voice joins to leave unanswered (fault injection)

    # --- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=25 * 1024 * 1024)
        app.add_routes(self.rest.routes())
        app.router.add_get("/", self.gateway.handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.tls.server_context())
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.gateway.resume_url = self.gateway_url
        await self.voice.start()
        log.info("sandbox: Discord on %s, voice on %s", self.api_base, self.voice.endpoint)

    async def close(self) -> None:
        try:
            await self.gateway.close()
            await self.voice.close()
        finally:
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None

    @property
    def api_base(self) -> str:
        return f"https://{self.host}:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"wss://{self.host}:{self.port}/"

    @staticmethod
    async def _not_found(request: web.Request) -> web.Response:
        return web.Response(body=b'{"message": "404: Not Found", "code": 0}', status=404,
                            headers={"Content-Type": "application/json"})

    # --- the timeline -----------------------------------------------------------------------------

    def _event(self, name: str, data: dict[str, Any]) -> None:
        data = {k: _snapshot(v) for k, v in data.items()}
        event = Event(time.monotonic() - self._t0, name, data)
        self.events.append(event)
        for listener in list(self._listeners):
            listener(event)

    def leave_voice_joins_unanswered(self, user: User, count: int = 1) -> None:
        """Fault injection: the next `count` voice joins of `user` get no VOICE_STATE/SERVER_UPDATE at all, as
        when Discord's answer is lost; the client's own timeout is what it meets."""
        self._unanswered[user.id] = count

    def note(self, name: str, data: dict[str, Any]) -> None:
        """Add a line to the timeline from outside (the demo marks when people speak)."""
        self._event(name, data)

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def clock(self) -> float:
        return time.monotonic() - self._t0

    # --- building a server ------------------------------------------------------------------------

    def add_bot(self, name: str) -> User:
        return self.world.add_user(name, bot=True)

    def add_person(self, name: str) -> User:
        return self.world.add_user(name, bot=False)

    def add_guild(self, name: str, owner: User | None = None) -> Guild:
        return self.world.add_guild(name, owner or self.add_person(f"{name} owner"))

    def add_channel(self, guild: Guild, name: str, kind: str = "voice") -> Channel:
        return self.world.add_channel(guild, name, ChannelType.VOICE if kind == "voice" else ChannelType.TEXT)

    async def create_channel(self, guild: Guild, name: str, kind: str = "voice") -> Channel:
        """An admin creates a channel while clients are online: they get CHANNEL_CREATE."""
        channel = self.add_channel(guild, name, kind)
        await self.gateway.dispatch_guild(guild, "CHANNEL_CREATE", channel.payload(), INTENT_GUILDS)
        return channel

    async def invite(self, guild: Guild, *users: User) -> None:
        """Add accounts to a guild (a bot invited, a person joining); their connected sessions get GUILD_CREATE."""
        for user in users:
            guild.members[user.id] = time.time()
            for session in self.gateway.sessions_of(user.id):
                if session.intents & INTENT_GUILDS and session.holds(guild.id):
                    await session.dispatch("GUILD_CREATE", self.world.guild_payload(guild, user.id))

    def deny(self, channel: Channel, user: User, perms: Perm) -> None:
        """A member overwrite denying `perms` (e.g. Perm.SEND_MESSAGES) in `channel`."""
        channel.deny[user.id] = channel.deny.get(user.id, 0) | int(perms)

    async def set_overwrite(self, channel: Channel, user: User, deny: int, allow: int = 0) -> None:
        """An admin edits `user`'s overwrite in `channel` while clients are online (0 removes it): CHANNEL_UPDATE.
        `allow` grants what @everyone lacks (e.g. Perm.MANAGE_WEBHOOKS)."""
        for bits, where in ((deny, channel.deny), (allow, channel.allow)):
            if bits:
                where[user.id] = int(bits)
            else:
                where.pop(user.id, None)
        guild = self.world.guilds[channel.guild_id]
        await self.gateway.dispatch_guild(guild, "CHANNEL_UPDATE", channel.payload(), INTENT_GUILDS)

    # --- what people do ---------------------------------------------------------------------------

    async def command(self, guild: Guild, user: User, application: User, subcommand: str,
                      options: dict[str, Any] | None = None, *, name: str = "translate",
                      channel: Channel | None = None) -> Interaction:
        """`user` types `/name subcommand options…` in `channel` (default: the voice channel they are in)."""
        if channel is None:
            state = guild.voice.get(user.id)
            channel = guild.channels[state.channel_id] if state else next(
                c for c in guild.channels.values() if c.type == ChannelType.TEXT)
        it = new_interaction(self.world, application, guild, channel, user, name, subcommand, options or {})
        registered = self.world.commands.get((application.id, guild.id), []) + self.world.commands.get(
            (application.id, None), [])
        command = next((c for c in registered if c["name"] == name), None)
        if command is None:
            raise LookupError(f"/{name} is not registered by {application.name}")
        _check_options(command, subcommand, options or {})
        self.rest.interactions[it.id] = it
        self._event("command", {"user": user.name, "text": _command_text(it)})
        if not await self.gateway.dispatch_to_user(application.id, "INTERACTION_CREATE",
                                                   it.payload(self.world, int(command["id"])), guild.id):
            raise ConnectionError(f"{application.name} is not connected to the gateway")
        return it

    async def reply(self, it: Interaction, timeout: float = 15.0) -> Message:
        """The command's visible answer once it is final (a deferred reply after its edit)."""
        deadline = time.monotonic() + timeout
        await asyncio.wait_for(it.responded.wait(), timeout)
        while time.monotonic() < deadline:
            msg = it.original
            if msg is not None and not msg.flags & 128:  # no longer "thinking"
                return msg
            if it.followups:
                return it.followups[-1]
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no final reply to /{it.name} {it.subcommand}")

    async def move(self, guild: Guild, user: User, channel: Channel | None) -> None:
        """An admin moves `user` to `channel`, or disconnects them from voice (None)."""
        session = self._voice_session(guild, user)
        if channel is None:
            await self._leave_voice(guild, user.id)
            return
        if session is None:
            raise LookupError(f"{user.name} is not in voice")
        await self._enter_voice(session, guild, channel, self_mute=False, self_deaf=False)

    def messages(self, channel: Channel, viewer: User | None = None) -> list[Message]:
        return self.world.visible_messages(channel.id, viewer.id if viewer else None)

    def in_voice(self, guild: Guild, channel: Channel) -> list[User]:
        return [self.world.users[s.user_id] for s in guild.voice.values() if s.channel_id == channel.id]

    # --- voice state (main gateway op 4) ------------------------------------------------------------

    def _voice_session(self, guild: Guild, user: User) -> GatewaySession | None:
        state = guild.voice.get(user.id)
        if state is None:
            return None
        return next((s for s in self.gateway.sessions_of(user.id) if s.session_id == state.session_id), None)

    async def _voice_state(self, session: GatewaySession, d: dict[str, Any]) -> None:
        assert session.user is not None
        try:
            guild = self.world.guilds[int(d["guild_id"])]
        except (KeyError, TypeError, ValueError):
            return
        if session.user.id not in guild.members:
            return
        channel_id = d.get("channel_id")
        if channel_id is not None and self._unanswered.get(session.user.id, 0) > 0:
            self._unanswered[session.user.id] -= 1
            self._event("voice_join_unanswered", {"user": session.user.name})
            return
        if channel_id is None:
            await self._leave_voice(guild, session.user.id)
            return
        channel = guild.channels.get(int(channel_id))
        if channel is None or channel.type != ChannelType.VOICE:
            return
        if not self.world.can(guild, channel, session.user.id, Perm.VIEW_CHANNEL | Perm.CONNECT):
            self._event("voice_refused", {"user": session.user.name, "channel": channel.name})
            return  # Discord does not answer a join the account may not make
        await self._enter_voice(session, guild, channel, bool(d.get("self_mute")), bool(d.get("self_deaf")))

    async def _enter_voice(self, session: GatewaySession, guild: Guild, channel: Channel, self_mute: bool,
                           self_deaf: bool) -> None:
        assert session.user is not None
        uid = session.user.id
        old = guild.voice.get(uid)
        moved = old is not None and (old.channel_id != channel.id or old.session_id != session.session_id)
        if moved:
            # Discord ends the old voice connection first (4014), then announces the new channel and server,
            # which is the order discord.py's reconnect-after-4014 waits for.
            await self.voice.revoke(guild.id, uid)
        guild.voice[uid] = VoiceState(uid, channel.id, session.session_id, self_mute, self_deaf)
        await self.gateway.dispatch_guild(guild, "VOICE_STATE_UPDATE", self.world.voice_state_payload(guild, uid),
                                          INTENT_VOICE_STATES)
        if old is not None and old.channel_id == channel.id and old.session_id == session.session_id:
            return  # only mute/deaf changed: the voice connection stays
        self._event("voice_join", {"user": session.user.name, "channel": channel.name})
        token = self.voice.grant(guild.id, channel.id, uid, session.session_id,
                                 speak=self.world.can(guild, channel, uid, Perm.SPEAK))
        await session.dispatch("VOICE_SERVER_UPDATE",
                               {"token": token, "guild_id": str(guild.id), "endpoint": self.voice.endpoint})

    async def _leave_voice(self, guild: Guild, user_id: int) -> None:
        if guild.voice.pop(user_id, None) is None:
            return
        self._event("voice_leave", {"user": self.world.users[user_id].name})
        payload = self.world.voice_state_payload(guild, user_id)
        await self.gateway.dispatch_guild(guild, "VOICE_STATE_UPDATE", payload, INTENT_VOICE_STATES)
        await self.voice.revoke(guild.id, user_id)

    async def _session_ended(self, session: GatewaySession) -> None:
        """A bot whose gateway session ends leaves voice (Discord's rule)."""
        assert session.user is not None
        for guild in self.world.guilds_of(session.user.id):
            state = guild.voice.get(session.user.id)
            if state is not None and state.session_id == session.session_id:
                with contextlib.suppress(ConnectionError):
                    await self._leave_voice(guild, session.user.id)


def _snapshot(value: Any) -> Any:
    """Timeline entries keep what a message said at that moment, not the object edited later."""
    if isinstance(value, Message):
        return {"id": str(value.id), "channel_id": str(value.channel_id), "author": value.author.name,
                "content": value.content, "ephemeral": value.ephemeral, "loading": bool(value.flags & 128)}
    if isinstance(value, Interaction):
        return {"id": str(value.id), "command": f"/{value.name} {value.subcommand}", "user": value.user.name}
    return value


def _check_options(command: dict[str, Any], subcommand: str, options: dict[str, Any]) -> None:
    """Discord's client only lets a member send what the registered command declares."""
    sub = next((o for o in command.get("options", []) if o.get("name") == subcommand and o.get("type") == 1), None)
    if sub is None:
        raise LookupError(f"/{command['name']} has no subcommand {subcommand!r}")
    declared = {o["name"]: o for o in sub.get("options", [])}
    unknown = set(options) - set(declared)
    missing = {n for n, o in declared.items() if o.get("required") and n not in options}
    if unknown or missing:
        raise LookupError(f"/{command['name']} {subcommand}: unknown options {sorted(unknown)}, "
                          f"missing {sorted(missing)}")


def _command_text(it: Interaction) -> str:
    parts = [f"/{it.name} {it.subcommand}"]
    for k, v in it.options.items():
        parts.append(f"{k}:{('#' + v.name) if isinstance(v, Channel) else v}")
    return " ".join(parts)

