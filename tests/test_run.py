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
