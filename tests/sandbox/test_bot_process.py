"""The bot as a process against the sandbox Discord, with disnake + libdave people speaking and listening.

One bot process serves every test in this module, each test in a guild of its own (two guilds at once is
the normal case here); the shutdown tests start their own process.
"""

from __future__ import annotations

import asyncio
import signal

import pytest
import pytest_asyncio

from bot.sandbox.state import MessageFlag
from tests.sandbox.stack import BotProcess, Stack, loud_seconds, stack, synthesize, until

pytestmark = [pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="module")]

MORNING = "Good morning everyone. The meeting starts at ten."
LONG = ("I would like to talk about the budget for next year, and about the new office that we are going to open "
        "in the spring, and about the people who will work there.")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("whole-bot")
    async with stack(tmp) as s:
        s.wavs = {"morning": synthesize(MORNING, tmp / "morning.wav"), "long": synthesize(LONG, tmp / "long.wav")}
        s.bot = await s.start_bot()
        yield s


async def test_join_consent_speech_captions_and_translated_audio(env: Stack) -> None:
    room = await env.room("Guild A")
    alice = await env.person(room, "Alice", room.source)
    carol = await env.person(room, "Carol", room.output)
    reply = await env.command(room, alice.user, "join",
                              {"output_channel": room.output, "caption_channel": room.captions})
    assert reply.flags & MessageFlag.EPHEMERAL, "command replies are ephemeral"
    assert "Interpreting" in reply.content, reply.content
    # The consent notice is public: Carol (not the invoker) sees it in the source channel's chat.
    notices = [m.content for m in env.sb.messages(room.source, viewer=carol.user) if not m.ephemeral]
    assert any("translat" in n.lower() for n in notices), notices
    assert {u.id for u in env.sb.in_voice(room.guild, room.source)} >= {env.listener.id, alice.user.id}
    assert env.voice.id in {u.id for u in env.sb.in_voice(room.guild, room.output)}

    before = env.localrt.audio_bytes_received
    await env.command(room, alice.user, "language", {"code": "es"})
    await alice.speak(env.wavs["morning"])
    captions = await until(lambda: [c for c in env.captions(room) if "Alice" in c and "reuni" in c.lower()], 30,
                           "a Spanish caption under Alice's name")
    assert "⟶" in captions[0], captions
    await until(lambda: loud_seconds(carol.heard(env.voice.id)) > 1.0, 20, "Carol to hear the translation")
    assert env.localrt.audio_bytes_received > before
    assert "Traceback" not in env.bot.text()


async def test_language_change_reaches_the_running_session(env: Stack) -> None:
    room = await env.room("Guild B")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    await alice.speak(env.wavs["morning"])
    await until(lambda: any("(→ en)" in c for c in env.captions(room)), 30, "an English caption first")
    reply = await env.command(room, alice.user, "language", {"code": "eo"})
    assert "Esperanto" in reply.content, reply.content
    await asyncio.sleep(0.5)
    await alice.speak(env.wavs["morning"])
    await until(lambda: any("(→ eo)" in c for c in env.captions(room)), 30, "a caption labelled Esperanto")


async def test_opt_out_mid_sentence_sends_nothing_more_upstream(env: Stack) -> None:
    room = await env.room("Guild C")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    earlier = set(env.localrt.sessions)  # other guilds' sessions may still be open (idle, padding silence)
    speaking = asyncio.create_task(alice.speak(env.wavs["long"]))
    try:
        sessions = await until(lambda: [s for s in env.localrt.sessions - earlier if s.audio_bytes_received > 24000],
                               15, "Alice's audio upstream")
        reply = await env.command(room, alice.user, "optout", {"enabled": True})
        assert "opted out" in reply.content.lower() or "won't" in reply.content.lower(), reply.content
        sent = sum(s.audio_bytes_received for s in sessions)
        opened = set(env.localrt.sessions) | set(sessions)
        assert not speaking.done(), "the sentence must still be going on"
        await speaking
        await asyncio.sleep(1.5)  # more than a chunk and the silence clock
        assert sum(s.audio_bytes_received for s in sessions) == sent, "audio reached the backend after the opt-out"
        assert not set(env.localrt.sessions) - opened, "a session was opened after the opt-out"
        assert not any(s in env.localrt.sessions for s in sessions), "Alice's session is still open"
    finally:
        speaking.cancel()


async def test_leave_takes_both_accounts_out_of_voice(env: Stack) -> None:
    room = await env.room("Guild D")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"output_channel": room.output})
    assert env.sb.in_voice(room.guild, room.output)
    reply = await env.command(room, alice.user, "leave")
    assert "Stopped" in reply.content, reply.content
    await until(lambda: not any(u.bot for u in env.sb.in_voice(room.guild, room.source) +
                                env.sb.in_voice(room.guild, room.output)), 10, "both bots to leave voice")
    status = await env.command(room, alice.user, "status")
    assert "isn't interpreting" in status.content, status.content


async def test_rate_limited_captions_still_arrive_whole(env: Stack) -> None:
    room = await env.room("Guild E")
    alice = await env.person(room, "Alice", room.source)
    limits = env.sb.rest.rate_limits
    old = (limits.limit, limits.per_s, limits.shared)
    limits.limit, limits.per_s, limits.shared = 1, 3.0, True
    limits.buckets.clear()
    try:
        await env.command(room, alice.user, "join", {"caption_channel": room.captions})
        await env.command(room, alice.user, "language", {"code": "es"})
        limited = limits.limited
        await alice.speak(env.wavs["morning"])
        await alice.speak(env.wavs["morning"])
        await until(lambda: " ".join(env.captions(room)).lower().count("reuni") >= 2, 40,
                    "both translations in the captions despite 429s")
        assert limits.limited > limited, "the sandbox never rate-limited the captions"
    finally:
        limits.limit, limits.per_s, limits.shared = old
    assert "Traceback" not in env.bot.text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_signal_mid_sentence_exits_in_seconds_and_leaves_voice(env: Stack, sig: signal.Signals) -> None:
    first = (env.listener, env.voice)
    bot = await env.start_bot()  # a process of its own, with accounts of its own
    try:
        await _signal_mid_sentence(env, bot, sig)
    finally:
        env.listener, env.voice = first


async def _signal_mid_sentence(env: Stack, bot: BotProcess, sig: signal.Signals) -> None:
    room = await env.room(f"Guild {sig.name}")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"output_channel": room.output, "caption_channel": room.captions})
    speaking = asyncio.create_task(alice.speak(env.wavs["long"]))
    try:
        start = env.localrt.audio_bytes_received
        await until(lambda: env.localrt.audio_bytes_received > start + 48000, 15, "a session mid-sentence")
        code, seconds = await asyncio.to_thread(bot.stop, sig, 40)
    finally:
        speaking.cancel()
    assert code == 0, bot.text()[-2000:]
    assert seconds < 8, f"{sig.name}: exit took {seconds:.1f} s"
    assert not any(u.bot for u in env.sb.in_voice(room.guild, room.source) + env.sb.in_voice(room.guild, room.output))
    assert "Traceback" not in bot.text()
