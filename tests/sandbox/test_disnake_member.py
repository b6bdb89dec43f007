"""Two disnake + libdave members in one sandbox voice channel: what one plays, the other hears and decodes.

A witness for the sandbox's voice server from a stack that shares no code with Parley or the sandbox.
"""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.sandbox.disnake_member import RATE, DisnakeMember, VoiceReceiver, open_packet

pytestmark = pytest.mark.timeout(30)


def _tone_wav(path: Path, freq: float = 440.0, seconds: float = 1.0, rate: int = 16_000) -> Path:
    """A mono s16 tone at a rate other than 48 kHz, so the soxr conversion is exercised too."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def _active(x: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """The span between the first and last 10 ms window whose RMS is above `threshold`."""
    win = RATE // 100
    n = len(x) // win
    rms = np.sqrt((x[: n * win].reshape(n, win) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > threshold)
    return x[loud[0] * win:(loud[-1] + 1) * win] if len(loud) else x[:0]


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[int(np.argmax(spectrum))])


def test_open_packet_rejects_a_forged_tag() -> None:
    """The transport layer authenticates: a flipped ciphertext bit is refused, not decoded as noise."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

    from tests.sandbox.disnake_member import XCHACHA, TransportError

    key = bytes(range(32))
    header = bytes([0x90, 0x78, 0, 1, 0, 0, 3, 0xC0, 0, 0, 0, 7]) + b"\xbe\xde\x00\x01"
    counter = (5).to_bytes(4, "big")
    body = b"\x00\x00\x00\x00" + b"opus"
    packet = header + crypto_aead_xchacha20poly1305_ietf_encrypt(body, header, counter + bytes(20), key) + counter
    assert open_packet(packet, XCHACHA, key) == (1, 960, 7, b"opus")
    forged = bytearray(packet)
    forged[20] ^= 1
    with pytest.raises(TransportError):
        open_packet(bytes(forged), XCHACHA, key)
    receiver = VoiceReceiver()
    receiver.set_transport(XCHACHA, key)
    receiver.packet(bytes(forged))
    assert receiver.stats["transport_failed"] == 1


async def test_two_disnake_members_hear_each_other(tmp_path: Path) -> None:
    disnake = pytest.importorskip("disnake")
    if not disnake.opus.is_loaded() and not disnake.opus._load_default():
        pytest.skip("libopus is not installed on this system (Debian: libopus0)")
    from bot.sandbox.server import Sandbox

    started = time.monotonic()
    async with Sandbox(tmp_path / "sb") as sb:
        alice, bob = sb.add_person("Alice"), sb.add_person("Bob")
        guild = sb.add_guild("Test", alice)
        room = sb.add_channel(guild, "General")
        await sb.invite(guild, bob)
        a = DisnakeMember(sb, alice, tmpdir=tmp_path / "a")
        b = DisnakeMember(sb, bob, tmpdir=tmp_path / "b")
        try:
            await asyncio.gather(a.start(), b.start())
            await a.join(room)
            await b.join(room)
            await a.wait_dave()
            assert {u.id for u in sb.in_voice(guild, room)} == {alice.id, bob.id}

            await a.speak(_tone_wav(tmp_path / "tone.wav"))
            deadline = time.monotonic() + 2.0  # the last frames are still in flight when the player returns
            while time.monotonic() < deadline and len(_active(b.heard(alice.id))) < 0.95 * RATE:
                await asyncio.sleep(0.05)
            heard = b.heard(alice.id)
            stats = b.stats
            assert b.save_heard(alice.id).stat().st_size >= 44 + 2 * int(0.9 * RATE)
        finally:
            await a.close()
            await b.close()

    tone = _active(heard)
    assert stats["e2ee_frames"] >= 45 and stats["dave_decrypted"] >= 45, stats  # real E2EE frames, not passthrough
    assert stats["transport_failed"] == 0 and stats["dave_failed"] <= 5, stats
    assert abs(_dominant_hz(tone) - 440.0) < 5.0, _dominant_hz(tone)
    assert 0.9 * RATE <= len(tone) <= 1.1 * RATE, len(tone) / RATE
    assert time.monotonic() - started < 20.0


