"""The sandbox's channel webhooks against discord.py's own clients: create and list need Manage Webhooks,
execute posts under the name it is given (Discord's message shape: the webhook is the author), edits go
through the webhook, a wrong token is 401, and executes are rate-limited per webhook with 429s."""

from __future__ import annotations

import aiohttp
import discord
import pytest

from bot.sandbox.state import Perm
from tests.sandbox.test_rest_gateway import Server, _connector, dpy_http, env, limited  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(30)


async def test_manage_webhooks_is_needed_to_create_or_list(env: Server) -> None:  # noqa: F811
    path = f"/channels/{env.captions.id}/webhooks"
    resp = await env.call("POST", path, env.bot, json={"name": "Parley captions"})
    assert resp.status == 403 and (await resp.json())["code"] == 50013
    assert (await env.call("GET", path, env.bot)).status == 403
    await env.sb.set_overwrite(env.captions, env.bot, 0, allow=Perm.MANAGE_WEBHOOKS)
    resp = await env.call("POST", path, env.bot, json={"name": "Discord bot"})
    assert resp.status == 400 and (await resp.json())["code"] == 50035  # names Discord refuses


async def test_create_list_execute_and_edit_with_discord_py(env: Server) -> None:  # noqa: F811
    await env.sb.set_overwrite(env.captions, env.bot, 0, allow=Perm.MANAGE_WEBHOOKS)
    http = await dpy_http(env, env.bot)
    data = await http.create_webhook(env.captions.id, name="Parley captions")
    assert data["type"] == 1 and data["channel_id"] == str(env.captions.id) and data["token"]
    assert data["application_id"] == str(env.bot.id) and data["user"]["id"] == str(env.bot.id)
    (listed,) = await http.channel_webhooks(env.captions.id)
    assert listed["id"] == data["id"]
    async with aiohttp.ClientSession(connector=_connector(env.sb)) as session:
        hook = discord.Webhook.partial(int(data["id"]), data["token"], session=session)
        msg = await hook.send("(→ es) Hola @everyone", username="Alice", avatar_url="https://example.invalid/a.png",
                              allowed_mentions=discord.AllowedMentions.none(), wait=True)
        assert msg.author.name == "Alice" and msg.webhook_id == int(data["id"]) and msg.author.bot
        edited = await msg.edit(content="(→ es) Hola a todos")
        assert edited.content == "(→ es) Hola a todos"
        stored = env.sb.world.messages[msg.id]
        assert stored.username == "Alice" and stored.author.id == env.bot.id and stored.edited
        bad = discord.Webhook.partial(int(data["id"]), "not-the-token", session=session)
        with pytest.raises(discord.HTTPException) as refused:
            await bad.send("x", wait=True)
        assert refused.value.status == 401


async def test_executes_are_rate_limited_per_webhook(limited: Server) -> None:  # noqa: F811
    s = limited
    await s.sb.set_overwrite(s.captions, s.bot, 0, allow=Perm.MANAGE_WEBHOOKS)
    data = await (await dpy_http(s, s.bot)).create_webhook(s.captions.id, name="Parley captions")
    statuses = [(await s.call("POST", f"/webhooks/{data['id']}/{data['token']}?wait=true", None,
                              json={"content": f"line {i}", "username": "Alice"})).status for i in range(5)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
