"""Rooms as members meet them, the bot as a process against the sandbox Discord (see test_bot_process.py):
transcripts as a file attachment, and two-way rooms."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from bot.sandbox.state import MessageFlag
from tests.sandbox.stack import Stack, loud_seconds, stack, synthesize, until

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


async def test_two_way_room_each_channel_hears_the_other_translated(env: Stack) -> None:
    room = await env.room("Guild W")
    alice = await env.person(room, "Alice", room.source)
    carol = await env.person(room, "Carol", room.output)
    await env.command(room, alice.user, "language", {"code": "es"})
    await env.command(room, carol.user, "language", {"code": "eo"})
    reply = await env.command(room, alice.user, "join", {"output_channel": room.output,
                                                         "caption_channel": room.captions, "two_way": True})
    assert "into each other" in reply.content, reply.content
    for channel, viewer in ((room.source, alice.user), (room.output, carol.user)):  # consent: both channels' chat
        notices = [m.content for m in env.sb.messages(channel, viewer=viewer) if not m.ephemeral]
        assert any("Live translation is on" in n and "two-way" in n for n in notices), (channel.name, notices)
    assert env.listener.id in {u.id for u in env.sb.in_voice(room.guild, room.source)}
    assert env.voice.id in {u.id for u in env.sb.in_voice(room.guild, room.output)}

    await alice.speak(env.wavs["morning"])  # Lobby → Interpretation, in Spanish, by the speaker account
    await until(lambda: loud_seconds(carol.heard(env.voice.id)) > 1.0, 30, "Carol to hear Alice's translation")
    await carol.speak(env.wavs["thanks"])  # Interpretation → Lobby, in Esperanto, by the listener
    await until(lambda: loud_seconds(alice.heard(env.listener.id)) > 1.0, 30, "Alice to hear Carol's translation")
    await until(lambda: any("Carol" in c and "(→ eo)" in c for c in env.captions(room)), 30, "Carol's caption")
    assert any("Alice" in c and "(→ es)" in c for c in env.captions(room))
    # Neither account's own playback was interpreted: only Alice and Carol ever had a session.
    status = await env.command(room, alice.user, "status")
    assert f"<#{room.source.id}> ⇄ <#{room.output.id}>" in status.content, status.content
    assert f"<@{alice.user.id}> → es" in status.content and f"<@{carol.user.id}> → eo" in status.content
    assert str(env.listener.id) not in status.content and str(env.voice.id) not in status.content
    transcript = await env.command(room, carol.user, "transcript")
    (attachment,) = transcript.attachments
    text = env.sb.world.files[int(attachment["id"])].decode("utf-8")
    assert "**Alice** (→ es)" in text and "**Carol** (→ eo)" in text

    await env.command(room, alice.user, "leave")
    await until(lambda: not any(u.bot for u in env.sb.in_voice(room.guild, room.source) +
                                env.sb.in_voice(room.guild, room.output)), 10, "both bots to leave voice")
    assert "Traceback" not in env.bot.text()


async def test_captions_under_the_speakers_name_through_a_webhook_when_parley_may_manage_webhooks(env: Stack) -> None:
    from bot.sandbox.state import Perm

    room = await env.room("Guild K")
    listener = env.sb.world.users[env.listener.id]
    await env.sb.set_overwrite(room.captions, listener, 0, allow=Perm.MANAGE_WEBHOOKS)
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "language", {"code": "es"})
    # The webhook is rate-limited too, with no headers to warn (a shared limit): 429s the client must honour.
    with env.rate_limited(1, 2.0) as limits:
        await env.command(room, alice.user, "join", {"caption_channel": room.captions})
        limited = limits.limited
        await alice.speak(env.wavs["morning"])
        await alice.speak(env.wavs["thanks"])
        posted = await until(lambda: [m for m in env.sb.messages(room.captions) if m.webhook is not None
                                      and "informe" in m.content.lower()], 40, "the second caption via the webhook")
    (hook,) = [h for h in env.sb.world.webhooks.values() if h.channel_id == room.captions.id]
    assert hook.name == "Parley captions" and hook.creator.id == env.listener.id
    captions = [m for m in env.sb.messages(room.captions) if m.webhook is hook]
    assert {m.username for m in captions} == {"Alice"}, "each caption under the speaker's own name"
    assert all(m.content.startswith("(→ es)") and "**Alice**" not in m.content for m in captions)
    assert posted[0].payload()["author"]["username"] == "Alice"
    assert any("reuni" in m.content.lower() for m in captions)
    assert limits.limited > limited, "the sandbox never rate-limited the webhook"
    assert " ".join(m.content for m in captions).lower().count("reuni") == 1, "nothing posted twice or lost"
    # A second room in the same channel reuses Parley's webhook rather than making another.
    await env.command(room, alice.user, "leave")
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    assert len([h for h in env.sb.world.webhooks.values() if h.channel_id == room.captions.id]) == 1
    assert "Traceback" not in env.bot.text()


async def test_same_language_speech_gets_no_paid_session(env: Stack) -> None:
    room = await env.room("Guild S")
    alice = await env.person(room, "Alice", room.source)
    bob = await env.person(room, "Bob", room.source)
    await env.command(room, alice.user, "language", {"code": "en", "speaks": "en"})  # she said so
    await env.command(room, bob.user, "language", {"code": "en"})  # he did not: his transcript shows it
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    before = set(env.localrt.sessions)
    await alice.speak(env.wavs["morning"])
    await asyncio.sleep(1.0)
    assert not set(env.localrt.sessions) - before, "a session was opened to translate English into English"
    status = await env.command(room, alice.user, "status")
    assert f"<@{alice.user.id}> is not translated: speaks en, hears en" in status.content, status.content
    for wav in ("morning", "thanks", "morning", "thanks"):  # each comes back as it was said (en → en)
        await bob.speak(env.wavs[wav])
        await asyncio.sleep(5.0)  # a pause ends an utterance (the translations protocol marks no ends)
    status = await env.command(room, bob.user, "status")  # judged after the third, when he spoke again
    assert f"<@{bob.user.id}> is not translated: already speaks en" in status.content, status.content
    assert "dropped" not in status.content  # no output channel: translated audio is not queued for nobody
    opened = set(env.localrt.sessions)
    await bob.speak(env.wavs["thanks"])
    await asyncio.sleep(1.0)
    assert not set(env.localrt.sessions) - opened, "Bob's speech was sent again after it was seen to be English"
    assert "Traceback" not in env.bot.text()