async def _hear(member: DisnakeMember, user_id: int, seconds: float, since: int = 0) -> np.ndarray:
    """What `member` heard of `user_id` after sample `since`, once `seconds` of it are loud (or 2 s passed)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and len(_active(member.heard(user_id)[since:])) < 0.95 * seconds * RATE:
        await asyncio.sleep(0.05)
    return _active(member.heard(user_id)[since:])


async def test_late_joiner_and_leaver_rekey(tmp_path: Path) -> None:
    """A third member joins an established group, then one leaves: each commit re-keys every decryptor."""
    disnake = pytest.importorskip("disnake")
    if not disnake.opus.is_loaded() and not disnake.opus._load_default():
        pytest.skip("libopus is not installed on this system (Debian: libopus0)")
    from bot.sandbox.server import Sandbox

    async with Sandbox(tmp_path / "sb") as sb:
        users = [sb.add_person(n) for n in ("Alice", "Bob", "Carol")]
        guild = sb.add_guild("Test", users[0])
        room = sb.add_channel(guild, "General")
        await sb.invite(guild, *users[1:])
        a, b, c = (DisnakeMember(sb, u, tmpdir=tmp_path / u.name) for u in users)
        alice, bob, carol = users
        try:
            await asyncio.gather(a.start(), b.start(), c.start())
            await a.join(room)
            await b.join(room)
            await c.join(room)  # a third leaf: Alice and Bob process a commit, Carol a welcome
            for m in (a, b):
                await m.wait_dave()
            await a.speak(_tone_wav(tmp_path / "a.wav", 440.0, 0.6))
            for m in (b, c):
                tone = await _hear(m, alice.id, 0.6)
                assert abs(_dominant_hz(tone) - 440.0) < 5.0 and len(tone) >= 0.55 * RATE, (m.user.name, m.stats)

            mark = len(c.heard(bob.id))
            await b.leave()  # a Remove commit: Alice and Carol move to the next epoch without Bob
            await asyncio.sleep(0.3)
            await c.speak(_tone_wav(tmp_path / "c.wav", 660.0, 0.6))
            tone = await _hear(a, carol.id, 0.6)
            assert abs(_dominant_hz(tone) - 660.0) < 5.0 and len(tone) >= 0.55 * RATE, a.stats
            assert len(c.heard(bob.id)) == mark  # nothing more from Bob once he left
            assert a.voice is not None and a.voice.dave_transitions >= 3, a.voice.dave_transitions
            for m in (a, b, c):
                assert m.stats["transport_failed"] == 0 and m.stats["dave_failed"] <= 5, (m.user.name, m.stats)
        finally:
            for m in (a, b, c):
                await m.close()


async def test_a_member_without_speak_is_not_heard(tmp_path: Path) -> None:
    """Discord forwards nothing from a member lacking the Speak permission; the sandbox counts what it held back."""
    from bot.sandbox.server import Sandbox
    from bot.sandbox.state import Perm

    async with Sandbox(tmp_path / "sb") as sb:
        alice, bob = sb.add_person("Alice"), sb.add_person("Bob")
        guild = sb.add_guild("Test", bob)  # the owner has every permission: Alice is the one denied
        room = sb.add_channel(guild, "General")
        await sb.invite(guild, alice)
        sb.deny(room, alice, Perm.SPEAK)
        a = DisnakeMember(sb, alice, tmpdir=tmp_path / "a")
        b = DisnakeMember(sb, bob, tmpdir=tmp_path / "b")
        try:
            await asyncio.gather(a.start(), b.start())
            await a.join(room)
            await b.join(room)
            await a.wait_dave()
            await a.speak(_tone_wav(tmp_path / "tone.wav", seconds=0.5))
            await asyncio.sleep(0.3)
            assert len(_active(b.heard(alice.id))) == 0
            assert sb.voice.counters(alice.id)["not_permitted"] >= 20
        finally:
            await a.close()
            await b.close()
