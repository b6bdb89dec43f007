"""RoomManager with a real SQLite Store, the real Mixer and an SDK-validated backend peer.

Only the Discord voice connection is a seam (no Discord here): a queue of VoiceFrames stands where
`ListeningVoiceClient.frames` is, exactly the type the receiver produces.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import discord
import numpy as np
import pytest

from bot.config import Endpoint, load_settings
from bot.pipeline.rooms import RoomManager, VoiceLink
from bot.pipeline.service import PipelineError
from bot.realtime.outputs import TargetText
from bot.realtime.session import TranslationSession
from bot.store import Store
from bot.voice.worker import VoiceFrame
from tests.realtime.peer import Faults, Peer, numbered_audio
from tests.realtime.test_session import fast_settings

FRAME = 960


class FakeVoice:
    def __init__(self, bots: frozenset[int] = frozenset()) -> None:
        self.queues: dict[int, asyncio.Queue] = {}
        self.disconnected: list[int] = []
        self.bots = bots

    async def __call__(self, guild_id: int, channel_id: int, exclude=None, *, speak: bool = False) -> VoiceLink:
        self.exclude = exclude
        q: asyncio.Queue = asyncio.Queue()
        self.queues[guild_id] = q
        self.playing: dict[int, object] = {}

        async def disconnect() -> None:
            self.disconnected.append(guild_id)

        def play(mixer) -> None:  # the listener playing a two-way room's way back
            self.playing[guild_id] = mixer

        return VoiceLink(q, disconnect, lambda uid: uid in self.bots, play=play if speak else None)


class FakePlayback:
    def __init__(self) -> None:
        self.mixers: dict[int, object] = {}
        self.problems: dict[int, str] = {}
        self.received: dict[int, asyncio.Queue] = {}
        self.links: dict[int, VoiceLink] = {}

    def problem_in(self, guild_id: int) -> str | None:
        return self.problems.get(guild_id)

    async def play(self, guild_id: int, channel_id: int, mixer, *, receive=None) -> None:
        self.mixers[guild_id] = mixer
        if receive is not None:  # two-way: the speaker account receives in the output channel too
            self.received[guild_id] = asyncio.Queue()
            self.receive_exclude = receive

    def output_link(self, guild_id: int) -> VoiceLink | None:
        q = self.received.get(guild_id)
        if q is None:
            return None

        async def disconnect() -> None:
            pass

        link = VoiceLink(q, disconnect, lambda uid: uid == 777)  # 777: a bot in the output channel
        self.links[guild_id] = link
        return link

    async def stop(self, guild_id: int) -> None:
        self.mixers.pop(guild_id, None)


async def speak(q: asyncio.Queue, user_id: int, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        q.put_nowait(VoiceFrame(user_id, pcm[i : i + FRAME]))
        await asyncio.sleep(0.02)
    q.put_nowait(VoiceFrame(user_id, b"", end=True))


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "parley.sqlite3")
    yield s
    await s.close()


class ListCaptions(list):
    """Records text outputs per room; opened and closed with it."""

    def __init__(self) -> None:
        super().__init__()
        self.open_rooms: dict[int, int] = {}
        self.labels: dict[tuple[int, int], str] = {}

    async def open(self, guild_id: int, channel_id: int) -> None:
        self.open_rooms[guild_id] = channel_id

    def speaker(self, guild_id: int, user_id: int, language: str) -> None:
        self.labels[guild_id, user_id] = language

    def __call__(self, guild_id: int, user_id: int, output) -> None:
        self.append((guild_id, user_id, output))

    async def close(self, guild_id: int) -> None:
        self.open_rooms.pop(guild_id, None)


def manager(peer: Peer, store: Store, **caps) -> tuple[RoomManager, FakeVoice, FakePlayback, list]:
    settings = fast_settings()
    settings.session.idle_timeout_s = 0.5
    for k, v in caps.items():
        setattr(settings.caps, k, v)
    captions = ListCaptions()
    voice, playback = FakeVoice(bots=frozenset({666})), FakePlayback()
    rooms = RoomManager(settings, store, Endpoint(peer.url, "translation", "m", None, 0.034), voice, playback,
                        captions=captions, output_link=playback.output_link)
    return rooms, voice, playback, captions


async def test_join_translate_play_caption_leave(store: Store) -> None:
    await store.set_language(1, 42, "fr")
    async with Peer() as peer:
        rooms, voice, playback, captions = manager(peer, store)
        status = await rooms.join(1, 100, 200, 300)
        assert captions.open_rooms == {1: 300}
        assert (status.source_channel_id, status.output_channel_id) == (100, 200)
        with pytest.raises(PipelineError, match="already interpreting"):
            await rooms.join(1, 101, 200, 300)
        await speak(voice.queues[1], 42, numbered_audio(6))
        await asyncio.sleep(0.2)
        mixer = playback.mixers[1]
        assert mixer.has_audio()
        frames = [np.frombuffer(mixer.read_frame(), "<i2") for _ in range(10)]
        assert all(f.size == 1920 for f in frames)  # 20 ms of 48 kHz stereo, as discord.py reads it
        assert max(np.abs(f).max() for f in frames) > 0  # the translation reached the output mix
        assert rooms.status(1).speakers[0].target_language == "fr"
        assert rooms.status(1).usd_today > 0  # the open session's cost counts before it is closed
        assert captions.labels == {(1, 42): "fr"}  # captions say which language the member is heard in
        await rooms.set_language(1, 42, "it")
        assert captions.labels == {(1, 42): "it"}
        await rooms.leave(1)
    assert peer.connections[0].languages == ["fr", "it"] and peer.connections[0].closed_by_client
    assert voice.disconnected == [1] and 1 not in playback.mixers and captions.open_rooms == {}
    assert any(isinstance(out, TargetText) and u == 42 for _, u, out in captions)
    assert await store.spend_today(1) > 0
    assert rooms.status(1) is None
    with pytest.raises(PipelineError, match="not interpreting"):
        await rooms.leave(1)


async def test_stored_opt_out_is_honoured_from_the_first_frame(store: Store) -> None:
    await store.set_opt_out(1, 13, True)
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        await speak(voice.queues[1], 13, numbered_audio(5))
        await asyncio.sleep(0.1)
        assert peer.connections == []
        assert rooms.status(1).opted_out == 1
        await rooms.leave(1)


async def test_caps_max_sessions_and_daily_budget(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, max_sessions=1)
        await rooms.join(1, 100, None, None)
        q = voice.queues[1]
        await asyncio.gather(speak(q, 1, numbered_audio(5)), speak(q, 2, numbered_audio(5)))
        await rooms.leave(1)
        assert len(peer.connections) == 1  # the second speaker was not admitted

    await store.add_spend(2, 5.0)
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, daily_budget_usd=5.0)
        await rooms.join(2, 100, None, None)
        await speak(voice.queues[2], 1, numbered_audio(3))
        await rooms.leave(2)
    assert peer.connections == []  # today's budget was already spent


async def test_output_channel_must_differ(store: Store) -> None:
    async with Peer() as peer:
        rooms, _, _, _ = manager(peer, store)
        with pytest.raises(PipelineError, match="must differ"):
            await rooms.join(1, 100, 100, None)


async def test_bots_in_the_channel_are_not_interpreted(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        await speak(voice.queues[1], 666, numbered_audio(5))  # a music bot
        await asyncio.sleep(0.1)
        assert peer.connections == [] and rooms.status(1).speakers == []
        await rooms.leave(1)


async def test_a_language_the_backend_refuses_is_refused_before_anything_changes(store: Store) -> None:
    async with Peer(faults=Faults(reject_language="fr")) as peer:
        rooms, *_ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        with pytest.raises(PipelineError, match="can't translate into `fr`"):
            await rooms.set_language(1, 42, "fr")
        with pytest.raises(PipelineError, match="can't translate into `fr`"):  # also without a room
            await rooms.set_language(2, 42, "fr")
        asked = len(peer.connections)
        with pytest.raises(PipelineError):
            await rooms.set_language(1, 43, "fr")
        assert len(peer.connections) == asked, "the answer is cached: the backend is asked once per language"
        await rooms.set_language(1, 42, "es")  # accepted
        await rooms.leave(1)


async def test_voice_connection_ending_under_a_room_closes_it(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, playback, captions = manager(peer, store)
        ended = asyncio.Event()

        async def join(guild_id: int, channel_id: int, exclude=None) -> VoiceLink:
            link = await FakeVoice.__call__(voice, guild_id, channel_id)
            link.ended = ended
            return link

        rooms._join_voice = join
        await rooms.join(1, 100, 200, 300)
        assert rooms.status(1) is not None and 1 in playback.mixers
        ended.set()  # kicked by a moderator
        for _ in range(100):
            if rooms.status(1) is None:
                break
            await asyncio.sleep(0.02)
        assert rooms.status(1) is None, "a room without its voice connection must not look alive"
        assert 1 not in playback.mixers and 1 not in captions.open_rooms
        assert voice.disconnected == [], "the connection was already gone: nothing to disconnect"
        await rooms.join(1, 100, 200, 300)  # and it can be started again
        await rooms.leave(1)


# --- issue 9: session leases, the live budget, languages checked before they are accepted --------------------


class SlowClose(TranslationSession):
    """A backend that takes long to finish a session (the server is slow to answer `session.close`)."""

    async def close(self) -> None:
        await asyncio.sleep(5)
        await super().close()


def live_sessions(rooms: RoomManager) -> int:
    return sum(sp.session is not None for r in rooms._rooms.values() for sp in r.room.speakers.values())


async def wait_for(predicate, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    assert predicate()


async def test_opt_out_during_an_idle_close_returns_the_slot_and_records_the_cost(store: Store) -> None:
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, max_sessions=1)
        rooms._session_factory = SlowClose
        await rooms.join(1, 100, None, None)
        await speak(voice.queues[1], 42, numbered_audio(3))
        await asyncio.sleep(0.8)  # idle: the session is closing (slowly) now
        speaker = rooms._rooms[1].room.speakers[42]
        assert speaker.session is not None and rooms.open_sessions == 1
        await rooms.set_opt_out(1, 42, True)  # cancels the speaker in the middle of its close
        assert rooms.open_sessions == live_sessions(rooms) == 0, "the slot came back"
        await asyncio.sleep(0.05)
        assert await store.spend_today(1) > 0, "and the session's cost was recorded"
        await speak(voice.queues[1], 43, numbered_audio(3))  # the slot is usable by someone else
        await wait_for(lambda: len(peer.connections) == 2)
        await rooms.leave(1)
        assert rooms.open_sessions == 0


async def test_leave_with_a_slow_backend_returns_every_slot(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.pipeline import room as room_module

    monkeypatch.setattr(room_module, "CLOSE_TIMEOUT_S", 0.3)  # the graceful close gives up, cancels the speaker
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, max_sessions=2)
        rooms._session_factory = SlowClose
        await rooms.join(1, 100, None, None)
        await asyncio.gather(speak(voice.queues[1], 1, numbered_audio(4)), speak(voice.queues[1], 2, numbered_audio(4)))
        assert rooms.open_sessions == live_sessions(rooms) == 2
        await rooms.leave(1)
        assert rooms.open_sessions == 0
        await rooms.join(1, 100, None, None)  # and a leave cancelled from above (shutdown) releases too
        await speak(voice.queues[1], 1, numbered_audio(4))
        leaving = asyncio.create_task(rooms.leave(1))
        await asyncio.sleep(0.1)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert rooms.open_sessions == 0
        await rooms.close()
    assert await store.spend_today(1) > 0.0001 * 3


class ListCaptionsWithNotices(ListCaptions):
    def __init__(self) -> None:
        super().__init__()
        self.notices: list[tuple[int, str]] = []

    async def notice(self, guild_id: int, text: str) -> None:
        self.notices.append((guild_id, text))


async def test_budget_counts_open_sessions_and_stops_them_with_one_notice(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    from bot.pipeline import rooms as rooms_module

    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store, daily_budget_usd=0.0006)  # about 1 s at $0.034/min
        captions = ListCaptionsWithNotices()
        rooms._captions = captions
        await rooms.join(1, 100, None, 300)
        caplog.set_level("WARNING", "parley.pipeline")
        await speak(voice.queues[1], 42, numbered_audio(30))  # 3 s of speech in one session
        await wait_for(lambda: rooms.open_sessions == 0)
        conn = peer.connections[0]
        assert conn.closed_by_client, "closed gracefully at the cap: the last words were translated"
        assert len(conn.audio) < 24_000 * 2 * 2.5, "it did not run to the end of the speech"
        assert len(peer.connections) == 1, "no new session past the budget"
        assert captions.notices == [(1, "⏸️ Today's translation budget ($0.00) is spent; "
                                        "translation resumes after midnight UTC.")]
        refusals = [r for r in caplog.records if "speaker 42: not translated" in r.getMessage()]
        assert len(refusals) == 1, "logged once per member, not per frame"
        status = rooms.status(1)
        assert status.usd_today >= 0.0006
        assert [(uid, "budget" in why) for uid, why in status.not_translated] == [(42, True)]
        tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        monkeypatch.setattr(rooms_module, "_today", lambda: tomorrow)
        assert rooms.status(1).usd_today == 0.0, "after UTC midnight yesterday's spend is not today's"
        await rooms.leave(1)


async def test_a_stored_language_the_backend_cannot_serve_is_reported_at_join_and_not_retried(store: Store) -> None:
    await store.set_language(1, 42, "fr")
    async with Peer(faults=Faults(reject_language="fr")) as peer:
        rooms, voice, _, _ = manager(peer, store)
        join = voice.__call__

        async def with_members(guild_id: int, channel_id: int, exclude=None) -> VoiceLink:
            link = await join(guild_id, channel_id)
            link.members = lambda: [42, 43, 666]
            return link

        rooms._join_voice = with_members
        status = await rooms.join(1, 100, None, None)
        assert [uid for uid, _ in status.not_translated] == [42]
        assert "`fr`" in status.not_translated[0][1]
        asked = len(peer.connections)
        await speak(voice.queues[1], 42, numbered_audio(5))
        await asyncio.sleep(0.1)
        assert len(peer.connections) == asked, "no session is tried for a language known to be refused"
        assert [uid for uid, _ in rooms.status(1).not_translated] == [42]
        await rooms.set_language(1, 42, "es")
        await store.set_language(1, 42, "es")  # as the cog does, once the room accepted it
        await speak(voice.queues[1], 42, numbered_audio(5))
        await wait_for(lambda: any(c.languages == ["es"] for c in peer.connections))
        assert rooms.status(1).not_translated == []
        await rooms.leave(1)


async def test_a_refused_language_found_when_speaking_is_not_retried(store: Store) -> None:
    await store.set_language(1, 42, "fr")
    async with Peer(faults=Faults(reject_language="fr")) as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, None, None)  # 42 was not in the channel at join
        await speak(voice.queues[1], 42, numbered_audio(5))
        await asyncio.sleep(0.1)
        assert len(peer.connections) == 1
        await speak(voice.queues[1], 42, numbered_audio(5))
        await asyncio.sleep(0.1)
        assert len(peer.connections) == 1, "the refusal is remembered, not retried"
        assert "`fr`" in dict(rooms.status(1).not_translated)[42]
        await rooms.leave(1)


async def test_languages_listed_by_a_local_backend(store: Store) -> None:
    from aiohttp import web

    asked: list[str] = []

    async def languages(request: web.Request) -> web.Response:
        asked.append(request.headers.get("Authorization", ""))
        return web.json_response({"output_languages": ["es", "de", "pt-BR"], "input_languages": ["en"]})

    app = web.Application()
    app.router.add_get("/v1/languages", languages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        settings = fast_settings()
        settings.backend = "local"
        endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime/translations?model=m", "translation", "m", None, 0)
        rooms = RoomManager(settings, store, endpoint, FakeVoice())
        assert await rooms.output_languages() == {"es", "de", "pt-BR"}
        await rooms.check_language("de")
        await rooms.check_language("pt-br")
        with pytest.raises(PipelineError, match="can't translate into `fr`"):
            await rooms.check_language("fr")
        assert len(asked) == 1, "the list is cached"
    finally:
        await runner.cleanup()

    # a backend that does not answer GET /v1/languages: each language is probed (and cached) as before
    async with Peer(faults=Faults(reject_language="fr")) as peer:
        settings = fast_settings()
        settings.backend = "local"
        rooms = RoomManager(settings, store, Endpoint(peer.url, "translation", "m", None, 0), FakeVoice())
        assert await rooms.output_languages() is None
        with pytest.raises(PipelineError, match="can't translate into `fr`"):
            await rooms.check_language("fr")
        await rooms.check_language("es")
        assert len(peer.connections) == 2

    settings = fast_settings()
    settings.backend = "openai-realtime"  # an instructed model: any language, nothing to ask
    rooms = RoomManager(settings, store, Endpoint("ws://127.0.0.1:9/v1/realtime", "realtime", "m", None, 0),
                        FakeVoice())
    assert await rooms.output_languages() is None
    await rooms.check_language("xh")


async def test_the_capture_exclusion_follows_opt_outs_live(store: Store) -> None:
    """The listener's capture is told who is opted out, and learns of a new opt-out at once (same set)."""
    await store.set_opt_out(1, 7, True)
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, None, None)
        assert voice.exclude is not None and voice.exclude(7) and not voice.exclude(8)
        await rooms.set_opt_out(1, 8, True)
        assert voice.exclude(8)
        await rooms.set_opt_out(1, 7, False)
        assert not voice.exclude(7)
        await rooms.leave(1)


