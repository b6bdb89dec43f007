"""TranslationSession against the peer servers: open, stream, reconnect + replay, rotation, errors."""

from __future__ import annotations

import asyncio
import itertools
import logging

import numpy as np
import pytest

from bot.config import Endpoint, Settings, load_settings
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import LanguageRejected, SessionFatal, SessionUnavailable, TranslationSession
from tests.realtime.peer import Faults, Peer, numbered_audio

BLOCK = 2400  # samples in 100 ms at 24 kHz


def fast_settings(**overrides) -> Settings:
    s = load_settings(None, env={})
    s.reconnect.initial_delay_s = 0.02
    s.reconnect.max_delay_s = 0.2
    s.session.close_timeout_s = 5
    for k, v in overrides.items():
        section, field = k.split("__")
        setattr(getattr(s, section), field, v)
    return s


def endpoint(peer: Peer, key: str | None = None) -> Endpoint:
    from pydantic import SecretStr

    return Endpoint(peer.url, peer.protocol, "gpt-realtime-translate" if peer.protocol == "translation"
                    else "gpt-realtime", SecretStr(key) if key else None, 0.034)


async def stream(session: TranslationSession, pcm: bytes, chunk: int = 960, pace: float = 0.0) -> list:
    """Send pcm in 20 ms pieces, close, and collect every output."""
    outputs: list = []

    async def collect() -> None:
        async for o in session.outputs():
            outputs.append(o)

    reader = asyncio.create_task(collect())
    for i in range(0, len(pcm), chunk):
        await session.send_audio(pcm[i : i + chunk])
        if pace:
            await asyncio.sleep(pace)
    await session.close()
    await asyncio.wait_for(reader, 5)
    return outputs


def per_block_samples(peer: Peer, blocks: int) -> np.ndarray:
    counts = np.zeros(blocks + 1, dtype=int)
    for c in peer.connections:
        s = np.frombuffer(bytes(c.audio), dtype="<i2")
        counts += np.bincount(s[(s > 0) & (s <= blocks)], minlength=blocks + 1)
    return counts[1:]


async def test_open_stream_close_roundtrip() -> None:
    async with Peer() as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        pcm = numbered_audio(30)  # 3 s
        outputs = await stream(session, pcm)
    assert peer.validation_failures == []
    conn = peer.connections[0]
    assert conn.languages == ["es"] and conn.closed_by_client
    assert bytes(conn.audio) == pcm
    audio = b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio))
    assert audio == pcm
    elapsed = [o.elapsed_ms for o in outputs if isinstance(o, TranslatedAudio)]
    assert elapsed == list(range(200, 3001, 200))
    assert "".join(o.text for o in outputs if isinstance(o, TargetText)).startswith("<0><200>")
    assert any(isinstance(o, SourceText) for o in outputs)
    assert session.cost.audio_ms == pytest.approx(3000)
    assert session.cost.dollars == pytest.approx(3 / 60 * 0.034)
    appends = [e for e in conn.received if e["type"] == "session.input_audio_buffer.append"]
    assert len(appends) == 15  # 200 ms chunks


async def test_transport_abort_reconnects_and_replays_everything() -> None:
    blocks = 60  # 6 s of numbered 100 ms blocks
    faults = Faults(abort_after_bytes={0: 2 * 48000 + 4800})  # cut 2.1 s in
    async with Peer(faults=faults) as peer:
        session = TranslationSession(endpoint(peer), "de", fast_settings())
        await session.open()
        outputs = await stream(session, numbered_audio(blocks), pace=0.002)
    assert peer.validation_failures == []
    assert len(peer.connections) == 2
    # the configuration was re-sent on the new socket
    assert [c.languages for c in peer.connections] == [["de"], ["de"]]
    # every 100 ms block reached a session, whole
    counts = per_block_samples(peer, blocks)
    assert (counts >= BLOCK).all(), counts
    # at most about a second was sent twice
    total_ms = sum(len(c.audio) for c in peer.connections) / 48
    assert total_ms - blocks * 100 <= 1000
    assert session.stats.drops == 1 and len(session.stats.reconnect_gaps_s) == 1
    # outputs are on the speaker's clock across the reconnect: monotonic, reaching the end
    elapsed = [o.elapsed_ms for o in outputs if isinstance(o, TranslatedAudio)]
    assert elapsed[-1] == blocks * 100
    assert all(b > a for a, b in itertools.pairwise(elapsed))  # and no frame was translated twice


