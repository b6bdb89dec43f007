"""The sandbox's REST API v10: what discord.py 2.7 calls at login and for Parley's features.

Login (`/users/@me`, `/oauth2/applications/@me`, `/gateway/bot`), application commands (bulk `PUT`, global
and per guild), interaction callbacks (`?with_response=1` bodies), follow-ups and `@original` edits through
`/webhooks/{application}/{token}`, channel messages (create, edit, delete), and channel webhooks (create and
list with Manage Webhooks, execute with `username`/`avatar_url` and `?wait=true`, edit/delete their messages),
rate-limited per webhook like Discord. It enforces what Discord
enforces and a bot can get wrong: the 3 s / once interaction rule, 2000-character messages, permissions,
and per-channel rate limits answered with 429 and Discord's rate-limit headers. Answers carry exactly
`Content-Type: application/json` (discord.py compares the header).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.sandbox.interactions import (
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    UPDATE_MESSAGE,
    Interaction,
    InteractionRefused,
)
from bot.sandbox.state import Channel, Guild, Message, MessageFlag, Perm, User, Webhook, World

log = logging.getLogger("parley.sandbox.rest")

MAX_CONTENT = 2000
MAX_WEBHOOKS_PER_CHANNEL = 15  # Discord: error 30007 past it


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.errors = status, code, message, errors


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status,
                        headers={"Content-Type": "application/json", "Via": "1.1 google", **(headers or {})})


@dataclass
class _Bucket:
    limit: int
    per_s: float
    window_start: float = 0.0
    used: int = 0

    def take(self, now: float) -> tuple[bool, float]:
        """(allowed, seconds until the window resets)."""
        if now - self.window_start >= self.per_s:
            self.window_start, self.used = now, 0
        reset_after = self.per_s - (now - self.window_start)
        if self.used >= self.limit:
            return False, reset_after
        self.used += 1
        return True, reset_after


@dataclass
class RateLimits:
    """Per-channel message buckets (Discord: about 5 per 5 s per channel for a bot)."""

    limit: int = 5
    per_s: float = 5.0
    # A shared-scope limit (Discord's per-channel shared resources): no headers announce it, so a client
    # meets it only as a 429, which it must honour by waiting `retry_after` and retrying.
    shared: bool = False
    buckets: dict[tuple[str, int], _Bucket] = field(default_factory=dict)
    limited: int = 0  # 429s served

    def check(self, kind: str, channel_id: int) -> dict[str, str]:
        bucket = self.buckets.setdefault((kind, channel_id), _Bucket(self.limit, self.per_s))
        now = time.monotonic()
        ok, reset_after = bucket.take(now)
        headers = {
            "X-RateLimit-Limit": str(bucket.limit), "X-RateLimit-Remaining": str(max(0, bucket.limit - bucket.used)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}", "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": f"{kind}-{channel_id}",
        }
        if not ok:
            self.limited += 1
            raise _RateLimited(reset_after, headers, "shared" if self.shared else "user")
        return {} if self.shared else headers


class _RateLimited(Exception):
    def __init__(self, retry_after: float, headers: dict[str, str], scope: str) -> None:
        super().__init__("rate limited")
        self.retry_after, self.headers, self.scope = retry_after, headers, scope


EventHook = Callable[[str, dict[str, Any]], None]


class Rest:
    """Routes under `/api/v10`. `interactions` is shared with the sandbox, which creates them."""

    def __init__(self, world: World, gateway_url: Callable[[], str], rate_limits: RateLimits | None = None,
                 on_event: EventHook | None = None) -> None:
        self.world = world
        self.gateway_url = gateway_url
        self.rate_limits = rate_limits or RateLimits()
        self.interactions: dict[int, Interaction] = {}
        self.on_event = on_event or (lambda name, data: None)
        self.counters: dict[str, int] = {"requests": 0, "errors": 0}

    def routes(self, prefix: str = "/api/v10") -> list[web.RouteDef]:
        r = [
            web.get("/users/@me", self.me),
            web.get("/oauth2/applications/@me", self.application),
            web.get("/gateway", self.gateway),
            web.get("/gateway/bot", self.gateway_bot),
            web.get("/applications/{app}/commands", self.get_commands),
            web.put("/applications/{app}/commands", self.put_commands),
            web.get("/applications/{app}/guilds/{guild}/commands", self.get_commands),
            web.put("/applications/{app}/guilds/{guild}/commands", self.put_commands),
            web.post("/interactions/{id}/{token}/callback", self.callback),
            web.post("/webhooks/{app}/{token}", self.followup),
            web.get("/webhooks/{app}/{token}/messages/{message}", self.webhook_message),
            web.patch("/webhooks/{app}/{token}/messages/{message}", self.webhook_message),
            web.delete("/webhooks/{app}/{token}/messages/{message}", self.webhook_message),
            web.get("/channels/{channel}/webhooks", self.channel_webhooks),
            web.post("/channels/{channel}/webhooks", self.channel_webhooks),
            web.get("/channels/{channel}", self.get_channel),
            web.get("/channels/{channel}/messages", self.list_messages),
            web.post("/channels/{channel}/messages", self.create_message),
            web.get("/channels/{channel}/messages/{message}", self.channel_message),
            web.patch("/channels/{channel}/messages/{message}", self.channel_message),
            web.delete("/channels/{channel}/messages/{message}", self.channel_message),
            web.get("/guilds/{guild}/members/{user}", self.get_member),
        ]
        return [web.route(d.method, prefix + d.path, self._guarded(d.handler)) for d in r]  # type: ignore[attr-defined]

    def _guarded(self, handler: Any) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            self.counters["requests"] += 1
            try:
                return await handler(request)
            except ApiError as e:
                self.counters["errors"] += 1
                body: dict[str, Any] = {"message": e.message, "code": e.code}
                if e.errors:
                    body["errors"] = e.errors
                return _json(body, e.status)
            except InteractionRefused as e:
                self.counters["errors"] += 1
                return _json({"message": e.message, "code": e.code}, e.status)
            except _RateLimited as e:
                body = {"message": "You are being rate limited.", "retry_after": round(e.retry_after, 3),
                        "global": False}
                headers = {**e.headers, "Retry-After": str(math.ceil(e.retry_after)), "X-RateLimit-Scope": e.scope}
                self.on_event("rate_limited", {"path": request.path, "retry_after": e.retry_after})
                return _json(body, 429, headers)
        return run

    # --- helpers ---------------------------------------------------------------------------------

    def _auth(self, request: web.Request) -> User:
        user = self.world.user_by_token(request.headers.get("Authorization", ""))
        if user is None:
            raise ApiError(401, 0, "401: Unauthorized")
        return user

    def _channel(self, request: web.Request) -> tuple[Guild, Channel]:
        found = self.world.channel(int(request.match_info["channel"]))
        if found is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return found

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """JSON, or multipart with `payload_json` and files (as discord.py sends attachments)."""
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            files: list[dict[str, Any]] = []
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    data = await part.read()  # type: ignore[union-attr]
                    files.append({"id": str(self.world.snowflake()), "filename": part.filename or "file",
                                  "size": len(data), "data": data})
            return payload, files
        if not request.can_read_body:
            return {}, []
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        return (body if isinstance(body, dict) else {"_list": body}), []

    def _check_content(self, payload: dict[str, Any], files: list[dict[str, Any]], creating: bool) -> None:
        content = payload.get("content")
        if content is not None and len(str(content)) > MAX_CONTENT:
            raise ApiError(400, 50035, "Invalid Form Body", {"content": {"_errors": [
                {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {MAX_CONTENT} or fewer in length."}]}})
        if creating and not content and not payload.get("embeds") and not files:
            raise ApiError(400, 50006, "Cannot send an empty message")

    def _new_message(self, guild: Guild, channel: Channel, author: User, payload: dict[str, Any],
                     files: list[dict[str, Any]], **extra: Any) -> Message:
        msg = Message(self.world.snowflake(), channel.id, guild.id, author, str(payload.get("content") or ""),
                      flags=int(payload.get("flags") or 0) & int(MessageFlag.EPHEMERAL),
                      embeds=list(payload.get("embeds") or []), attachments=self._attachments(files), **extra)
        self.world.messages[msg.id] = msg
        self.on_event("message_create", {"message": msg})
        return msg

    def _attachments(self, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for f in files:
            self.world.files[int(f["id"])] = f["data"]
            out.append({"id": f["id"], "filename": f["filename"], "size": f["size"],
                        "url": f"https://127.0.0.1/attachments/{f['id']}/{f['filename']}",
                        "proxy_url": f"https://127.0.0.1/attachments/{f['id']}/{f['filename']}"})
        return out

    def _edit(self, msg: Message, payload: dict[str, Any], files: list[dict[str, Any]]) -> Message:
        self._check_content(payload, files, creating=False)
        if "content" in payload:
            msg.content = str(payload["content"] or "")
        if "embeds" in payload:
            msg.embeds = list(payload["embeds"] or [])
        if files:
            msg.attachments = self._attachments(files)
        msg.flags &= ~int(MessageFlag.LOADING)
        msg.edited = time.time()
        self.on_event("message_update", {"message": msg})
        return msg

    def _delete(self, msg: Message) -> web.Response:
        self.world.messages.pop(msg.id, None)
        self.on_event("message_delete", {"message": msg})
        return web.Response(status=204)

    # --- login ------------------------------------------------------------------------------------

    async def me(self, request: web.Request) -> web.Response:
        return _json(self._auth(request).payload())

    async def application(self, request: web.Request) -> web.Response:
        # Every account gets an application: the sandbox's people are driven by bot libraries (discord.py
        # logs in through this endpoint), which real Discord only allows bots to do.
        user = self._auth(request)
        owner = {"id": "0", "username": "sandbox", "discriminator": "0", "avatar": None, "global_name": None}
        return _json({
            "id": str(user.id), "name": user.name, "icon": None, "description": "", "rpc_origins": [],
            "bot_public": True, "bot_require_code_grant": False, "bot": user.payload(), "owner": owner,
            "team": None, "verify_key": "0" * 64, "flags": 0, "summary": "", "tags": [],
            "approximate_guild_count": len(self.world.guilds_of(user.id)), "redirect_uris": [],
        })

    async def gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url()})

    async def gateway_bot(self, request: web.Request) -> web.Response:
        self._auth(request)
        return _json({"url": self.gateway_url(), "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}})

    # --- application commands ---------------------------------------------------------------------

    def _command_key(self, request: web.Request) -> tuple[int, int | None]:
        user = self._auth(request)
        app = int(request.match_info["app"])
        if app != user.id:
            raise ApiError(403, 50001, "Missing Access")
        guild = request.match_info.get("guild")
        return app, int(guild) if guild else None

    async def get_commands(self, request: web.Request) -> web.Response:
        return _json(self.world.commands.get(self._command_key(request), []))

    async def put_commands(self, request: web.Request) -> web.Response:
        key = self._command_key(request)
        body, _ = await self._body(request)
        commands = body.get("_list")
        if not isinstance(commands, list):
            raise ApiError(400, 50035, "Invalid Form Body")
        stored = []
        for c in commands:
            if not isinstance(c, dict) or not c.get("name"):
                raise ApiError(400, 50035, "Invalid Form Body")
            stored.append({**c, "id": str(self.world.snowflake()), "application_id": str(key[0]),
                           "guild_id": str(key[1]) if key[1] else None, "version": str(self.world.snowflake()),
                           "type": c.get("type", 1), "default_member_permissions": c.get("default_member_permissions"),
                           "options": c.get("options", [])})
        self.world.commands[key] = stored
        self.on_event("commands_synced", {"application_id": key[0], "guild_id": key[1],
                                          "names": [c["name"] for c in stored]})
        return _json(stored)

    # --- interactions -----------------------------------------------------------------------------

    def _interaction_by_token(self, request: web.Request) -> Interaction:
        token = request.match_info["token"]
        for it in self.interactions.values():
            if it.token == token and str(it.application_id) == request.match_info.get("app", str(it.application_id)):
                it.check_token()
                return it
        raise ApiError(404, 10015, "Unknown Webhook")

    async def callback(self, request: web.Request) -> web.Response:
        it = self.interactions.get(int(request.match_info["id"]))
        if it is None or it.token != request.match_info["token"]:
            raise ApiError(404, 10062, "Unknown interaction")
        body, files = await self._body(request)
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        if kind == CHANNEL_MESSAGE:
            self._check_content(data, files, creating=True)
        it.acknowledge(kind)
        self.on_event("interaction_response", {"interaction": it, "type": kind})
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            msg = self._new_message(it.guild, it.channel, self.world.users[it.application_id], data, files,
                                    interaction_user_id=it.user.id, webhook_id=it.application_id)
            if kind == DEFERRED_CHANNEL_MESSAGE:
                msg.flags |= int(MessageFlag.LOADING)
            it.original = msg
        elif kind == UPDATE_MESSAGE:
            raise ApiError(400, 40035, "Interaction has no message to update")  # chat-input commands have none
        if "with_response" not in request.query:
            return web.Response(status=204)
        result: dict[str, Any] = {"interaction": {
            "id": str(it.id), "type": 2, "activity_instance_id": None,
            "response_message_id": str(it.original.id) if it.original else None,
            "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
            "response_message_ephemeral": bool(it.original and it.original.ephemeral),
        }}
        if it.original is not None:
            result["resource"] = {"type": kind, "message": it.original.payload()}
        return _json(result)

    async def followup(self, request: web.Request) -> web.Response:
        hook = self._webhook_by_token(request)
        if hook is not None:
            return await self.execute_webhook(request, hook)
        it = self._interaction_by_token(request)
        body, files = await self._body(request)
        self._check_content(body, files, creating=True)
        msg = self._new_message(it.guild, it.channel, self.world.users[it.application_id], body, files,
                                interaction_user_id=it.user.id, webhook_id=it.application_id)
        it.followups.append(msg)
        return _json(msg.payload())

    async def webhook_message(self, request: web.Request) -> web.Response:
        hook = self._webhook_by_token(request)
        if hook is not None:
            return await self.channel_webhook_message(request, hook)
        it = self._interaction_by_token(request)
        which = request.match_info["message"]
        msg = it.original if which == "@original" else next(
            (m for m in it.messages if str(m.id) == which), None)
        if msg is None or msg.id not in self.world.messages:
            raise ApiError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return _json(msg.payload())
        if request.method == "DELETE":
            return self._delete(msg)
        body, files = await self._body(request)
        return _json(self._edit(msg, body, files).payload())

    # --- channel webhooks -------------------------------------------------------------------------

    def _webhook_by_token(self, request: web.Request) -> Webhook | None:
        """A channel webhook addressed by `/webhooks/{id}/{token}` (else it may be an interaction's)."""
        try:
            hook = self.world.webhooks.get(int(request.match_info["app"]))
        except ValueError:
            return None
        if hook is None:
            return None
        if not secrets.compare_digest(hook.token, request.match_info["token"]):
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return hook

    async def channel_webhooks(self, request: web.Request) -> web.Response:
        """GET lists a channel's webhooks, POST creates one; both need Manage Webhooks, as on Discord."""
        user = self._auth(request)
        guild, channel = self._channel(request)
        if not self.world.can(guild, channel, user.id, Perm.VIEW_CHANNEL):
            raise ApiError(403, 50001, "Missing Access")
        if not self.world.can(guild, channel, user.id, Perm.MANAGE_WEBHOOKS):
            raise ApiError(403, 50013, "Missing Permissions")
        mine = [h for h in self.world.webhooks.values() if h.channel_id == channel.id]
        if request.method == "GET":
            return _json([h.payload() for h in mine])
        body, _ = await self._body(request)
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 80 or "clyde" in name.lower() or "discord" in name.lower():
            raise ApiError(400, 50035, "Invalid Form Body", {"name": {"_errors": [
                {"code": "BASE_TYPE_BAD_LENGTH", "message": "Must be between 1 and 80 in length."}]}})
        if len(mine) >= MAX_WEBHOOKS_PER_CHANNEL:
            raise ApiError(400, 30007, "Maximum number of webhooks reached (15)")
        hook = Webhook(self.world.snowflake(), secrets.token_urlsafe(48), guild.id, channel.id, name, user)
        self.world.webhooks[hook.id] = hook
        self.on_event("webhook_create", {"webhook": hook})
        return _json(hook.payload())

    async def execute_webhook(self, request: web.Request, hook: Webhook) -> web.Response:
        """`POST /webhooks/{id}/{token}[?wait=true]`: a message under the webhook (and any username it names)."""
        guild, channel = self.world.guilds[hook.guild_id], self.world.guilds[hook.guild_id].channels[hook.channel_id]
        headers = self.rate_limits.check("webhook", hook.id)
        body, files = await self._body(request)
        self._check_content(body, files, creating=True)
        username = body.get("username")
        if username is not None and (not 1 <= len(str(username)) <= 80 or "clyde" in str(username).lower()
                                     or "discord" in str(username).lower()):
            raise ApiError(400, 50035, "Invalid Form Body", {"username": {"_errors": [
                {"code": "USERNAME_INVALID", "message": "Username cannot contain \"discord\" or \"clyde\"."}]}})
        msg = self._new_message(guild, channel, hook.creator, {**body, "flags": 0}, files, webhook=hook,
                                username=str(username) if username else None, avatar_url=body.get("avatar_url"))
        if request.query.get("wait", "").lower() in ("true", "1"):
            return _json(msg.payload(), headers=headers)
        return web.Response(status=204, headers=headers)

    async def channel_webhook_message(self, request: web.Request, hook: Webhook) -> web.Response:
        msg = self.world.messages.get(int(request.match_info["message"]))
        if msg is None or msg.webhook is not hook:
            raise ApiError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return _json(msg.payload())
        return await self._edit_or_delete(request, msg, self.rate_limits.check("webhook", hook.id))

    async def _edit_or_delete(self, request: web.Request, msg: Message, headers: dict[str, str]) -> web.Response:
        """PATCH or DELETE of a message the caller may change, with the rate-limit headers of its scope."""
        if request.method == "DELETE":
            resp = self._delete(msg)
            resp.headers.update(headers)
            return resp
        body, files = await self._body(request)
        return _json(self._edit(msg, body, files).payload(), headers=headers)

    # --- channels and messages --------------------------------------------------------------------

    async def get_channel(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        guild, channel = self._channel(request)
        if not self.world.can(guild, channel, user.id, Perm.VIEW_CHANNEL):
            raise ApiError(403, 50001, "Missing Access")
        return _json(channel.payload())

    async def get_member(self, request: web.Request) -> web.Response:
        self._auth(request)
        guild = self.world.guilds.get(int(request.match_info["guild"]))
        uid = int(request.match_info["user"])
        if guild is None or uid not in guild.members:
            raise ApiError(404, 10007, "Unknown Member")
        return _json(self.world.member_payload(guild, uid))

    def _may_post(self, user: User, guild: Guild, channel: Channel) -> None:
        if user.id not in guild.members or not self.world.can(guild, channel, user.id, Perm.VIEW_CHANNEL):
            raise ApiError(403, 50001, "Missing Access")
        if not self.world.can(guild, channel, user.id, Perm.SEND_MESSAGES):
            raise ApiError(403, 50013, "Missing Permissions")

    async def list_messages(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        guild, channel = self._channel(request)
        if not self.world.can(guild, channel, user.id, Perm.VIEW_CHANNEL | Perm.READ_MESSAGE_HISTORY):
            raise ApiError(403, 50001, "Missing Access")
        limit = max(1, min(100, int(request.query.get("limit", 50))))
        msgs = self.world.visible_messages(channel.id, viewer=user.id)[-limit:]
        return _json([m.payload() for m in reversed(msgs)])

    async def create_message(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        guild, channel = self._channel(request)
        self._may_post(user, guild, channel)
        headers = self.rate_limits.check("messages", channel.id)
        body, files = await self._body(request)
        self._check_content(body, files, creating=True)
        body = {**body, "flags": 0}  # ephemeral exists only for interaction responses
        return _json(self._new_message(guild, channel, user, body, files).payload(), headers=headers)

    async def channel_message(self, request: web.Request) -> web.Response:
        user = self._auth(request)
        _, channel = self._channel(request)
        msg = self.world.messages.get(int(request.match_info["message"]))
        if msg is None or msg.channel_id != channel.id or (msg.ephemeral and msg.interaction_user_id != user.id):
            raise ApiError(404, 10008, "Unknown Message")
        if request.method == "GET":
            return _json(msg.payload())
        if msg.author.id != user.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        return await self._edit_or_delete(request, msg, self.rate_limits.check("messages", channel.id))