async def test_playback_trouble_shows_in_status_and_shutdown_takes_no_new_rooms(store: Store) -> None:
    async with Peer() as peer:
        rooms, _, playback, _ = manager(peer, store)
        await rooms.join(1, 100, 200, None)
        assert rooms.status(1).problem is None
        playback.problems[1] = "the speaker account lost its voice connection"
        problem = rooms.status(1).problem
        assert problem is not None and "not being played" in problem and "lost its voice connection" in problem
        await rooms.close()
        assert rooms.status(1) is None
        with pytest.raises(PipelineError, match="shutting down"):
            await rooms.join(2, 100, 200, None)


async def test_status_shows_how_the_mix_kept_up(store: Store) -> None:
    async with Peer() as peer:
        rooms, _, playback, _ = manager(peer, store)
        await rooms.join(1, 100, 200, 300)
        status = rooms.status(1)
        assert status.fastest_tempo == 1.0 and status.audio_dropped_s == 0.0
        mixer = playback.mixers[1]
        for _ in range(500):  # 40 ms of translation per 20 ms played: 2×, more than the catch-up tempo can take
            mixer.push(42, bytes(2 * 24 * 40))
            mixer.read_frame()
        status = rooms.status(1)
        assert 1.0 < status.audio_dropped_s < 10.0
        assert status.fastest_tempo > 1.2
        await rooms.leave(1)


