"""Shards across processes, as Discord runs them: two `python -m bot run` processes with the same two accounts,
each identifying with its own `discord.shard_ids` of `shard_count` 2. The local Discord routes each guild's
events and its members' commands to the session holding the guild's shard ((guild_id >> 22) % 2), so a
guild's room lives in the process holding its shard, and the other process never hears of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.sandbox import gateway
from tests.sandbox.stack import Room, stack, until

pytestmark = [pytest.mark.timeout(240)]


def shard_of(room: Room) -> int:
    return gateway.shard_of(room.guild.id, 2)


async def test_each_process_interprets_the_guilds_of_its_own_shard(tmp_path: Path) -> None:
    async with stack(tmp_path) as env:
        shared_store = {"path": str(tmp_path / "shared.sqlite3")}  # one database for both, as in production

        def discord(shard: int) -> dict:
            return {"api_base": env.sb.api_base, "gateway_url": env.sb.gateway_url,
                    "ca_file": str(env.sb.tls.ca_file), "shard_count": 2, "shard_ids": [shard]}

        first = await env.start_bot(discord=discord(0), store=shared_store)
        second = await env.start_bot(same_accounts=True, discord=discord(1), store=shared_store)
        sessions = env.sb.gateway.sessions_of(env.listener.id)
        assert sorted(s.shard for s in sessions) == [(0, 2), (1, 2)]

        rooms: dict[int, Room] = {}
        for i in range(40):  # snowflakes are time-based: make guilds until each shard has one
            room = await env.room(f"Guild {i}")
            rooms.setdefault(shard_of(room), room)
            if len(rooms) == 2:
                break
        assert len(rooms) == 2
        for shard, process in ((0, first), (1, second)):
            room = rooms[shard]
            await env.person(room, f"Member {shard}", room.source)
            who = next(p for p in env.people if p.user.name == f"Member {shard}")
            reply = await env.command(room, who.user, "join", {"output_channel": room.output})
            assert "Interpreting" in reply.content, reply.content
            gid = str(room.guild.id)
            await until(lambda gid=gid, process=process: f"room {gid}: interpreting" in process.text(), 10,
                        "the shard's process to log its room")
            in_source = {u.id for u in env.sb.in_voice(room.guild, room.source)}
            in_output = {u.id for u in env.sb.in_voice(room.guild, room.output)}
            assert env.listener.id in in_source and env.voice.id in in_output
        for process in (first, second):
            code, took = await asyncio.to_thread(process.stop)  # the local Discord keeps answering
            assert code == 0 and took < 10, process.text()
            assert "Traceback" not in process.text()
        for shard, other in ((0, second), (1, first)):  # checked once both ran to the end, not only at the join
            assert f"room {rooms[shard].guild.id}" not in other.text(), "the other process heard of this guild"
