"""`python -m bot run` wiring: everything is built and connected to everything else before login."""

from __future__ import annotations

from pathlib import Path

from bot.config import load_settings
from bot.pipeline.rooms import RoomManager
from bot.run import build, listener_intents
from tests.test_config import run_cli


async def test_build_wires_the_commands_store_and_rooms(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(f"backend: local\nstore:\n  path: {tmp_path / 'p.sqlite3'}\n")
    settings = load_settings(tmp_path / "c.yaml", env={"DISCORD_TOKEN": "t", "DISCORD_SPEAKER_TOKEN": "s"})
    app = await build(settings)
    try:
        group = app.listener.tree.get_command("translate")
        assert group is not None
        assert {c.name for c in group.commands} == {"join", "leave", "language", "status", "optout", "transcript"}
        assert isinstance(app.rooms, RoomManager) and app.rooms.endpoint.url.startswith("ws://127.0.0.1:8765/")
        assert app.speaker is not None
        assert (tmp_path / "p.sqlite3").exists()
    finally:
        await app.close()


async def test_no_speaker_token_means_captions_only(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(f"backend: local\nstore:\n  path: {tmp_path / 'p.sqlite3'}\n")
    app = await build(load_settings(tmp_path / "c.yaml", env={"DISCORD_TOKEN": "t"}))
    try:
        assert app.speaker is None and app.rooms._playback is None
    finally:
        await app.close()


def test_listener_needs_no_privileged_intent() -> None:
    intents = listener_intents()
    assert intents.guilds and intents.voice_states
    assert not (intents.members or intents.presences or intents.message_content)


def test_run_without_a_discord_token_says_so(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("backend: local\n")
    r = run_cli("run", "--config", str(tmp_path / "c.yaml"))
    assert r.returncode == 2 and "DISCORD_TOKEN" in r.stderr and "Traceback" not in r.stderr


def test_discord_unreachable_at_login_is_one_line_and_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the block ends
    (tmp_path / "c.yaml").write_text(
        f"backend: local\nstore:\n  path: {tmp_path / 'p.sqlite3'}\n"
        f"discord:\n  api_base: http://127.0.0.1:{port}/api/v10\n  gateway_url: ws://127.0.0.1:{port}/\n")
    for env in ({"DISCORD_TOKEN": "fake"}, {"DISCORD_TOKEN": "fake", "DISCORD_SPEAKER_TOKEN": "fake"}):
        r = run_cli("run", "--config", str(tmp_path / "c.yaml"), env=env)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1, r.stderr
        assert errors[0].endswith(f"cannot reach Discord at http://127.0.0.1:{port}/api/v10: Connection refused")
        assert len(r.stderr.splitlines()) <= 4, r.stderr


async def test_shards_split_guilds_between_processes_for_both_accounts(tmp_path: Path) -> None:
    import discord
    from discord.ext import commands

    from bot.sandbox.gateway import shard_of  # the local Discord's rule, checked against discord.py's

    apps = []
    try:
        for shard in (0, 1):
            (tmp_path / f"c{shard}.yaml").write_text(
                f"backend: local\nstore:\n  path: {tmp_path / 'p.sqlite3'}\n"
                f"discord:\n  shard_count: 2\n  shard_ids: [{shard}]\n")
            env = {"DISCORD_TOKEN": "t", "DISCORD_SPEAKER_TOKEN": "s"}
            settings = load_settings(tmp_path / f"c{shard}.yaml", env=env)
            apps.append(await build(settings))
        for shard, app in enumerate(apps):
            assert isinstance(app.listener, commands.AutoShardedBot)
            assert (app.listener.shard_count, app.listener.shard_ids) == (2, [shard])
            assert isinstance(app.speaker.client, discord.AutoShardedClient)  # type: ignore[union-attr]
            assert (app.speaker.client.shard_count, app.speaker.client.shard_ids) == (2, [shard])  # type: ignore[union-attr]
            assert app.rooms._caps.owner.endswith(f"/shards-{shard}/2"), "each process has its own leases"
    finally:
        for app in apps:
            await app.close()
    # a guild goes to one process, by Discord's rule, as discord.py computes it for a guild it holds
    state = apps[0].listener._connection
    for guild_id in (81384788765712384, 1180000000000000001, 290926798626357250):
        guild = discord.Guild(data={"id": str(guild_id), "name": "g"}, state=state)
        assert guild.shard_id == shard_of(guild_id, 2)
    assert {shard_of(g, 2) for g in range(0, 64 << 22, 1 << 22)} == {0, 1}


def test_shard_settings_are_checked(tmp_path: Path) -> None:
    import pytest

    from bot.config import ConfigError

    for bad, why in (("shard_ids: [0]", "shard_ids needs shard_count"),
                     ("shard_count: 2\n  shard_ids: [2]", "from 0 to 1"),
                     ("shard_count: 2\n  shard_ids: [1, 1]", "distinct")):
        (tmp_path / "c.yaml").write_text(f"discord:\n  {bad}\n")
        with pytest.raises(ConfigError, match=why):
            load_settings(tmp_path / "c.yaml", env={})