async def test_transcript_while_running_kept_for_the_retention_then_deleted_and_opt_out_forgets(
    store: Store,
) -> None:
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        rooms.settings.transcripts.retention_s = 0.5
        assert rooms.transcript(1) is None
        await rooms.join(1, 100, 200, 300)
        q = voice.queues[1]
        await asyncio.gather(speak(q, 42, numbered_audio(4)), speak(q, 43, numbered_audio(4)))
        await asyncio.sleep(0.3)
        live = rooms.transcript(1)
        assert live is not None and live.live and live.channel_id == 100 and live.lines >= 2
        assert "Speaker 42" in live.text and "Speaker 43" in live.text and "(→ es)" in live.text
        await rooms.set_opt_out(1, 43, True)  # what they said before is gone too
        assert "Speaker 43" not in rooms.transcript(1).text
        await rooms.leave(1)
        kept = rooms.transcript(1, "vtt")
        assert kept is not None and not kept.live and kept.text.startswith("WEBVTT")
        assert "Speaker 42" in kept.text and "Speaker 43" not in kept.text
        await asyncio.sleep(0.7)
        assert rooms.transcript(1) is None  # the retention passed: deleted
        await rooms.join(1, 100, 200, 300)
        await speak(voice.queues[1], 42, numbered_audio(3))
        await asyncio.sleep(0.2)
        assert rooms.delete_transcript(1)  # an admin: at once, even while the room runs
        assert rooms.transcript(1).lines == 0
        await rooms.leave(1)
        assert rooms.transcript(1) is None and not rooms.delete_transcript(1)
        await rooms.close()