@pytest.mark.parametrize("code", [1001, 4000])
async def test_close_codes_reconnect(code: int) -> None:
    faults = Faults(close_after_bytes={0: (48000, code)})
    async with Peer(faults=faults) as peer:
        session = TranslationSession(endpoint(peer), "fr", fast_settings())
        await session.open()
        await stream(session, numbered_audio(30))
    counts = per_block_samples(peer, 30)
    assert (counts >= BLOCK).all()
    assert len(peer.connections) == 2 and peer.connections[1].languages == ["fr"]
    assert peer.validation_failures == []


async def test_replay_buffer_is_bounded_and_counts_what_falls_out() -> None:
    async with Peer() as peer:
        s = fast_settings(session__replay_buffer_s=1.0)
        session = TranslationSession(endpoint(peer), "es", s)
        await session.open()
        await peer.__aexit__()  # the backend goes away entirely
        for i in range(0, 48000 * 3, 960):  # 3 s while it is down
            await session.send_audio(numbered_audio(30)[i : i + 960])
        assert session.sent_ms - session.acked_ms == pytest.approx(3000, abs=40)  # all of it unanswered ...
        assert session.dropped_ms == pytest.approx(3000 - 1000, abs=200)  # ... but only 1 s is kept
        await session.abort()


async def test_rotation_before_expiry_has_no_gap() -> None:
    faults = Faults(expires_in_s=2.0)
    async with Peer(faults=faults) as peer:
        s = fast_settings(session__rotate_before_s=5.0)  # rotate as soon as possible
        s.session.rotate_before_s = 1.5
        session = TranslationSession(endpoint(peer), "it", s)
        await session.open()
        pcm = numbered_audio(40)
        outputs = await stream(session, pcm, pace=0.02)  # 4 s of audio over ~4 s of wall time
    assert session.stats.rotations >= 1
    assert len(peer.connections) >= 2
    # no gap and no overlap: the sessions' inputs concatenate to exactly the input
    assert b"".join(bytes(c.audio) for c in peer.connections) == pcm
    assert all(c.closed_by_client for c in peer.connections if c.audio)  # each flushed gracefully
    audio = b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio))
    assert sorted(np.frombuffer(audio, "<i2").tolist()) == sorted(np.frombuffer(pcm, "<i2").tolist())
    assert peer.validation_failures == []


async def test_error_events_surface_and_fatal_ones_stop() -> None:
    err = {"type": "invalid_request_error", "code": "model_not_found", "message": "The model does not exist."}
    async with Peer(faults=Faults(error_on_connect={0: err})) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        with pytest.raises(SessionFatal, match="model does not exist"):
            await session.open()
    assert len(peer.connections) == 1  # no retry after a fatal error


async def test_unsupported_language_is_a_clear_error() -> None:
    async with Peer(faults=Faults(reject_language="xx")) as peer:
        session = TranslationSession(endpoint(peer), "xx", fast_settings())
        with pytest.raises(SessionFatal, match="not supported"):
            await session.open()


async def test_wrong_key_is_fatal_at_the_handshake() -> None:
    async with Peer(faults=Faults(require_key="sk-right")) as peer:
        session = TranslationSession(endpoint(peer, key="sk-wrong"), "es", fast_settings())
        with pytest.raises(SessionFatal, match="HTTP 401"):
            await session.open()
        ok = TranslationSession(endpoint(peer, key="sk-right"), "es", fast_settings())
        await ok.open()
        await ok.close()
    assert peer.connections[-1].headers["authorization"] == "Bearer sk-right"


