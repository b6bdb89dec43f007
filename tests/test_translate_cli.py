"""`python -m bot translate` end to end, against a protocol peer and against bot.localrt."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.realtime.peer import Peer

ROOT = Path(__file__).resolve().parents[1]


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "translate", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def tone_wav(path: Path, rate: int, channels: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(mono[:, None], channels, axis=1).tobytes())
    return mono


async def test_translate_any_wav_through_a_peer(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 44_100, 2, 2.0)
    out, caps = tmp_path / "out.wav", tmp_path / "caps.jsonl"
    async with Peer() as peer:
        code, stdout, stderr = await run_cli(str(src), "--to", "es", "--backend", f"ws://127.0.0.1:{peer.port}",
                                             "--out", str(out), "--captions", str(caps), "--fast", "--json")
    assert code == 0, stderr
    assert peer.validation_failures == []
    summary = json.loads(stdout)
    assert summary["input_seconds"] == pytest.approx(2.0, abs=0.02)
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        echoed = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    # the peer echoes what it received: the file arrived resampled to 24 kHz mono, intact
    assert len(echoed) == pytest.approx(48_000, abs=50)
    spectrum = np.abs(np.fft.rfft(echoed.astype(float)))
    assert np.argmax(spectrum) * 24_000 / len(echoed) == pytest.approx(440, abs=2)
    lines = [json.loads(line) for line in caps.read_text().splitlines()]
    assert {line["kind"] for line in lines} == {"source", "target"}
    assert all(set(line) == {"kind", "text", "elapsed_ms"} for line in lines)
    assert [line["elapsed_ms"] for line in lines if line["kind"] == "target"][:3] == [200, 400, 600]


async def test_a_file_that_is_not_a_wav_is_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "song.mp3"
    bad.write_bytes(b"ID3\x03\x00\x00\x00garbage")
    code, _, stderr = await run_cli(str(bad), "--to", "es", "--backend", "ws://127.0.0.1:9", "--out",
                                    str(tmp_path / "o.wav"))
    assert code == 2
    assert "not an audio file that can be read" in stderr and "Traceback" not in stderr


async def test_an_unreachable_backend_is_a_clear_message(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 16_000, 1, 0.2)
    code, _, stderr = await run_cli(str(src), "--to", "es", "--backend", "ws://127.0.0.1:9", "--out",
                                    str(tmp_path / "o.wav"))
    assert code == 1 and "cannot reach ws://127.0.0.1:9" in stderr and "Traceback" not in stderr


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("apertium") is None,
                    reason="needs espeak-ng and apertium (make test installs them)")
async def test_translate_with_the_local_backend(tmp_path: Path) -> None:
    """The no-key quick start: English speech in, Spanish speech and captions out, all offline."""
    src = tmp_path / "en.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(src), "Good morning. The meeting starts at ten."],
                   check=True)
    out, caps = tmp_path / "es.wav", tmp_path / "es.jsonl"
    code, stdout, stderr = await run_cli(str(src), "--to", "es", "--backend", "local", "--out", str(out),
                                         "--captions", str(caps), "--fast", "--json")
    assert code == 0, stderr
    target = " ".join(json.loads(line)["text"] for line in caps.read_text().splitlines()
                      if json.loads(line)["kind"] == "target").lower()
    assert "buenos" in target or "reunión" in target or "diez" in target, target
    assert json.loads(stdout)["output_seconds"] > 1.0
