"""Slash-command interactions as Discord runs them: the payload a client receives, and the rules it must keep.

Pure (no I/O). An interaction must get its first response within 3 s and only once; after that its
token serves follow-ups and `@original` edits for 15 minutes. A member's command is built the way Discord
nests it: the group command, one subcommand option, its options, and `resolved` entries for channels.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from bot.sandbox.state import Channel, ChannelType, Guild, Message, User, World

RESPOND_WITHIN_S = 3.0
TOKEN_LIFETIME_S = 15 * 60

# Interaction callback types (Discord's InteractionResponseType).
PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE = 1, 4, 5, 6, 7, 8

# Application command option types.
OPT_SUBCOMMAND, OPT_STRING, OPT_INTEGER, OPT_BOOLEAN, OPT_USER, OPT_CHANNEL = 1, 3, 4, 5, 6, 7


class InteractionRefused(Exception):
    """What Discord answers when a client breaks an interaction rule: HTTP status, JSON error code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(eq=False)
class Interaction:
    id: int
    token: str
    application_id: int
    guild: Guild
    channel: Channel
    user: User
    name: str
    subcommand: str
    options: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    response_type: int | None = None
    original: Message | None = None
    followups: list[Message] = field(default_factory=list)
    responded: asyncio.Event = field(default_factory=asyncio.Event)
    refusals: list[str] = field(default_factory=list)  # rule violations the client made, for tests to read

    def acknowledge(self, response_type: int, now: float | None = None) -> None:
        """The first callback: in time and only once, or Discord refuses it."""
        now = time.monotonic() if now is None else now
        if self.response_type is not None:
            self.refusals.append("already acknowledged")
            raise InteractionRefused(400, 40060, "Interaction has already been acknowledged.")
        if now - self.created > RESPOND_WITHIN_S:
            self.refusals.append("too late")
            raise InteractionRefused(404, 10062, "Unknown interaction")
        self.response_type = response_type
        self.responded.set()

    def check_token(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self.created > TOKEN_LIFETIME_S:
            raise InteractionRefused(401, 50027, "Invalid Webhook Token")
        if self.response_type is None:
            raise InteractionRefused(404, 10015, "Unknown Webhook")

    @property
    def messages(self) -> list[Message]:
        return ([self.original] if self.original is not None else []) + self.followups

    def payload(self, world: World, command_id: int | None) -> dict[str, Any]:
        """INTERACTION_CREATE's `d` for a chat-input command with one subcommand."""
        options, resolved_channels = [], {}
        for name, value in self.options.items():
            if isinstance(value, Channel):
                options.append({"name": name, "type": OPT_CHANNEL, "value": str(value.id)})
                resolved_channels[str(value.id)] = {
                    "id": str(value.id), "name": value.name, "type": int(value.type), "guild_id": str(value.guild_id),
                    "parent_id": None, "flags": 0,
                    "permissions": str(world.permissions(self.guild, value, self.user.id)),
                }
            elif isinstance(value, bool):
                options.append({"name": name, "type": OPT_BOOLEAN, "value": value})
            elif isinstance(value, int):
                options.append({"name": name, "type": OPT_INTEGER, "value": value})
            else:
                options.append({"name": name, "type": OPT_STRING, "value": str(value)})
        data: dict[str, Any] = {
            "id": str(command_id or 0), "name": self.name, "type": 1, "guild_id": str(self.guild.id),
            "options": [{"name": self.subcommand, "type": OPT_SUBCOMMAND, "options": options}],
        }
        if resolved_channels:
            data["resolved"] = {"channels": resolved_channels}
        app_perms = world.permissions(self.guild, self.channel, self.application_id)
        return {
            "id": str(self.id), "application_id": str(self.application_id), "type": 2, "data": data,
            "guild_id": str(self.guild.id), "channel_id": str(self.channel.id),
            "channel": {**self.channel.payload(), "permissions": str(world.permissions(
                self.guild, self.channel, self.user.id))},
            "guild": {"id": str(self.guild.id), "locale": "en-US", "features": []},
            "member": {**world.member_payload(self.guild, self.user.id),
                       "permissions": str(world.permissions(self.guild, self.channel, self.user.id))},
            "token": self.token, "version": 1, "app_permissions": str(app_perms), "locale": "en-US",
            "guild_locale": "en-US", "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild.id)},
            "context": 0, "attachment_size_limit": 10 * 1024 * 1024,
        }


def new_interaction(world: World, application: User, guild: Guild, channel: Channel, user: User, name: str,
                    subcommand: str, options: dict[str, Any]) -> Interaction:
    if channel.type not in (ChannelType.TEXT, ChannelType.VOICE):
        raise ValueError("commands are typed in a text or voice channel's chat")
    return Interaction(world.snowflake(), f"aW50ZXJhY3Rpb24{secrets.token_urlsafe(48)}", application.id, guild,
                       channel, user, name, subcommand, options)