async def test_a_two_way_room_interprets_both_channels_into_each_other(store: Store) -> None:
    await store.set_language(1, 42, "fr")
    await store.set_language(1, 55, "en")
    await store.set_opt_out(1, 56, True)
    async with Peer() as peer:
        rooms, voice, playback, captions = manager(peer, store)
        status = await rooms.join(1, 100, 200, 300, two_way=True)
        assert status.two_way and (status.source_channel_id, status.output_channel_id) == (100, 200)
        forward, back = playback.mixers[1], voice.playing[1]  # speaker account plays in 200, listener in 100
        assert forward is not back
        assert playback.receive_exclude(56) and not playback.receive_exclude(55)  # never captured either
        out_q = playback.received[1]
        await asyncio.gather(speak(voice.queues[1], 42, numbered_audio(4)), speak(out_q, 55, numbered_audio(4)),
                             speak(out_q, 56, numbered_audio(4)), speak(out_q, 777, numbered_audio(4)))
        await asyncio.sleep(0.3)
        assert forward.backlog_ms(42) > 0 and forward.backlog_ms(55) == 0  # 42's translation goes to 200
        assert back.backlog_ms(55) > 0 and back.backlog_ms(42) == 0  # 55's translation comes back to 100
        assert back.backlog_ms(56) == 0 and back.backlog_ms(777) == 0  # opted out; a bot (no echo loops)
        assert captions.labels == {(1, 42): "fr", (1, 55): "en"}  # each session in the member's own language
        status = rooms.status(1)
        assert {s.user_id for s in status.speakers} == {42, 55} and status.two_way
        assert {uid for _, uid, _ in captions} == {42, 55}  # captions of both sides, one caption channel
        transcript = rooms.transcript(1)
        assert "Speaker 42" in transcript.text and "Speaker 55" in transcript.text
        playback.links[1].ended.set()  # the speaker account is kicked from the output channel
        await asyncio.sleep(0.05)
        assert "speaker account was disconnected from <#200>" in rooms.status(1).problem
        await rooms.set_opt_out(1, 55, True)  # an opt-out reaches the way back too
        before = len(peer.connections)
        await speak(out_q, 55, numbered_audio(3))
        await asyncio.sleep(0.2)
        assert len(peer.connections) == before
        await rooms.leave(1)
        assert 1 not in playback.mixers and voice.disconnected == [1]
        assert rooms.open_sessions == 0
        await rooms.close()


