"""The sandbox's world: users, guilds, channels, voice states, messages — and their Discord payloads.

Pure (no I/O): the REST and gateway layers read and change it, and render it with the payload builders
below, whose shapes follow Discord's API v10 documentation (the fields discord.py 2.7 and disnake 2.12
read). Permissions are computed the way Discord does for the parts Parley uses: the @everyone role's
permissions, then a channel's member overwrites.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import time
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

DISCORD_EPOCH_MS = 1_420_070_400_000


class Perm(IntFlag):
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    USE_VAD = 1 << 25
    MANAGE_WEBHOOKS = 1 << 29
    USE_APPLICATION_COMMANDS = 1 << 31


EVERYONE_PERMS = (
    Perm.VIEW_CHANNEL | Perm.SEND_MESSAGES | Perm.EMBED_LINKS | Perm.ATTACH_FILES | Perm.READ_MESSAGE_HISTORY
    | Perm.CONNECT | Perm.SPEAK | Perm.USE_VAD | Perm.USE_APPLICATION_COMMANDS
)
ALL_PERMS = (1 << 50) - 1


class ChannelType(IntEnum):
    TEXT = 0
    VOICE = 2


class MessageFlag(IntFlag):
    EPHEMERAL = 1 << 6
    LOADING = 1 << 7


class Snowflakes:
    """Increasing Discord-shaped ids (timestamp bits + a counter), so they sort like Discord's."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._last = 0

    def __call__(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        # The wall clock can step back (NTP): ids still only increase.
        self._last = max(self._last + 1, (ms << 22) | (next(self._counter) & 0x3FFFFF))
        return self._last


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


@dataclass
class User:
    id: int
    name: str
    bot: bool
    token: str

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "username": self.name, "discriminator": "0", "global_name": self.name,
            "avatar": None, "bot": self.bot, "system": False, "public_flags": 0, "flags": 0,
        }


@dataclass
class Channel:
    id: int
    guild_id: int
    name: str
    type: ChannelType
    position: int
    deny: dict[int, int] = field(default_factory=dict)  # member id → denied permission bits
    allow: dict[int, int] = field(default_factory=dict)  # member id → allowed permission bits

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "guild_id": str(self.guild_id), "name": self.name, "type": int(self.type),
            "position": self.position, "parent_id": None, "nsfw": False, "flags": 0,
            "permission_overwrites": [
                {"id": str(uid), "type": 1, "allow": str(self.allow.get(uid, 0)), "deny": str(self.deny.get(uid, 0))}
                for uid in sorted(set(self.deny) | set(self.allow))
            ],
        }
        if self.type == ChannelType.VOICE:
            data.update(bitrate=64000, user_limit=0, rtc_region=None, video_quality_mode=1, last_message_id=None,
                        rate_limit_per_user=0)
        else:
            data.update(topic=None, last_message_id=None, rate_limit_per_user=0)
        return data

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"


@dataclass
class VoiceState:
    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int
    author: User
    content: str
    flags: int = 0
    created: float = field(default_factory=time.time)
    edited: float | None = None
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    interaction_user_id: int | None = None  # for interaction responses (who may see an ephemeral one)
    webhook_id: int | None = None
    webhook: Webhook | None = None  # posted by a channel webhook: its author is the webhook, under this name
    username: str | None = None
    avatar_url: str | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MessageFlag.EPHEMERAL)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "channel_id": str(self.channel_id), "guild_id": str(self.guild_id),
            "author": self.author.payload(), "content": self.content, "timestamp": iso(self.created),
            "edited_timestamp": iso(self.edited) if self.edited else None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "attachments": self.attachments,
            "embeds": self.embeds, "pinned": False, "type": 0 if self.interaction_user_id is None else 20,
            "flags": int(self.flags), "components": [],
        }
        if self.webhook is not None:  # Discord's shape: the author is the webhook, named as the execute asked
            data["author"] = {"id": str(self.webhook.id), "username": self.username or self.webhook.name,
                              "avatar": None, "discriminator": "0000", "bot": True, "global_name": None}
            data["webhook_id"] = str(self.webhook.id)
            if self.webhook.application_id is not None:
                data["application_id"] = str(self.webhook.application_id)
        elif self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        return data


@dataclass
class Webhook:
    """A channel webhook (type 1, "Incoming"), made by a bot with Manage Webhooks."""

    id: int
    token: str
    guild_id: int
    channel_id: int
    name: str
    creator: User

    @property
    def application_id(self) -> int | None:
        return self.creator.id if self.creator.bot else None

    def payload(self, with_token: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id), "type": 1, "guild_id": str(self.guild_id), "channel_id": str(self.channel_id),
            "name": self.name, "avatar": None, "application_id": str(self.application_id)
            if self.application_id else None, "user": self.creator.payload(),
        }
        if with_token:
            data["token"] = self.token
        return data


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, float] = field(default_factory=dict)  # user id → joined at
    voice: dict[int, VoiceState] = field(default_factory=dict)  # user id → voice state (one per account)

    def role_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "name": "@everyone", "permissions": str(int(EVERYONE_PERMS)), "position": 0,
            "color": 0, "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False, "managed": False, "mentionable": False, "flags": 0, "icon": None, "unicode_emoji": None,
        }


