"""Rooms as members meet them, the bot as a process against the sandbox Discord (see test_bot_process.py):
transcripts as a file attachment, and two-way rooms."""

from __future__ import annotations

import pytest
import pytest_asyncio

from bot.sandbox.state import MessageFlag
from tests.sandbox.stack import Stack, stack, synthesize, until

pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]

MORNING = "Good morning everyone. The meeting starts at ten."
THANKS = "Thank you. I will send the report this afternoon."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rooms-process")
    async with stack(tmp) as s:
        s.wavs = {"morning": synthesize(MORNING, tmp / "morning.wav"), "thanks": synthesize(THANKS, tmp / "thanks.wav")}
        s.bot = await s.start_bot()
        yield s


async def test_transcript_is_a_file_with_who_said_what_and_opted_out_members_never_in_it(env: Stack) -> None:
    room = await env.room("Guild T")
    alice = await env.person(room, "Alice", room.source)
    bob = await env.person(room, "Bob", room.source)
    await env.command(room, bob.user, "optout", {"enabled": True})
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    notices = [m.content for m in env.sb.messages(room.source) if not m.ephemeral]
    assert any("transcript" in n and "opted-out members are never in it" in n for n in notices), notices
    await env.command(room, alice.user, "language", {"code": "es"})
    await bob.speak(env.wavs["thanks"])  # opted out: never sent, never transcribed
    await alice.speak(env.wavs["morning"])
    await until(lambda: any("Alice" in c and "reuni" in c.lower() for c in env.captions(room)), 30,
                "Alice's Spanish caption")
    reply = await env.command(room, bob.user, "transcript")
    assert reply.flags & MessageFlag.EPHEMERAL, "the transcript is for the member who asked"
    assert "transcript so far" in reply.content, reply.content
    (attachment,) = reply.attachments
    assert attachment["filename"].endswith(".md")
    text = env.sb.world.files[int(attachment["id"])].decode("utf-8")
    assert text.startswith("# Transcript of #Lobby")
    assert "**Alice** (→ es): Good morning" in text and "reuni" in text.lower()
    assert "Bob" not in text and "report" not in text.lower()

    srt = await env.command(room, alice.user, "transcript", {"format": "srt"})
    (attachment,) = srt.attachments
    body = env.sb.world.files[int(attachment["id"])].decode("utf-8")
    assert attachment["filename"].endswith(".srt") and body.startswith("1\n00:00:") and "Alice: " in body

    denied = await env.command(room, alice.user, "transcript", {"delete": True})
    assert "Manage Server" in denied.content, denied.content
    owner = env.sb.world.users[room.guild.owner_id]
    deleted = await env.command(room, owner, "transcript", {"delete": True})
    assert "deleted" in deleted.content, deleted.content
    again = await env.command(room, alice.user, "transcript")
    (attachment,) = again.attachments
    assert "Good morning" not in env.sb.world.files[int(attachment["id"])].decode("utf-8")
    assert "Traceback" not in env.bot.text()