async def test_two_way_needs_an_output_channel_and_the_speaker_account(store: Store) -> None:
    async with Peer() as peer:
        rooms, *_ = manager(peer, store)
        with pytest.raises(PipelineError, match="two-way room needs an output channel"):
            await rooms.join(1, 100, None, 300, two_way=True)
        assert rooms.status(1) is None


async def test_untranslated_frames_are_counted_for_metrics_and_outlive_the_room(store: Store) -> None:
    await store.set_opt_out(1, 56, True)
    async with Peer() as peer:
        rooms, voice, _, _ = manager(peer, store)
        await rooms.join(1, 100, 200, 300)
        for _ in range(7):
            voice.queues[1].put_nowait(VoiceFrame(56, bytes(FRAME)))  # opted out: withheld
        for _ in range(3):
            voice.queues[1].put_nowait(VoiceFrame(666, bytes(FRAME)))  # a bot: ignored
        await asyncio.sleep(0.1)
        assert rooms.counters() | {"dropped": 0} == {"withheld": 7, "ignored": 3, "refused": 0, "failed": 0,
                                                      "same_language": 0, "dropped": 0, "speaker_failures": 0}
        await rooms.leave(1)
        assert rooms.counters()["withheld"] == 7 and rooms.counters()["ignored"] == 3, "counts went back at leave"
        await rooms.close()


