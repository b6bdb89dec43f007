"""The sandbox's REST API and main gateway against real peers: discord.py 2.7's HTTP client, gateway client,
command tree and zlib decompressor, plus plain aiohttp for raw status codes, headers and frames.

What is checked is what Discord enforces and a bot can get wrong: login, command registration, the
interaction rules (3 s, once, ephemeral), message limits and permissions, rate limits and 429s, and the
gateway's handshake, compression, guild payloads and voice-state rules. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import discord.utils
import pytest
import yarl
from discord import app_commands

from bot.sandbox import state as sandbox_state
from bot.sandbox.rest import RateLimits
from bot.sandbox.server import Sandbox
from bot.sandbox.state import Channel, Guild, Perm, User

pytestmark = pytest.mark.timeout(30)

INTENTS = (1 << 0) | (1 << 7)  # GUILDS | GUILD_VOICE_STATES
ZLIB_SUFFIX = b"\x00\x00\xff\xff"


# --- a server to test against -----------------------------------------------------------------------


@dataclass
class Server:
    sb: Sandbox
    bot: User
    alice: User  # a member
    bob: User  # another member
    guild: Guild
    lobby: Channel  # voice
    output: Channel  # voice
    captions: Channel  # text
    http: aiohttp.ClientSession
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.sb.api_base + path

    async def call(self, method: str, path: str, user: User | None, **kw: Any) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bot {user.token}"} if user else {}
        async with self.http.request(method, self.url(path), headers={**headers, **kw.pop("headers", {})},
                                     **kw) as resp:
            await resp.read()
            return resp


def _connector(sb: Sandbox) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(ssl=sb.tls.client_context())


async def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rate_limits: RateLimits) -> AsyncIterator[Server]:
    sb = Sandbox(tmp_path, rate_limits=rate_limits)
    await sb.start()
    monkeypatch.setattr(discord.http.Route, "BASE", sb.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(sb.gateway_url))
    bot, alice, bob = sb.add_bot("Parley"), sb.add_person("Alice"), sb.add_person("Bob")
    guild = sb.add_guild("Guild A")
    lobby, output = sb.add_channel(guild, "lobby"), sb.add_channel(guild, "output")
    captions = sb.add_channel(guild, "captions", kind="text")
    await sb.invite(guild, bot, alice, bob)
    http = aiohttp.ClientSession(connector=_connector(sb))
    server = Server(sb, bot, alice, bob, guild, lobby, output, captions, http)
    try:
        yield server
    finally:
        for close in reversed(server.closers):
            await close()
        await server.http.close()
        await sb.close()


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    """Generous rate limits: these tests are about other rules."""
    async for server in _start(tmp_path, monkeypatch, RateLimits(limit=100, per_s=5.0)):
        yield server


@pytest.fixture
async def limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    """3 messages per 1 s per channel (Discord's is 5 per 5 s; shorter keeps the tests quick)."""
    async for server in _start(tmp_path, monkeypatch, RateLimits(limit=3, per_s=1.0)):
        yield server


async def dpy_http(env: Server, user: User) -> discord.http.HTTPClient:
    """discord.py's own REST client, logged in as `user`."""
    http = discord.http.HTTPClient(asyncio.get_running_loop(), connector=_connector(env.sb))
    await http.static_login(user.token)
    env.closers.append(http.close)
    return http


def params(**kw: Any) -> Any:
    return discord.http.handle_message_parameters(**kw)


# --- discord.py's gateway client with a /translate tree -------------------------------------------


Handler = Callable[..., Awaitable[None]]


@dataclass
class Bot:
    client: discord.Client
    tree: app_commands.CommandTree[discord.Client]
    handlers: dict[str, Handler] = field(default_factory=dict)

    async def run(self, name: str, interaction: discord.Interaction, **options: Any) -> None:
        await self.handlers[name](interaction, **options)


def translate_group(bot: Bot) -> app_commands.Group:
    """Shaped like Parley's cog: a guild-only group with subcommands and channel/string/bool options."""
    group = app_commands.Group(name="translate", description="Interpret a voice channel", guild_only=True)

    @group.command(name="join", description="Start interpreting your voice channel")
    @app_commands.describe(output_channel="Where to speak", caption_channel="Where to write")
    async def join(interaction: discord.Interaction, output_channel: discord.VoiceChannel | None = None,
                   caption_channel: discord.TextChannel | None = None) -> None:
        await bot.run("join", interaction, output_channel=output_channel, caption_channel=caption_channel)

    @group.command(name="language", description="Your language")
    async def language(interaction: discord.Interaction, code: str) -> None:
        await bot.run("language", interaction, code=code)

    @group.command(name="optout", description="Do not interpret me")
    async def optout(interaction: discord.Interaction, enabled: bool = True) -> None:
        await bot.run("optout", interaction, enabled=enabled)

    return group


async def connect(env: Server, user: User) -> Bot:
    """discord.py's Client logged in and READY (its gateway connection asks for zlib-stream)."""
    intents = discord.Intents.none()
    intents.guilds = intents.voice_states = True
    client = discord.Client(intents=intents, connector=_connector(env.sb), guild_ready_timeout=0.1)
    tree = app_commands.CommandTree(client)
    bot = Bot(client, tree)
    tree.add_command(translate_group(bot))
    await client.login(user.token)
    task = asyncio.create_task(client.connect(reconnect=False))

    async def close() -> None:
        await client.close()
        await asyncio.gather(task, return_exceptions=True)

    env.closers.append(close)
    await asyncio.wait_for(client.wait_until_ready(), 5)
    return bot


# --- a raw gateway client -------------------------------------------------------------------------


class RawGateway:
    """aiohttp's websocket; inflated with discord.py's own zlib-stream context when compressed."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, compressed: bool) -> None:
        self.ws = ws
        self.compressed = compressed
        self.inflater = discord.utils._ActiveDecompressionContext() if compressed else None
        self.frames: list[aiohttp.WSMessage] = []

    @classmethod
    async def open(cls, env: Server, *, compress: bool = False) -> RawGateway:
        query = "?v=10&encoding=json" + ("&compress=zlib-stream" if compress else "")
        ws = await env.http.ws_connect(env.sb.gateway_url + query)
        env.closers.append(ws.close)
        return cls(ws, compress)

    async def recv(self, timeout: float = 3.0) -> dict[str, Any]:
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                raise ConnectionResetError(f"closed with {self.ws.close_code}")
            self.frames.append(msg)
            if self.inflater is not None:
                assert msg.type == aiohttp.WSMsgType.BINARY, msg.type
                text = self.inflater.decompress(msg.data)
                if text is None:
                    continue  # discord.py waits for the Z_SYNC_FLUSH suffix
            else:
                assert msg.type == aiohttp.WSMsgType.TEXT, msg.type
                text = msg.data
            return json.loads(text)

    async def until(self, event: str, timeout: float = 3.0) -> dict[str, Any]:
        while True:
            payload = await self.recv(timeout)
            if payload["t"] == event:
                return payload

    async def send(self, op: int, d: Any) -> None:
        await self.ws.send_str(json.dumps({"op": op, "d": d}))

    async def identify(self, user: User, intents: int = INTENTS) -> dict[str, Any]:
        hello = await self.recv()
        assert hello["op"] == 10
        await self.send(2, {"token": user.token, "intents": intents, "properties": {"os": "linux"}})
        return await self.until("READY")

    async def drain(self) -> list[dict[str, Any]]:
        """Everything sent before the answer to a heartbeat sent now (the server handles ops in order)."""
        await self.send(1, None)
        seen = []
        while (payload := await self.recv())["op"] != 11:
            seen.append(payload)
        return seen

    async def voice(self, guild: Guild, channel: Channel | None) -> None:
        await self.send(4, {"guild_id": str(guild.id), "channel_id": str(channel.id) if channel else None,
                            "self_mute": False, "self_deaf": False})


# --- 1. login ---------------------------------------------------------------------------------------


async def test_login_returns_the_user_and_a_bad_token_is_401(env: Server) -> None:
    http = await dpy_http(env, env.bot)
    assert http.token == env.bot.token
    me = await http.request(discord.http.Route("GET", "/users/@me"))  # parsed as JSON by discord.py
    assert me["id"] == str(env.bot.id) and me["username"] == "Parley" and me["bot"] is True

    resp = await env.call("GET", "/users/@me", env.bot)
    assert resp.status == 200
    assert (await _json(env, "GET", "/users/@me", env.bot))["id"] == str(env.bot.id)

    bad = discord.http.HTTPClient(asyncio.get_running_loop(), connector=_connector(env.sb))
    env.closers.append(bad.close)
    with pytest.raises(discord.LoginFailure):
        await bad.static_login(env.bot.token + "x")

    resp = await env.call("GET", "/users/@me", None)
    assert resp.status == 401 and resp.headers["Content-Type"] == "application/json"
    body = await _json(env, "GET", "/users/@me", None)
    assert set(body) >= {"message", "code"} and body["code"] == 0


async def _json(env: Server, method: str, path: str, user: User | None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bot {user.token}"} if user else {}
    async with env.http.request(method, env.url(path), headers=headers, **kw) as resp:
        return await resp.json(content_type=None)


async def test_every_json_answer_has_exactly_application_json(env: Server) -> None:
    """discord.py parses a body as JSON only when `Content-Type` is exactly `application/json`."""
    env.sb.deny(env.captions, env.bob, Perm.SEND_MESSAGES)
    cases = [
        ("GET", "/users/@me", env.bot, None, 200),
        ("GET", "/users/@me", None, None, 401),
        ("GET", "/oauth2/applications/@me", env.bot, None, 200),
        ("GET", "/gateway/bot", env.bot, None, 200),
        ("GET", f"/applications/{env.bot.id}/commands", env.bot, None, 200),
        ("GET", f"/applications/{env.alice.id}/commands", env.bot, None, 403),
        ("GET", f"/channels/{env.captions.id}", env.bot, None, 200),
        ("GET", "/channels/1", env.bot, None, 404),
        ("POST", f"/channels/{env.captions.id}/messages", env.bot, {"content": "hi"}, 200),
        ("POST", f"/channels/{env.captions.id}/messages", env.bot, {"content": ""}, 400),
        ("POST", f"/channels/{env.captions.id}/messages", env.bob, {"content": "hi"}, 403),
        ("GET", "/no/such/route", env.bot, None, 404),
        ("POST", "/interactions/1/nope/callback", env.bot, {"type": 4}, 404),
    ]
    for method, path, user, body, status in cases:
        resp = await env.call(method, path, user, json=body) if body is not None else await env.call(
            method, path, user)
        assert resp.status == status, (method, path, resp.status)
        assert resp.headers.get("Content-Type") == "application/json", (method, path, resp.headers)
    # a malformed body is answered in JSON too
    resp = await env.call("POST", f"/channels/{env.captions.id}/messages", env.bot, data=b"{nope",
                          headers={"Content-Type": "application/json"})
    assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"


# --- 2. application commands ---------------------------------------------------------------------------


async def test_bulk_put_commands_then_get_them_with_ids_and_other_apps_are_forbidden(env: Server) -> None:
    bot = await connect(env, env.bot)
    synced = await bot.tree.sync()  # discord.py's own bulk PUT /applications/{app}/commands
    assert [c.name for c in synced] == ["translate"]
    assert synced[0].id > 0
    assert {o.name for o in synced[0].options} == {"join", "language", "optout"}

    http = bot.client.http
    fetched = await http.get_global_commands(env.bot.id)
    assert [(c["id"], c["name"]) for c in fetched] == [(str(synced[0].id), "translate")]
    join = next(o for o in fetched[0]["options"] if o["name"] == "join")
    assert join["type"] == 1 and [o["type"] for o in join["options"]] == [7, 7]
    assert join["options"][0]["channel_types"] == [2]  # discord.VoiceChannel

    # per-guild commands are a separate list
    cmd = {"name": "ping", "description": "pong", "type": 1}
    stored = await http.bulk_upsert_guild_commands(env.bot.id, env.guild.id, [cmd])
    assert stored[0]["guild_id"] == str(env.guild.id) and int(stored[0]["id"]) > synced[0].id
    assert [c["name"] for c in await http.get_guild_commands(env.bot.id, env.guild.id)] == ["ping"]
    assert [c["name"] for c in await http.get_global_commands(env.bot.id)] == ["translate"]

    # another application's commands: 403
    with pytest.raises(discord.Forbidden) as err:
        await http.bulk_upsert_global_commands(env.alice.id, [cmd])
    assert err.value.status == 403 and err.value.code == 50001
    with pytest.raises(discord.Forbidden):
        await http.get_global_commands(env.alice.id)
    assert env.sb.world.commands.get((env.alice.id, None)) is None


# --- 3. interactions ---------------------------------------------------------------------------------------


async def _bot_with_commands(env: Server) -> Bot:
    bot = await connect(env, env.bot)
    await bot.tree.sync()
    return bot


async def test_a_command_needs_its_registration_and_a_connected_application(env: Server) -> None:
    """The command JSON PUT by hand; `sb.command` only types what is registered, to a connected app."""
    group = {"name": "translate", "description": "Interpret", "type": 1, "options": [
        {"name": "language", "description": "Yours", "type": 1, "options": [
            {"name": "code", "description": "BCP 47", "type": 3, "required": True}]}]}
    with pytest.raises(LookupError):
        await env.sb.command(env.guild, env.alice, env.bot, "language", {"code": "es"}, channel=env.captions)
    resp = await env.call("PUT", f"/applications/{env.bot.id}/commands", env.bot, json=[group])
    assert resp.status == 200
    with pytest.raises(LookupError):  # `code` is required
        await env.sb.command(env.guild, env.alice, env.bot, "language", {}, channel=env.captions)
    with pytest.raises(ConnectionError):  # registered, but nobody is connected to receive it
        await env.sb.command(env.guild, env.alice, env.bot, "language", {"code": "es"}, channel=env.captions)
    gw = await RawGateway.open(env)
    await gw.identify(env.bot)
    it = await env.sb.command(env.guild, env.alice, env.bot, "language", {"code": "es"}, channel=env.captions)
    event = await gw.until("INTERACTION_CREATE")
    assert event["d"]["id"] == str(it.id) and event["d"]["token"] == it.token
    assert event["d"]["data"]["options"] == [
        {"name": "language", "type": 1, "options": [{"name": "code", "type": 3, "value": "es"}]}]
    assert "resolved" not in event["d"]["data"]


async def test_interaction_payload_nests_the_subcommand_and_resolves_channels(env: Server) -> None:
    bot = await _bot_with_commands(env)
    seen: asyncio.Future[tuple[discord.Interaction, dict[str, Any]]] = asyncio.get_running_loop().create_future()

    async def join(interaction: discord.Interaction, **options: Any) -> None:
        seen.set_result((interaction, options))
        await interaction.response.send_message("ok", ephemeral=True)

    bot.handlers["join"] = join
    it = await env.sb.command(env.guild, env.alice, env.bot, "join",
                              {"output_channel": env.output, "caption_channel": env.captions}, channel=env.captions)
    interaction, options = await asyncio.wait_for(seen, 5)

    # the raw payload, as discord.py received it
    data = interaction.data
    assert data is not None and data["name"] == "translate" and data["type"] == 1
    [sub] = data["options"]
    assert sub["name"] == "join" and sub["type"] == 1
    assert {(o["name"], o["type"], o["value"]) for o in sub["options"]} == {
        ("output_channel", 7, str(env.output.id)), ("caption_channel", 7, str(env.captions.id))}
    resolved = data["resolved"]["channels"]
    assert set(resolved) == {str(env.output.id), str(env.captions.id)}
    assert resolved[str(env.output.id)]["type"] == 2 and resolved[str(env.captions.id)]["type"] == 0

    # discord.py's tree parsed it: the right callback, with the guild's channels as typed arguments
    assert isinstance(options["output_channel"], discord.VoiceChannel)
    assert options["output_channel"].id == env.output.id
    assert isinstance(options["caption_channel"], discord.TextChannel)
    assert options["caption_channel"].id == env.captions.id
    assert interaction.command is not None and interaction.command.qualified_name == "translate join"
    assert interaction.namespace.output_channel.id == env.output.id
    assert isinstance(interaction.user, discord.Member) and interaction.user.id == env.alice.id
    assert interaction.guild_id == env.guild.id and interaction.channel_id == env.captions.id
    assert interaction.app_permissions.send_messages

    # and the same payload built directly into discord.py's Interaction
    payload = it.payload(env.sb.world, int(data["id"]))
    direct = discord.Interaction(data=payload, state=bot.client._connection)  # type: ignore[arg-type]
    assert direct.type == discord.InteractionType.application_command
    assert direct.id == it.id and direct.token == it.token and direct.application_id == env.bot.id
    assert direct.namespace.caption_channel.id == env.captions.id
    assert direct.namespace.output_channel.type == discord.ChannelType.voice


async def test_interaction_first_callback_once_within_3s(env: Server) -> None:
    bot = await _bot_with_commands(env)
    done: asyncio.Future[tuple[discord.Interaction, Any]] = asyncio.get_running_loop().create_future()

    async def language(interaction: discord.Interaction, code: str) -> None:
        try:
            done.set_result((interaction, await interaction.response.send_message(f"now {code}", ephemeral=True)))
        except Exception as e:
            done.set_exception(e)

    bot.handlers["language"] = language
    it = await env.sb.command(env.guild, env.alice, env.bot, "language", {"code": "es"}, channel=env.captions)
    interaction, callback = await asyncio.wait_for(done, 5)

    # the with_response body, as discord.py read it
    assert isinstance(callback, discord.InteractionCallbackResponse)
    assert callback.id == it.id and callback.type == discord.InteractionResponseType.channel_message
    assert callback.message_id == it.original.id  # type: ignore[union-attr]
    assert callback.is_ephemeral() and not callback.is_thinking()
    message = callback.resource
    assert isinstance(message, discord.InteractionMessage)
    assert message.id == it.original.id and message.content == "now es"  # type: ignore[union-attr]
    assert message.flags.ephemeral and message.flags.value & 64
    assert it.original is not None and it.original.flags & 64 and it.response_type == 4

    # the invoker sees the ephemeral reply; nobody else does
    assert [m.id for m in env.sb.messages(env.captions, viewer=env.alice)] == [it.original.id]
    assert env.sb.messages(env.captions, viewer=env.bob) == []
    assert env.sb.messages(env.captions) == []
    bob_http = await dpy_http(env, env.bob)
    assert await bob_http.logs_from(env.captions.id, 50) == []

    # a second callback: 400 40060 (a fresh Interaction object, so discord.py's own guard does not stop it)
    again = discord.Interaction(data=it.payload(env.sb.world, 0), state=bot.client._connection)  # type: ignore[arg-type]
    with pytest.raises(discord.HTTPException) as err:
        await again.response.defer()
    assert err.value.status == 400 and err.value.code == 40060
    assert it.refusals == ["already acknowledged"]

    # follow-ups and @original edits through the webhook
    follow = await interaction.followup.send("more", ephemeral=True, wait=True)
    assert follow.flags.ephemeral and it.followups[-1].id == follow.id
    edited = await interaction.edit_original_response(content="now Spanish")
    assert edited.id == it.original.id and it.original.content == "now Spanish" and it.original.edited
    assert [m.content for m in env.sb.messages(env.captions, viewer=env.alice)] == ["now Spanish", "more"]
    assert env.sb.messages(env.captions, viewer=env.bob) == []
    # raw: the webhook endpoints answer JSON and an unknown token is 404 10015
    resp = await env.call("POST", f"/webhooks/{env.bot.id}/{it.token}", None, json={"content": "raw"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    body = await _json(env, "PATCH", f"/webhooks/{env.bot.id}/nope/messages/@original", None, json={"content": "x"})
    assert body["code"] == 10015


async def test_interaction_callback_after_3s_is_unknown(env: Server) -> None:
    bot = await _bot_with_commands(env)
    gate = asyncio.Event()
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def optout(interaction: discord.Interaction, enabled: bool) -> None:
        await gate.wait()
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except discord.HTTPException as e:
            done.set_result(e)
        else:
            done.set_result(None)

    bot.handlers["optout"] = optout
    it = await env.sb.command(env.guild, env.alice, env.bot, "optout", {"enabled": False}, channel=env.captions)
    it.created -= 3.05  # the bot took longer than Discord allows
    gate.set()
    err = await asyncio.wait_for(done, 5)
    assert isinstance(err, discord.NotFound) and err.status == 404 and err.code == 10062
    assert it.response_type is None and it.original is None and it.refusals == ["too late"]
    assert not it.responded.is_set()
    # an unacknowledged interaction has no webhook yet
    resp = await env.call("POST", f"/webhooks/{env.bot.id}/{it.token}", None, json={"content": "late"})
    assert resp.status == 404


async def test_interaction_just_in_time_is_accepted(env: Server) -> None:
    """The other side of the 3 s rule: 2.9 s old is still in time."""
    bot = await _bot_with_commands(env)

    async def silent(interaction: discord.Interaction, **options: Any) -> None:
        pass  # this time the test answers by hand

    bot.handlers["optout"] = silent
    it = await env.sb.command(env.guild, env.alice, env.bot, "optout", {}, channel=env.captions)
    it.created -= 2.9
    resp = await env.call("POST", f"/interactions/{it.id}/{it.token}/callback?with_response=1", None,
                          json={"type": 5, "data": {"flags": 64}})
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    assert it.original is not None and it.original.ephemeral and it.original.flags & 128


# --- 4. messages ---------------------------------------------------------------------------------------------


async def test_message_length_empty_permissions_and_authorship(env: Server) -> None:
    http = await dpy_http(env, env.bot)
    ch = env.captions.id

    with pytest.raises(discord.HTTPException) as err:
        await http.send_message(ch, params=params(content="x" * 2001))
    assert err.value.status == 400 and err.value.code == 50035
    assert "In content" in err.value.text and "2000" in err.value.text  # discord.py flattened `errors`
    raw = await _json(env, "POST", f"/channels/{ch}/messages", env.bot, json={"content": "x" * 2001})
    assert raw["errors"]["content"]["_errors"][0]["code"] == "BASE_TYPE_MAX_LENGTH"

    ok = await http.send_message(ch, params=params(content="y" * 2000))
    assert len(ok["content"]) == 2000 and ok["author"]["id"] == str(env.bot.id)

    with pytest.raises(discord.HTTPException) as err:
        await http.send_message(ch, params=params(content=""))
    assert err.value.status == 400 and err.value.code == 50006

    # the bot may not post in captions any more
    env.sb.deny(env.captions, env.bot, Perm.SEND_MESSAGES)
    with pytest.raises(discord.Forbidden) as err:
        await http.send_message(ch, params=params(content="hello"))
    assert err.value.status == 403 and err.value.code == 50013
    assert [len(m.content) for m in env.sb.messages(env.captions)] == [2000]

    # editing someone else's message
    alice = await dpy_http(env, env.alice)
    hers = await alice.send_message(ch, params=params(content="mine"))
    with pytest.raises(discord.Forbidden) as err:
        await http.edit_message(ch, int(hers["id"]), params=params(content="yours now"))
    assert err.value.code == 50005
    assert env.sb.world.messages[int(hers["id"])].content == "mine"
    # ... while editing one's own works
    edited = await alice.edit_message(ch, int(hers["id"]), params=params(content="still mine"))
    assert edited["content"] == "still mine" and edited["edited_timestamp"]
    with pytest.raises(discord.HTTPException) as err:
        await alice.edit_message(ch, int(hers["id"]), params=params(content="z" * 2001))
    assert err.value.code == 50035


# --- 5. rate limits -----------------------------------------------------------------------------------------------


async def test_rate_limit_headers_and_429(limited: Server) -> None:
    env, limits = limited, limited.sb.rest.rate_limits
    path = f"/channels/{env.captions.id}/messages"
    buckets = set()
    for remaining in (2, 1, 0):
        before = time.time()
        resp = await env.call("POST", path, env.bot, json={"content": f"m{remaining}"})
        h = resp.headers
        assert resp.status == 200
        assert h["X-RateLimit-Limit"] == "3" and h["X-RateLimit-Remaining"] == str(remaining)
        reset_after = float(h["X-RateLimit-Reset-After"])
        assert 0 < reset_after <= 1.0
        assert before + reset_after - 0.05 <= float(h["X-RateLimit-Reset"]) <= time.time() + reset_after + 0.05
        buckets.add(h["X-RateLimit-Bucket"])
    assert len(buckets) == 1 and "" not in buckets

    async with env.http.post(env.url(path), headers={"Authorization": f"Bot {env.bot.token}"},
                             json={"content": "one too many"}) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 429 and resp.headers["Content-Type"] == "application/json"
        assert 0 < body["retry_after"] <= 1.0 and body["global"] is False
        assert int(resp.headers["Retry-After"]) >= body["retry_after"]
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        assert resp.headers["X-RateLimit-Scope"] == "user"
    assert limits.limited == 1
    assert [m.content for m in env.sb.messages(env.captions)] == ["m2", "m1", "m0"]

    # other channels have buckets of their own
    other = env.sb.add_channel(env.guild, "other", kind="text")
    resp = await env.call("POST", f"/channels/{other.id}/messages", env.bot, json={"content": "fine"})
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "2"


async def test_discord_py_waits_out_the_limit_and_succeeds(limited: Server) -> None:
    env, limits = limited, limited.sb.rest.rate_limits
    http = await dpy_http(env, env.bot)
    start = time.monotonic()
    for i in range(limits.limit + 2):
        await http.send_message(env.captions.id, params=params(content=f"n{i}"))
    elapsed = time.monotonic() - start
    assert elapsed >= limits.per_s, f"{limits.limit + 2} messages in {elapsed:.2f} s: no wait for the window"
    assert [m.content for m in env.sb.messages(env.captions)] == [f"n{i}" for i in range(limits.limit + 2)]
    assert limits.limited == 0  # discord.py read the headers and never needed a 429


async def test_shared_limit_sends_no_headers_and_discord_py_retries_after_429(limited: Server) -> None:
    env, limits = limited, limited.sb.rest.rate_limits
    limits.shared = True
    start = time.monotonic()  # the window opens no earlier than this
    resp = await env.call("POST", f"/channels/{env.captions.id}/messages", env.bot, json={"content": "a"})
    assert resp.status == 200 and not any(k.lower().startswith("x-ratelimit") for k in resp.headers)

    http = await dpy_http(env, env.bot)
    for i in range(limits.limit):  # one was already sent: the last of these meets a 429
        await http.send_message(env.captions.id, params=params(content=f"s{i}"))  # no exception: it retried
    elapsed = time.monotonic() - start
    assert limits.limited >= 1, "the sandbox never answered 429"
    assert elapsed >= limits.per_s, f"the last message was accepted {elapsed:.2f} s in, inside the window"
    assert [m.content for m in env.sb.messages(env.captions)] == ["a"] + [f"s{i}" for i in range(limits.limit)]


# --- 6. gateway ------------------------------------------------------------------------------------------------


async def test_gateway_hello_first_and_bad_identify_closes_4004(env: Server) -> None:
    gw = await RawGateway.open(env)
    hello = await gw.recv()
    assert hello["op"] == 10 and hello["s"] is None and hello["d"]["heartbeat_interval"] > 0
    await gw.send(2, {"token": "not-a-token", "intents": INTENTS, "properties": {}})
    msg = await asyncio.wait_for(gw.ws.receive(), 3)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4004)

    # anything but identify before identifying: 4003
    gw2 = await RawGateway.open(env)
    await gw2.recv()
    await gw2.send(4, {"guild_id": str(env.guild.id), "channel_id": str(env.lobby.id)})
    msg = await asyncio.wait_for(gw2.ws.receive(), 3)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4003)
    assert env.guild.voice == {}


@pytest.mark.parametrize("compress", [True, False], ids=["zlib-stream", "json-text"])
async def test_gateway_ready_guild_create_and_heartbeat(env: Server, compress: bool) -> None:
    if compress:
        assert discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE == "zlib-stream"
    # someone is already in voice when the bot connects
    alice = await RawGateway.open(env)
    await alice.identify(env.alice)
    await alice.voice(env.guild, env.lobby)
    await alice.until("VOICE_SERVER_UPDATE")

    gw = await RawGateway.open(env, compress=compress)
    ready = await gw.identify(env.bot)
    assert ready["s"] == 1 and ready["d"]["user"]["id"] == str(env.bot.id)
    assert ready["d"]["application"]["id"] == str(env.bot.id)
    assert ready["d"]["guilds"] == [{"id": str(env.guild.id), "unavailable": True}]
    assert ready["d"]["session_id"] and ready["d"]["resume_gateway_url"] == env.sb.gateway_url
    created = await gw.recv()
    assert created["t"] == "GUILD_CREATE" and created["s"] == 2
    g = created["d"]
    assert g["id"] == str(env.guild.id) and g["unavailable"] is False
    assert {c["id"]: c["type"] for c in g["channels"]} == {
        str(env.lobby.id): 2, str(env.output.id): 2, str(env.captions.id): 0}
    everyone = next(r for r in g["roles"] if r["id"] == str(env.guild.id))
    assert everyone["name"] == "@everyone" and int(everyone["permissions"]) & Perm.CONNECT
    assert [(v["user_id"], v["channel_id"]) for v in g["voice_states"]] == [(str(env.alice.id), str(env.lobby.id))]
    assert str(env.alice.id) in {m["user"]["id"] for m in g["members"]}

    await gw.send(1, 2)
    ack = await gw.recv()
    assert ack["op"] == 11 and ack["t"] is None

    kinds = {f.type for f in gw.frames}
    if compress:
        assert kinds == {aiohttp.WSMsgType.BINARY}
        assert all(f.data.endswith(ZLIB_SUFFIX) for f in gw.frames)
        # one zlib stream for the whole connection, as Discord sends it: a frame alone does not inflate
        with pytest.raises(zlib.error):
            zlib.decompressobj().decompress(gw.frames[2].data)
    else:
        assert kinds == {aiohttp.WSMsgType.TEXT}


async def test_discord_py_client_sees_the_guild_through_zlib(env: Server) -> None:
    """discord.py's own gateway client (it asks for zlib-stream) builds its cache from the sandbox."""
    bot = await connect(env, env.bot)
    assert env.sb.gateway.sessions_of(env.bot.id)[0].zlib_stream
    guild = bot.client.get_guild(env.guild.id)
    assert guild is not None and guild.name == "Guild A"
    assert {c.id for c in guild.voice_channels} == {env.lobby.id, env.output.id}
    assert [c.id for c in guild.text_channels] == [env.captions.id]
    assert guild.default_role.id == env.guild.id
    assert guild.me.id == env.bot.id
    assert guild.get_channel(env.lobby.id).permissions_for(guild.me).connect  # type: ignore[union-attr]
    assert bot.client.application_id == env.bot.id


async def test_voice_join_without_connect_gets_no_voice_server_update(env: Server) -> None:
    env.sb.deny(env.lobby, env.alice, Perm.CONNECT)
    alice = await RawGateway.open(env)
    await alice.identify(env.alice)
    await alice.drain()  # GUILD_CREATE
    await alice.voice(env.guild, env.lobby)
    assert await alice.drain() == []  # nothing answered before the heartbeat ack
    assert env.alice.id not in env.guild.voice

    # the same session into a channel she may join: answered
    await alice.voice(env.guild, env.output)
    answers = await alice.drain()
    assert [p["t"] for p in answers] == ["VOICE_STATE_UPDATE", "VOICE_SERVER_UPDATE"]
    assert answers[0]["d"]["channel_id"] == str(env.output.id)
    assert answers[1]["d"]["token"] and answers[1]["d"]["endpoint"] == env.sb.voice.endpoint


async def test_a_closed_session_takes_its_voice_state_away(env: Server) -> None:
    watcher = await RawGateway.open(env)
    await watcher.identify(env.bot)
    alice = await RawGateway.open(env)
    ready = await alice.identify(env.alice)
    await alice.voice(env.guild, env.lobby)
    server = (await alice.until("VOICE_SERVER_UPDATE"))["d"]
    joined = await watcher.until("VOICE_STATE_UPDATE")
    assert joined["d"]["user_id"] == str(env.alice.id) and joined["d"]["channel_id"] == str(env.lobby.id)

    # Alice's voice connection, identified with the grant
    identify = {"op": 0, "d": {"server_id": str(env.guild.id), "user_id": str(env.alice.id),
                               "session_id": ready["d"]["session_id"], "token": server["token"]}}
    voice = await env.http.ws_connect(f"wss://{server['endpoint']}/?v=8")
    env.closers.append(voice.close)
    assert json.loads((await voice.receive()).data)["op"] == 8  # hello
    await voice.send_str(json.dumps(identify))
    assert json.loads((await voice.receive()).data)["op"] == 2  # ready

    await alice.ws.close()  # her client goes away
    left = await watcher.until("VOICE_STATE_UPDATE")
    assert left["d"]["user_id"] == str(env.alice.id) and left["d"]["channel_id"] is None
    assert env.alice.id not in env.guild.voice and env.sb.in_voice(env.guild, env.lobby) == []

    # ... and the voice server dropped her: the connection closed, the grant no longer identifies
    while (msg := await asyncio.wait_for(voice.receive(), 3)).type not in (
            aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
        pass
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4014)  # Disconnected
    again = await env.http.ws_connect(f"wss://{server['endpoint']}/?v=8")
    env.closers.append(again.close)
    await again.receive()
    await again.send_str(json.dumps(identify))
    msg = await asyncio.wait_for(again.receive(), 3)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4004)


