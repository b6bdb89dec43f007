"""TranslationSession's lifecycle (issue 9): language changes answered, every socket closed whatever the
exit path (counted at the peer), idle sessions on the speech-only protocol closing at once."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from bot.realtime.outputs import TranslatedAudio
from bot.realtime.session import (
    LanguageRejected,
    SessionFatal,
    SessionPhase,
    SessionUnavailable,
    TranslationSession,
)
from tests.realtime.peer import Faults, Peer, blocks_in, numbered_audio
from tests.realtime.test_session import BLOCK, endpoint, fast_settings, per_block_samples, stream

SECOND = 48000  # bytes of 24 kHz pcm16


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def assert_no_socket_left(peer: Peer, session: TranslationSession) -> None:
    assert await peer.sockets_settled() == 0, [(c.index, c.socket_closed) for c in peer.connections]
    assert session.open_sockets == 0
    assert session.stats.sockets_opened == session.stats.sockets_closed == len(peer.connections)


# --- 1. set_language waits for the server's answer ---------------------------------------------------


async def test_set_language_returns_once_the_server_applied_it() -> None:
    async with Peer(faults=Faults(slow_update_s=0.3)) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        t0 = time.monotonic()
        await session.set_language("ja")
        assert time.monotonic() - t0 >= 0.3  # it waited for session.updated ...
        assert peer.connections[0].languages == ["es", "ja"]  # ... which the server sent after applying it
        assert session.language == "ja"
        await stream(session, numbered_audio(4))
        await assert_no_socket_left(peer, session)


async def test_set_language_refused_raises_with_the_code_and_keeps_the_previous_language() -> None:
    async with Peer(faults=Faults(reject_language="zz")) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        pcm = numbered_audio(20)
        await session.send_audio(pcm[: SECOND])
        with pytest.raises(LanguageRejected, match="unsupported_language") as info:
            await session.set_language("zz")
        assert info.value.code == "unsupported_language"
        # still usable, in the previous language
        assert session.language == "es" and session.failure is None and session.phase is SessionPhase.LIVE
        outputs = []

        async def collect() -> None:
            async for o in session.outputs():
                outputs.append(o)

        reader = asyncio.create_task(collect())
        await session.send_audio(pcm[SECOND:])
        await session.close()
        await asyncio.wait_for(reader, 5)
    assert peer.connections[0].languages == ["es"]
    audio = b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio))
    assert audio == pcm[SECOND:] or audio.endswith(pcm[SECOND:])
    assert peer.validation_failures == []


async def test_set_language_without_an_answer_gives_up_after_connect_timeout() -> None:
    async with Peer(faults=Faults(slow_update_s=2.0)) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings(session__connect_timeout_s=0.3))
        await session.open()
        with pytest.raises(SessionUnavailable, match="did not confirm"):
            await session.set_language("ja")
        assert session.language == "es"
        await session.abort()
        await assert_no_socket_left(peer, session)


# --- 2. every socket is closed, whatever the exit path ----------------------------------------------


@pytest.mark.parametrize("how", ["abort", "cancelled-close"])
async def test_ending_during_a_rotation_closes_the_retiring_socket(how: str) -> None:
    """The replaced session never answers `session.close`: its retire task is still waiting when the
    session ends, and must close that socket on its way out."""
    async with Peer(faults=Faults(expires_in_s=3.0, ignore_close=True)) as peer:
        s = fast_settings(session__close_timeout_s=0.5)
        s.session.rotate_before_s = 1.5
        session = TranslationSession(endpoint(peer), "it", s)
        await session.open()
        pcm = numbered_audio(80)
        for i in range(0, len(pcm), 960):
            await session.send_audio(pcm[i : i + 960])
            await asyncio.sleep(0.01)
            if session.stats.rotations:
                break
        assert session.stats.rotations >= 1
        if how == "abort":
            await session.abort()
        else:
            closing = asyncio.create_task(session.close())
            await asyncio.sleep(0.1)  # waiting for the live session's `session.closed`, which never comes
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
        await assert_no_socket_left(peer, session)


async def test_reader_dying_of_an_unexpected_error_closes_its_socket_and_recovers() -> None:
    """Anything but ConnectionClosed ending the reader (here: a bug in event handling) leaves the socket
    open; the reconnect must close it before opening the next."""
    async with Peer() as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        handle, seen = session._handle, []

        def buggy(conn, raw):  # type: ignore[no-untyped-def]
            seen.append(raw)
            if len(seen) == 12:  # a few frames in
                raise RuntimeError("a bug while handling a server event")
            handle(conn, raw)

        session._handle = buggy  # type: ignore[method-assign]
        await session.open()
        await stream(session, numbered_audio(30), pace=0.002)
        assert len(peer.connections) == 2
        await assert_no_socket_left(peer, session)
        assert session.stats.reader_errors == 1 and session.stats.drops == 1
        assert (per_block_samples(peer, 30) >= BLOCK).all()


async def test_cancelled_open_between_connect_and_install_closes_the_socket() -> None:
    async with Peer() as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        async with session._lock:  # the take-over waits for the send lock: hold it there
            opening = asyncio.create_task(session.open())
            await wait_until(lambda: bool(peer.connections and peer.connections[0].languages))
            await asyncio.sleep(0.05)
            assert not opening.done()
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
        await assert_no_socket_left(peer, session)


async def test_abort_while_a_reconnect_takes_over_closes_the_new_socket() -> None:
    async with Peer() as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        async with session._lock:
            peer.drop(0)
            await wait_until(lambda: len(peer.connections) == 2 and bool(peer.connections[1].languages))
            await asyncio.sleep(0.05)
            assert not session.connected
            aborting = asyncio.create_task(session.abort())
            await asyncio.sleep(0.05)
        await aborting
        await assert_no_socket_left(peer, session)


async def test_cancelled_close_still_closes_every_socket() -> None:
    async with Peer(faults=Faults(ignore_close=True)) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        await session.send_audio(numbered_audio(10))
        closing = asyncio.create_task(session.close())
        await wait_until(lambda: peer.connections[0].closed_by_client)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await assert_no_socket_left(peer, session)
        assert session.phase is SessionPhase.CLOSED


async def test_fatal_error_mid_session_closes_the_socket() -> None:
    async with Peer() as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        peer.faults.error_on_connect[0] = {"type": "invalid_request_error", "code": "insufficient_quota",
                                           "message": "You exceeded your current quota."}
        with pytest.raises(SessionFatal, match="insufficient_quota") as info:
            await session.set_language("ja")  # answered with a fatal error
        assert not isinstance(info.value, LanguageRejected)
        await wait_until(lambda: session.phase is SessionPhase.FAILED)
        await assert_no_socket_left(peer, session)
        await session.close()


# --- 3. openai-realtime: idle silence is not waited for, not replayed -------------------------------


async def test_realtime_idle_close_finishes_at_once() -> None:
    speech = numbered_audio(10)  # 1 s: one turn at the peer
    async with Peer(protocol="realtime") as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        outputs: list = []

        async def collect() -> None:
            async for o in session.outputs():
                outputs.append(o)

        reader = asyncio.create_task(collect())
        for i in range(0, len(speech), 960):
            await session.send_audio(speech[i : i + 960])
        await wait_until(lambda: session.acked_ms >= 1000)
        for _ in range(100):  # 2 s of padded silence, as the speaker's clock sends it
            await session.send_audio(bytes(960))
            await asyncio.sleep(0.002)
        t0 = time.monotonic()
        await session.close()
        took = time.monotonic() - t0
        await asyncio.wait_for(reader, 5)
        assert took < 0.5, took  # not close_timeout_s (5 s)
        await assert_no_socket_left(peer, session)
    audio = b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio))
    assert audio == speech


async def test_realtime_close_with_only_silence_finishes_at_once() -> None:
    async with Peer(protocol="realtime") as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        await session.send_audio(bytes(SECOND * 3))
        t0 = time.monotonic()
        await session.close()
        assert time.monotonic() - t0 < 0.5
        await assert_no_socket_left(peer, session)


async def test_realtime_close_still_waits_for_unanswered_speech() -> None:
    """What a close must not skip: speech the server has not answered yet."""
    async with Peer(protocol="realtime") as peer:
        s = fast_settings(session__close_timeout_s=0.6)
        session = TranslationSession(endpoint(peer), "es", s)
        await session.open()
        await session.send_audio(numbered_audio(5))  # half a turn: the peer never answers it
        t0 = time.monotonic()
        await session.close()
        assert time.monotonic() - t0 >= 0.5


async def test_realtime_reconnect_replays_no_idle_silence() -> None:
    silence = bytes(SECOND)
    first = numbered_audio(10)
    second = (numbered_audio(20)[SECOND:])  # blocks 11..20
    pcm = first + silence * 3 + second + silence * 2  # 7 s
    async with Peer(protocol="realtime", faults=Faults(abort_after_bytes={0: int(3.5 * SECOND)})) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        outputs = await stream(session, pcm, pace=0.003)
        assert len(peer.connections) == 2 and session.stats.drops == 1
        assert session.cost.replayed_ms == 0  # the 2.5 s of silence after the first turn was not sent again
        assert session.cost.audio_ms <= 7000
        await assert_no_socket_left(peer, session)
    heard = blocks_in(b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio)))
    assert heard == list(range(1, 21))
    counts = np.array([sum(blocks_in(c.audio).count(b) for c in peer.connections) for b in range(1, 21)])
    assert (counts == 1).all()
    assert peer.validation_failures == []