class World:
    """Everything the sandbox knows. Mutated only from the sandbox's event loop."""

    def __init__(self) -> None:
        self.snowflake = Snowflakes()
        self.users: dict[int, User] = {}
        self.tokens: dict[str, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.messages: dict[int, Message] = {}
        self.commands: dict[tuple[int, int | None], list[dict[str, Any]]] = {}  # (application, guild|None)
        self.webhooks: dict[int, Webhook] = {}  # channel webhooks by id
        self.files: dict[int, bytes] = {}  # attachment id → bytes (transcripts and the like)

    # --- building a world ------------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False) -> User:
        uid = self.snowflake()
        user = User(uid, name, bot, f"{uid}.{secrets.token_urlsafe(24)}")
        self.users[uid] = user
        self.tokens[user.token] = user
        return user

    def add_guild(self, name: str, owner: User) -> Guild:
        guild = Guild(self.snowflake(), name, owner.id)
        self.guilds[guild.id] = guild
        guild.members[owner.id] = time.time()
        return guild

    def add_channel(self, guild: Guild, name: str, type: ChannelType) -> Channel:
        channel = Channel(self.snowflake(), guild.id, name, type, len(guild.channels))
        guild.channels[channel.id] = channel
        return channel

    def user_by_token(self, token: str) -> User | None:
        return self.tokens.get(token.removeprefix("Bot ").removeprefix("Bearer ").strip())

    def channel(self, channel_id: int) -> tuple[Guild, Channel] | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild, guild.channels[channel_id]
        return None

    def guilds_of(self, user_id: int) -> list[Guild]:
        return [g for g in self.guilds.values() if user_id in g.members]

    # --- rules ------------------------------------------------------------------------------------

    def permissions(self, guild: Guild, channel: Channel | None, user_id: int) -> int:
        if user_id == guild.owner_id:
            return ALL_PERMS
        perms = int(EVERYONE_PERMS)
        if channel is not None:
            perms = (perms & ~channel.deny.get(user_id, 0)) | channel.allow.get(user_id, 0)
        return perms

    def can(self, guild: Guild, channel: Channel, user_id: int, needed: Perm) -> bool:
        perms = self.permissions(guild, channel, user_id)
        return bool(perms & Perm.ADMINISTRATOR) or (perms & needed) == needed

    def visible_messages(self, channel_id: int, viewer: int | None = None) -> list[Message]:
        """The channel as `viewer` sees it (ephemeral replies only to whom they were sent)."""
        return sorted(
            (m for m in self.messages.values() if m.channel_id == channel_id
             and (not m.ephemeral or (viewer is not None and m.interaction_user_id == viewer))),
            key=lambda m: m.id,
        )

    # --- payloads -----------------------------------------------------------------------------------

    def member_payload(self, guild: Guild, user_id: int) -> dict[str, Any]:
        return {
            "user": self.users[user_id].payload(), "roles": [], "nick": None, "avatar": None, "flags": 0,
            "joined_at": iso(guild.members.get(user_id, time.time())), "deaf": False, "mute": False,
            "pending": False, "premium_since": None, "communication_disabled_until": None,
        }

    def voice_state_payload(self, guild: Guild, user_id: int) -> dict[str, Any]:
        state = guild.voice.get(user_id)
        return {
            "guild_id": str(guild.id), "channel_id": str(state.channel_id) if state else None,
            "user_id": str(user_id), "session_id": state.session_id if state else "", "deaf": False,
            "mute": False, "self_deaf": bool(state and state.self_deaf), "self_mute": bool(state and state.self_mute),
            "self_video": False, "suppress": False, "request_to_speak_timestamp": None,
            "member": self.member_payload(guild, user_id),
        }

    def guild_payload(self, guild: Guild, for_user: int) -> dict[str, Any]:
        """GUILD_CREATE: channels, the @everyone role, voice states and the members in voice (and the user).

        As Discord sends it when the user joins a guild: without `unavailable` (clients tell a join from a
        guild becoming available by that key; the gateway adds `"unavailable": false` after READY)."""
        in_voice = set(guild.voice)
        member_ids = [uid for uid in guild.members if uid in in_voice or uid == for_user]
        return {
            "id": str(guild.id), "name": guild.name, "owner_id": str(guild.owner_id), "icon": None,
            "splash": None, "discovery_splash": None, "banner": None, "description": None, "features": [],
            "afk_channel_id": None, "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0,
            "premium_tier": 0, "premium_subscription_count": 0, "preferred_locale": "en-US",
            "system_channel_id": None, "system_channel_flags": 0, "rules_channel_id": None,
            "public_updates_channel_id": None, "max_members": 500000, "max_video_channel_users": 25,
            "vanity_url_code": None, "application_id": None, "widget_enabled": False,
            "joined_at": iso(guild.members.get(for_user, time.time())), "large": False,
            "member_count": len(guild.members), "roles": [guild.role_payload()], "emojis": [], "stickers": [],
            "channels": [c.payload() for c in guild.channels.values()], "threads": [], "presences": [],
            "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
            "members": [self.member_payload(guild, uid) for uid in member_ids],
            "voice_states": [
                {k: v for k, v in self.voice_state_payload(guild, uid).items() if k not in ("guild_id", "member")}
                for uid in guild.voice
            ],
        }