async def test_unreachable_backend_gives_up_with_a_message() -> None:
    async with Peer() as peer:
        url = peer.url
    dead = Endpoint(url, "translation", "m", None, 0.0)
    session = TranslationSession(dead, "es", fast_settings())
    with pytest.raises(SessionUnavailable, match=r"cannot reach ws://127\.0\.0\.1"):
        await session.open()


async def test_malformed_and_unknown_events_are_tolerated_and_counted() -> None:
    async with Peer(faults=Faults(garbage_every_frames=2)) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        pcm = numbered_audio(20)
        outputs = await stream(session, pcm)
    audio = b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio))
    assert audio == pcm
    assert session.stats.unknown_events == 5
    assert session.stats.malformed_events == 10  # not JSON + delta missing, on frames 0, 2, 4, 6, 8


async def test_set_language_mid_session_and_after_reconnect() -> None:
    faults = Faults(abort_after_bytes={0: 48000 * 2})
    async with Peer(faults=faults) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        pcm = numbered_audio(40)
        await session.send_audio(pcm[:48000])
        await session.set_language("ja")
        for i in range(48000, len(pcm), 960):
            await session.send_audio(pcm[i : i + 960])
        await session.close()
    assert peer.connections[0].languages == ["es", "ja"]
    assert peer.connections[1].languages == ["ja"]


async def test_runtime_error_event_is_surfaced_not_fatal() -> None:
    async with Peer() as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        await session.set_language("xx")  # the peer accepts it; now make it complain about the next one
        peer.faults.reject_language = "zz"
        with pytest.raises(LanguageRejected):
            await session.set_language("zz")
        outputs = await stream(session, numbered_audio(4))
    errors = [o for o in outputs if isinstance(o, SessionError)]
    assert len(errors) == 1 and errors[0].code == "unsupported_language" and not errors[0].fatal
    assert session.stats.errors == 1 and session.failure is None and session.language == "xx"


async def test_interpreter_protocol_roundtrip_validated_by_sdk() -> None:
    async with Peer(protocol="realtime") as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings())
        await session.open()
        pcm = numbered_audio(30)
        outputs = await stream(session, pcm)
    assert peer.validation_failures == []
    assert "Spanish" in peer.connections[0].languages[0]
    assert bytes(peer.connections[0].audio) == pcm
    audio = b"".join(o.pcm16 for o in outputs if isinstance(o, TranslatedAudio))
    assert audio == pcm
    finals = [o for o in outputs if isinstance(o, SourceText) and o.final]
    assert [o.elapsed_ms for o in finals] == [1000, 2000, 3000]
    assert session.cost.tokens == {"input": 30, "output": 60}
    assert session._ack == len(pcm)


async def test_api_key_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with Peer(faults=Faults(require_key="sk-secret-123")) as peer:
        session = TranslationSession(endpoint(peer, key="sk-secret-123"), "es", fast_settings())
        await session.open()
        await stream(session, numbered_audio(4))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("parley"))
    assert "Authorization: [redacted]" in ours  # the header line was logged ...
    assert "sk-secret-123" not in ours  # ... without its value (the peer's own server log does show it)
    assert any("sk-secret-123" in r.getMessage() for r in caplog.records if r.name.startswith("websockets"))


async def test_rate_limit_backs_off_then_recovers() -> None:
    err = {"type": "rate_limit_error", "code": "rate_limit_exceeded", "message": "Too many sessions."}
    async with Peer(faults=Faults(error_on_connect={0: err})) as peer:
        session = TranslationSession(endpoint(peer), "es", fast_settings(reconnect__rate_limit_delay_s=0.5))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await session.open()
        waited = loop.time() - t0
        await stream(session, numbered_audio(4))
    assert len(peer.connections) == 2
    assert waited >= 0.5  # the rate-limit floor, not the 20 ms first backoff step
    assert session.stats.errors == 1