# --- 7. snowflakes and invites ------------------------------------------------------------------------------


def test_snowflakes_increase_and_carry_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    flakes = sandbox_state.Snowflakes()
    ids = [flakes() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    when = discord.utils.snowflake_time(ids[-1]).timestamp()
    assert abs(when - time.time()) < 5
    # a wall clock stepped back (NTP) must not make ids go backwards
    last = ids[-1]
    real = time.time
    monkeypatch.setattr(sandbox_state.time, "time", lambda: real() - 60)
    later = [flakes() for _ in range(3)]
    assert later[0] > last and later == sorted(later) and len(set(later)) == 3


async def test_ids_of_created_things_increase(env: Server) -> None:
    http = await dpy_http(env, env.bot)
    sent = [int((await http.send_message(env.captions.id, params=params(content=str(i))))["id"]) for i in range(5)]
    assert sent == sorted(sent) and len(set(sent)) == 5
    assert sent[0] > env.captions.id > env.guild.id > env.bot.id


async def test_invite_of_a_connected_bot_dispatches_guild_create(env: Server) -> None:
    bot = await connect(env, env.bot)
    raw = await RawGateway.open(env)
    await raw.identify(env.bot)
    await raw.drain()
    other = env.sb.add_guild("Guild B")
    room = env.sb.add_channel(other, "room")
    assert bot.client.get_guild(other.id) is None

    joined = asyncio.get_running_loop().create_future()
    bot.client.event(_once(joined, "on_guild_join"))
    await env.sb.invite(other, env.bot)
    created = await raw.until("GUILD_CREATE")
    assert created["d"]["id"] == str(other.id) and [c["id"] for c in created["d"]["channels"]] == [str(room.id)]
    assert "unavailable" not in created["d"]  # a join, not an outage ending: discord.py tells them apart by it
    guild = await asyncio.wait_for(joined, 3)
    assert guild.id == other.id and bot.client.get_guild(other.id) is guild
    assert guild.get_channel(room.id) is not None

    # a session without the GUILDS intent is not sent guilds
    quiet = await RawGateway.open(env)
    await quiet.identify(env.bot, intents=0)
    assert await quiet.drain() == []
    await env.sb.invite(env.sb.add_guild("Guild C"), env.bot)
    assert await quiet.drain() == []


def _once(future: asyncio.Future[Any], name: str) -> Callable[..., Awaitable[None]]:
    async def handler(*args: Any) -> None:
        if not future.done():
            future.set_result(args[0] if len(args) == 1 else args)

    handler.__name__ = name
    return handler
