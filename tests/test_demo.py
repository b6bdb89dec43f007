"""`python -m bot demo` as a newcomer runs it: a process, no account, no key; what it writes is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_demo_writes_what_the_listener_heard_and_read(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "OPENAI_API_KEY", "PARLEY_BACKEND")}
    done = subprocess.run([sys.executable, "-m", "bot", "demo", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert "ear-voice span" in done.stdout and "/translate join" in done.stdout

    with wave.open(str(out / "output.wav")) as w:
        assert (w.getframerate(), w.getnchannels()) == (24000, 1)
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    win = 240
    rms = np.sqrt((x[: len(x) // win * win].reshape(-1, win) ** 2).mean(axis=1))
    assert (rms > 0.02).sum() / 100 > 2.0, "less than 2 s of translated speech was heard"

    captions = (out / "captions.md").read_text(encoding="utf-8")
    assert "**Alice** (→ es)" in captions and "**Bob** (→ es)" in captions, captions
    assert "reuni" in captions.lower() and "informe" in captions.lower(), captions

    timeline = json.loads((out / "timeline.json").read_text(encoding="utf-8"))
    spans = [u["ear_voice_span_s"] for u in timeline["utterances"]]
    assert len(spans) == 2 and all(s is not None and 0 < s < 15 for s in spans), spans
    assert timeline["bot_exit"]["exit_code"] == 0
    names = {e["event"] for e in timeline["events"]}
    assert {"command", "voice_join", "dave_ready", "message_create", "speech"} <= names, names


def test_demo_arguments_are_checked_before_anything_starts(tmp_path: Path) -> None:
    from bot.config import ConfigError
    from bot.demo import parse_speaker

    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    assert parse_speaker(f"{wav}:eo") == (wav, "eo")
    assert parse_speaker(str(wav)) == (wav, "es")
    with pytest.raises(ConfigError, match="no such file"):
        parse_speaker(str(tmp_path / "missing.wav"))
    with pytest.raises(ConfigError, match="language code"):
        parse_speaker(f"{wav}:not a language")
    done = subprocess.run([sys.executable, "-m", "bot", "demo", "--speaker", str(tmp_path / "nope.wav"),
                           "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no such file" in done.stderr and "Traceback" not in done.stderr, done.stderr