@pytest.mark.parametrize("fails", ["listener_play", "captions"])
async def test_a_join_that_fails_late_leaves_no_room_no_task_and_both_accounts_out(store: Store, fails: str) -> None:
    async with Peer() as peer:
        rooms, voice, playback, captions = manager(peer, store)
        real_join = voice.__call__

        async def join(*args, **kwargs) -> VoiceLink:
            link = await real_join(*args, **kwargs)
            if fails == "listener_play":
                def play(mixer) -> None:
                    raise discord.ClientException("Not connected to voice.")
                link = dataclasses.replace(link, play=play)
            return link

        async def refuse(guild_id: int, channel_id: int) -> None:
            raise PipelineError("I can't see the caption channel.")

        if fails == "captions":
            captions.open = refuse  # type: ignore[method-assign]
        rooms._join_voice = join  # type: ignore[assignment]
        tasks = asyncio.all_tasks()
        with pytest.raises((PipelineError, discord.ClientException)):
            await rooms.join(1, 100, 200, 300, two_way=fails == "listener_play")
        assert rooms.status(1) is None and voice.disconnected == [1]
        assert 1 not in playback.mixers, "the speaker account was left playing in the output channel"
        voice.queues[1].put_nowait(VoiceFrame(42, bytes(FRAME)))
        await asyncio.sleep(0.1)
        left = [t.get_name() for t in asyncio.all_tasks() - tasks if t.get_name().startswith(("room-", "speaker-"))]
        assert left == [], "a task of the failed room still runs"
        assert peer.connections == [] and rooms.open_sessions == 0
        await rooms.close()


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (TimeoutError(), "Discord did not answer in time"),
        (discord.ClientException("Already connected to a voice channel."), "Already connected"),
        (KeyError(0), "something went wrong on my side"),  # an internal error: its text means nothing to a member
    ],
)
async def test_a_failed_voice_join_says_why_in_words_a_member_can_read(error: Exception, said: str) -> None:
    from bot.pipeline.rooms import discord_voice_join

    async def connect(**kwargs: object) -> None:
        raise error

    perms = SimpleNamespace(view_channel=True, connect=True, speak=True)
    channel = SimpleNamespace(connect=connect, mention="<#5>", permissions_for=lambda me: perms)
    guild = SimpleNamespace(id=1, me=object(), voice_client=None, get_channel=lambda cid: channel)
    client = SimpleNamespace(get_guild=lambda gid: guild)
    join = discord_voice_join(client, load_settings(None, env={}))
    with pytest.raises(PipelineError) as caught:
        await join(1, 5)
    assert str(caught.value).startswith(f"I couldn't join <#5>: {said}"), caught.value
