"""Speaker + Room against an SDK-validated protocol peer: lazy sessions, the silence clock, idle
close, per-member languages, opt-out privacy, failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from bot.config import Endpoint
from bot.pipeline.room import Room
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import TranslationSession
from tests.realtime.peer import Faults, Peer, numbered_audio
from tests.realtime.test_session import fast_settings

FRAME = 960


def make_room(peer: Peer, outputs: list, languages: dict[int, str] | None = None, idle: float = 0.5,
              opted_out: set[int] | None = None, speaks: dict[int, str] | None = None) -> Room:
    settings = fast_settings()
    endpoint = Endpoint(peer.url, "translation", "gpt-realtime-translate", None, 0.034)
    spends: list[float] = []

    @contextlib.asynccontextmanager
    async def lease(user_id: int, language: str) -> AsyncIterator[TranslationSession]:
        s = TranslationSession(endpoint, language, settings, name=f"u{user_id}")
        try:
            await s.open()
            yield s
        finally:
            await s.abort()
            spends.append(s.cost.dollars)

    async def language_of(user_id: int) -> str:
        return (languages or {}).get(user_id, "es")

    async def speaks_of(user_id: int) -> str | None:
        return (speaks or {}).get(user_id)

    room = Room(1, 10, 20, 30, backend="test", idle_timeout_s=idle, lease=lease,
                language_of=language_of, on_output=lambda uid, out: outputs.append((uid, out)),
                opted_out=opted_out, speaks_of=speaks_of)
    room.spends = spends  # type: ignore[attr-defined]
    return room


async def talk(room: Room, user_id: int, pcm: bytes, end: bool = True) -> None:
    """Frames at Discord's pace (20 ms each), then the end-of-speech marker."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(pcm), FRAME):
        room.feed(user_id, pcm[i : i + FRAME])
        await asyncio.sleep(max(0.0, t0 + (i // FRAME + 1) * 0.02 - loop.time()))
    if end:
        room.feed(user_id, b"", end=True)


async def test_lazy_session_silence_clock_and_idle_close() -> None:
    outputs: list = []
    async with Peer() as peer:
        room = make_room(peer, outputs, idle=0.6)
        assert peer.connections == []
        speech = numbered_audio(10)  # 1 s
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await talk(room, 7, speech)
        await asyncio.sleep(1.2)  # silence → padding, then the idle timeout closes the session
        wall_ms = (loop.time() - t0) * 1000
        assert len(peer.connections) == 1 and peer.connections[0].closed_by_client
        got = np.frombuffer(bytes(peer.connections[0].audio), "<i2")
        # the speech arrived whole and in order, followed only by silence
        assert bytes(got[: len(speech) // 2].tobytes()) == speech
        assert not got[len(speech) // 2 :].any()
        # audio time sent kept up with wall time while the member was silent (until the idle close)
        sent_ms = len(got) / 24
        assert 1000 + 600 - 100 <= sent_ms <= wall_ms + 50
        assert room.speakers[7].silence_ms_sent >= 500
        # a second utterance opens a new session
        await talk(room, 7, numbered_audio(5))
        await room.close()
    assert len(peer.connections) == 2 and peer.connections[1].closed_by_client
    assert peer.validation_failures == []
    assert any(isinstance(o, TranslatedAudio) for _, o in outputs)
    assert len(room.spends) == 2 and all(s > 0 for s in room.spends)  # type: ignore[attr-defined]


async def test_each_member_has_their_own_session_and_language() -> None:
    outputs: list = []
    async with Peer() as peer:
        room = make_room(peer, outputs, languages={1: "de", 2: "ja"})
        await asyncio.gather(talk(room, 1, numbered_audio(5)), talk(room, 2, numbered_audio(5)))
        await room.set_language(2, "ko")
        await asyncio.sleep(0.1)
        status = room.status()
        await room.close()
    assert sorted(c.languages[0] for c in peer.connections) == ["de", "ja"]
    assert any(c.languages == ["ja", "ko"] for c in peer.connections)
    assert {s.user_id for s in status.speakers} == {1, 2}
    assert {s.target_language for s in status.speakers} == {"de", "ko"}
    assert all(s.connected and s.seconds_sent > 0 for s in status.speakers)


async def test_opted_out_member_is_never_sent_upstream() -> None:
    outputs: list = []
    async with Peer() as peer:
        room = make_room(peer, outputs, opted_out={5})
        await talk(room, 5, numbered_audio(10))
        await asyncio.sleep(0.1)
        assert peer.connections == []
        assert room.frames_withheld == 50
        assert room.status().opted_out == 1
        await room.close()


async def test_opting_out_mid_sentence_sends_nothing_more() -> None:
    outputs: list = []
    async with Peer() as peer:
        room = make_room(peer, outputs)
        speech = numbered_audio(20)  # 2 s; opt out after 1 s
        talking = asyncio.create_task(talk(room, 3, speech))
        await asyncio.sleep(1.0)
        await room.set_opt_out(3, True)
        await talking
        await asyncio.sleep(0.3)
        await room.close()
    conn = peer.connections[0]
    assert not conn.closed_by_client  # aborted: no session.close, no flush
    got = np.frombuffer(bytes(conn.audio), "<i2")
    assert got.max() <= 11  # nothing from the second second reached the server
    assert room.frames_withheld > 0 and 3 not in room.speakers


async def test_a_session_that_cannot_open_is_reported_not_fatal_to_the_room() -> None:
    outputs: list = []
    async with Peer(faults=Faults(reject_language="xx")) as peer:
        room = make_room(peer, outputs, languages={9: "xx", 4: "es"})
        await asyncio.gather(talk(room, 9, numbered_audio(5)), talk(room, 4, numbered_audio(5)))
        await room.close()
    errors = [o for uid, o in outputs if uid == 9 and isinstance(o, SessionError)]
    assert errors and errors[0].fatal and "not supported" in errors[0].message
    assert "not supported" in (room.status().problem or "")  # what /translate status shows
    assert room.speakers == {} and any(c.languages == ["es"] for c in peer.connections)
    assert any(uid == 4 and isinstance(o, TranslatedAudio) for uid, o in outputs)


# --- issue 9: a speaker's failure is owned, logged once, shown, and recovered from ---------------------------


async def test_a_failing_speaker_is_logged_once_shown_and_replaced_after_a_backoff(caplog) -> None:
    from bot.store import StoreError

    outputs: list = []
    async with Peer() as peer:
        room = make_room(peer, outputs)
        room._restart_backoff_s = (0.5, 1.0)  # type: ignore[attr-defined]
        calls = 0

        async def language_of(user_id: int) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise StoreError("parley.sqlite3 is locked")
            return "es"

        room._language_of = language_of  # type: ignore[attr-defined]
        caplog.set_level("ERROR", "parley.pipeline")
        await talk(room, 7, numbered_audio(3))  # 0.3 s: the speaker dies on its first frame
        failures = [r for r in caplog.records if "speaker 7 failed" in r.getMessage()]
        assert len(failures) == 1 and "StoreError" in failures[0].getMessage(), "logged once, with the reason"
        (problem,) = [s.problem for s in room.status().speakers]
        assert problem is not None and "StoreError" in problem
        assert [uid for uid, _ in room.status().not_translated] == [7]
        assert room.frames_refused > 0 and room.running_speakers == 0
        assert peer.connections == []
        await asyncio.sleep(0.5)  # the backoff passes: the next words get a fresh speaker
        await talk(room, 7, numbered_audio(5))
        for _ in range(50):
            if peer.connections:
                break
            await asyncio.sleep(0.02)
        assert len(peer.connections) == 1 and calls == 2
        assert room.status().not_translated == []
        await room.close()
    assert room.running_speakers == 0
    assert any(uid == 7 and isinstance(o, TranslatedAudio) for uid, o in outputs)


async def test_a_speakers_queue_is_bounded_and_drops_the_oldest(monkeypatch) -> None:
    from bot.pipeline import room as room_module

    monkeypatch.setattr(room_module, "CLOSE_TIMEOUT_S", 0.2)
    opening = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hanging_lease(user_id: int, language: str) -> AsyncIterator[TranslationSession]:
        opening.set()
        await asyncio.sleep(3600)  # the backend never answers
        yield  # type: ignore[misc]

    async def language_of(user_id: int) -> str:
        return "es"

    room = Room(1, 10, None, None, backend="test", idle_timeout_s=1, lease=hanging_lease,
                language_of=language_of, on_output=lambda uid, out: None, max_queued_frames=10)
    room.feed(7, bytes(FRAME))
    await opening.wait()
    for i in range(100):
        room.feed(7, i.to_bytes(2, "little") * (FRAME // 2))
    speaker = room.speakers[7]
    assert speaker.queued == 10 and speaker.frames_dropped == 90 and room.frames_dropped == 90
    assert speaker._queue.get_nowait()[0][:2] == (90).to_bytes(2, "little"), "the newest frames are kept"
    await room.close()  # the graceful close gives up on a hung open: closed within its timeout
    assert room.running_speakers == 0


async def test_a_member_who_speaks_their_target_language_gets_no_session() -> None:
    outputs: list = []
    speaks = {7: "es-MX", 8: "en"}
    async with Peer() as peer:
        room = make_room(peer, outputs, languages={7: "es", 8: "es"}, speaks=speaks)
        await asyncio.gather(talk(room, 7, numbered_audio(5)), talk(room, 8, numbered_audio(5)))
        await asyncio.sleep(0.2)
        assert len(peer.connections) == 1  # only member 8 (English → Spanish) is paid for
        assert room.speakers[7].frames_same_language > 0
        status = {s.user_id: s for s in room.status().speakers}
        assert status[7].same_language == "speaks es-MX, hears es" and status[7].problem is None
        assert status[8].same_language is None
        speaks[7] = "en"  # /translate language speaks:en — they were wrong about it
        room.set_speaks(7)
        await talk(room, 7, numbered_audio(5))
        await asyncio.sleep(0.2)
        assert len(peer.connections) == 2
        await room.close()


async def test_utterances_that_come_back_untranslated_close_the_session_and_it_stays_closed() -> None:
    outputs: list = []
    async with Peer() as peer:
        room = make_room(peer, outputs, idle=5.0)
        talking = asyncio.create_task(talk(room, 7, numbered_audio(30)))
        await asyncio.sleep(0.5)
        assert len(peer.connections) == 1
        for said in ("Buenos días.", "La reunión empieza a las diez.", "Gracias."):
            room._output(7, SourceText(said, None, final=True))  # as the session hands them on
            room._output(7, TargetText(said, None, final=True))  # the "translation" is the speech again
        await asyncio.sleep(0.3)
        assert peer.connections[0].closed_by_client  # closed gracefully, though the member still talks
        speaker = room.speakers[7]
        assert speaker.same_language == "already speaks es (heard in their speech)"
        await talking
        assert speaker.frames_same_language > 0 and len(peer.connections) == 1
        await room.set_language(7, "eo")  # a new target language: translated again
        await talk(room, 7, numbered_audio(3))
        await asyncio.sleep(0.2)
        assert len(peer.connections) == 2
        await room.close()


async def test_a_frame_that_cannot_be_routed_is_counted_and_logged_once_and_the_pump_goes_on(caplog,
                                                                                              monkeypatch) -> None:
    from bot.pipeline import room as room_module
    from bot.voice.worker import VoiceFrame

    monkeypatch.setattr(room_module, "CLOSE_TIMEOUT_S", 0.2)

    def ignore(user_id: int) -> bool:
        if user_id == 9:
            raise RuntimeError("member cache broken")
        return False

    async def language_of(user_id: int) -> str:
        return "es"

    @contextlib.asynccontextmanager
    async def no_lease(user_id: int, language: str) -> AsyncIterator[TranslationSession]:
        await asyncio.sleep(3600)
        yield  # type: ignore[misc]

    room = Room(1, 10, None, None, backend="test", idle_timeout_s=1, lease=no_lease, ignore=ignore,
                language_of=language_of, on_output=lambda uid, out: None)
    frames: asyncio.Queue = asyncio.Queue()
    for uid in (9, 9, 9, 7):
        frames.put_nowait(VoiceFrame(uid, bytes(FRAME)))
    pump = asyncio.create_task(room.pump(frames))
    try:
        async with asyncio.timeout(5):
            while frames.qsize():
                await asyncio.sleep(0.01)
        assert not pump.done(), "the pump died with the bad frame"
        assert room.frames_failed == 3 and 7 in room.speakers, "the next member's frame was routed"
        assert [r.levelname for r in caplog.records if "could not be routed" in r.getMessage()] == ["ERROR"]
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        await room.close()
