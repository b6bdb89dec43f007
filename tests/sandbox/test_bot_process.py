"""The bot as a process against the sandbox Discord, with disnake + libdave people speaking and listening.

One bot process serves every test in this module, each test in a guild of its own (two guilds at once is
the normal case here); the shutdown tests start their own process.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest
import pytest_asyncio

from bot.sandbox.state import MessageFlag, Perm
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
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            s.metrics_port = sock.getsockname()[1]
        s.bot = await s.start_bot(metrics={"port": s.metrics_port})
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


async def test_metrics_count_rooms_sessions_and_packets(env: Stack) -> None:
    """Runs after the first test: its room is still open and its packets were decoded."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{env.metrics_port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["parley_rooms"] >= 1, text
    assert values['parley_voice_packets_total{outcome="decoded"}'] > 50, text
    assert "Alice" not in text and "user" not in text  # no per-member labels
    assert values['parley_room_frames_untranslated_total{reason="withheld"}'] >= 0, text  # the rooms' counters
    assert values["parley_speaker_failures_total"] == 0, text
    # the delays members feel: Alice's speech went upstream, came back translated and was played
    for span in ("packet_to_websocket", "delta_to_frame", "speech_end_to_audio"):
        assert values[f"parley_{span}_seconds_count"] >= 1, text
    assert values["parley_packet_to_websocket_seconds_sum"] / values["parley_packet_to_websocket_seconds_count"] < 2


async def test_language_change_reaches_the_running_session(env: Stack) -> None:
    room = await env.room("Guild B")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    await alice.speak(env.wavs["morning"])
    await until(lambda: any("(→ es)" in c for c in env.captions(room)), 30, "a caption in the default language first")
    reply = await env.command(room, alice.user, "language", {"code": "eo"})
    assert "Esperanto" in reply.content, reply.content
    await asyncio.sleep(0.5)
    await alice.speak(env.wavs["morning"])
    await until(lambda: any("(→ eo)" in c for c in env.captions(room)), 30, "a caption labelled Esperanto")


async def test_a_language_the_backend_cannot_serve_is_refused_and_nothing_changes(env: Stack) -> None:
    room = await env.room("Guild F")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    await env.command(room, alice.user, "language", {"code": "es"})
    # no Debian apertium pair translates into German: bot.localrt cannot produce it
    reply = await env.command(room, alice.user, "language", {"code": "de"})
    assert "can't translate into `de`" in reply.content, reply.content
    assert reply.flags & MessageFlag.EPHEMERAL
    status = await env.command(room, alice.user, "status")
    assert "translated into es" in status.content, status.content
    await alice.speak(env.wavs["morning"])  # still translated, into Spanish
    await until(lambda: any("(→ es)" in c and "reuni" in c.lower() for c in env.captions(room)), 30,
                "a Spanish caption after the refusal")


async def test_listener_kicked_closes_the_room_and_moved_follows(env: Stack) -> None:
    room = await env.room("Guild G")
    alice = await env.person(room, "Alice", room.source)
    await env.command(room, alice.user, "join", {"output_channel": room.output, "caption_channel": room.captions})
    listener = env.sb.world.users[env.listener.id]
    # Moved by a moderator to another channel: it keeps interpreting, there.
    other = await env.sb.create_channel(room.guild, "Stage")
    bob = await env.person(room, "Bob", other)
    await env.sb.move(room.guild, listener, other)
    await until(lambda: listener in env.sb.in_voice(room.guild, other), 10, "the listener in the new channel")
    # Its voice connection there is made again and keyed into Bob's DAVE group; what Bob says before that is
    # said to an empty call. The test waits for it (a stall here is its own failure, not a missing caption).
    await until(lambda: any(e.name == "dave_ready" and e.data["room"] == (room.guild.id, other.id)
                            and listener.id in e.data["members"] for e in env.sb.events), 20,
                "the listener keyed into the new channel's DAVE group")
    status = await env.command(room, alice.user, "status")
    assert f"<#{other.id}>" in status.content, status.content
    await env.command(room, bob.user, "language", {"code": "es"})
    await bob.speak(env.wavs["morning"])
    await until(lambda: any("Bob" in c for c in env.captions(room)), 30, "Bob's caption after the move")
    # Kicked from voice: the room closes (no silent half-alive room) and can be started again.
    await env.sb.move(room.guild, listener, None)
    await until(lambda: not any(u.bot for u in env.sb.in_voice(room.guild, room.output)), 15,
                "the speaker account to leave too")
    status = await env.command(room, alice.user, "status")
    assert "isn't interpreting" in status.content, status.content
    await until(lambda: any("disconnected from" in c for c in env.captions(room)), 10, "a notice in the captions")
    again = await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    assert "Interpreting" in again.content, again.content


async def test_a_channel_the_listener_may_not_join_is_refused_at_once_and_leaves_nothing(env: Stack) -> None:
    room = await env.room("Guild I")
    alice = await env.person(room, "Alice", room.source)
    listener = env.sb.world.users[env.listener.id]
    await env.sb.set_overwrite(room.source, listener, Perm.CONNECT)
    t = time.monotonic()
    reply = await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    assert "Connect" in reply.content and time.monotonic() - t < 5, reply.content
    notices = [m.content for m in env.sb.messages(room.source) if not m.ephemeral]
    assert not notices, f"a consent notice announced a translation that is not happening: {notices}"
    await env.sb.set_overwrite(room.source, listener, 0)
    again = await env.command(room, alice.user, "join", {"caption_channel": room.captions})
    assert "Interpreting" in again.content, again.content


async def test_two_guilds_at_once(env: Stack) -> None:
    rooms = [await env.room("Guild H1"), await env.room("Guild H2")]
    people = [await env.person(r, "Alice", r.source) for r in rooms]
    for r, p, lang in zip(rooms, people, ("es", "eo"), strict=True):
        await env.command(r, p.user, "join", {"caption_channel": r.captions})
        await env.command(r, p.user, "language", {"code": lang})
    await asyncio.gather(*(p.speak(env.wavs["morning"]) for p in people))
    for r, lang in zip(rooms, ("es", "eo"), strict=True):
        await until(lambda r=r, lang=lang: any(f"(→ {lang})" in c for c in env.captions(r)), 30,
                    f"the {lang} caption in {r.guild.name}")
    assert not any("(→ eo)" in c for c in env.captions(rooms[0])), "captions crossed guilds"


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
    with env.rate_limited(1, 3.0) as limits:
        await env.command(room, alice.user, "join", {"caption_channel": room.captions})
        await env.command(room, alice.user, "language", {"code": "es"})
        limited = limits.limited
        await alice.speak(env.wavs["morning"])
        await alice.speak(env.wavs["morning"])
        await until(lambda: " ".join(env.captions(room)).lower().count("reuni") >= 2, 40,
                    "both translations in the captions despite 429s")
        assert limits.limited > limited, "the sandbox never rate-limited the captions"
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
