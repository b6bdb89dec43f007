"""`python -m bot translate` as a newcomer meets it (issue 10): the whole file is translated, outputs are
checked first and kept when interrupted, and every failure is one clear line with the right exit code."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import wave
from pathlib import Path

import numpy as np
import pytest

from bot import translate_file as translate
from tests.realtime.peer import Peer
from tests.test_translate_cli import tone_wav

ROOT = Path(__file__).resolve().parents[1]
needs_local = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("espeak-ng", "sox", "apertium")),
    reason="needs espeak-ng, sox and apertium (make test installs them)",
)


async def cli(*args: str, cwd: Path = ROOT, timeout: float = 180, stderr=None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OPENAI_API_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "translate", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=stderr or asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), (err or b"").decode()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "started bot.localrt" not in line]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def espeak(path: Path, text: str, voice: str | None = None) -> None:
    subprocess.run(["espeak-ng", *(["-v", voice] if voice else []), "-w", str(path), text], check=True)


def target_captions(path: Path) -> list[dict]:
    return [c for c in map(json.loads, path.read_text().splitlines()) if c["kind"] == "target"]


# --- 1. a long --fast file is translated to its end; a close never hangs ----------------------------

@needs_local
async def test_fast_long_file_is_translated_to_its_end(tmp_path: Path) -> None:
    """Before: the close waited a fixed `close_timeout_s`, cut the tail ("closing anyway") and exited 0."""
    parts = []
    for i in range(6):
        p = tmp_path / f"p{i}.wav"
        espeak(p, f"Part {i}. My brother lives in a big house near the river. We are going to the beach "
                  "tomorrow with our friends. Where is the train station?", "en-us")
        parts.append(str(p))
    src = tmp_path / "long.wav"
    subprocess.run(["sox", *parts, str(src)], check=True)
    config = tmp_path / "config.yaml"
    config.write_text("session:\n  close_timeout_s: 1\n")  # the usual margin alone is far too short
    out, caps = tmp_path / "out.wav", tmp_path / "caps.jsonl"
    code, stdout, stderr = await cli(str(src), "--to", "es", "--backend", "local", "--config", str(config),
                                     "--out", str(out), "--captions", str(caps), "--fast", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["status"] == "ok" and summary["translated_seconds"] == summary["input_seconds"]
    last = target_captions(caps)[-1]
    assert last["elapsed_ms"] >= summary["input_seconds"] * 1000 - 2500, last  # the last sentence too
    assert "estación" in last["text"] or "tren" in last["text"], last


def test_an_unanswered_tail_is_reported_and_exits_3() -> None:
    result = translate.Result(input_bytes=48_000 * 60, sent_ms=60_000, answered_ms=26_000, audio_bytes=9600)
    result.captions.add("target", "hola", 200)
    code, message = translate.outcome(result, b"\x01\x00" * 100)
    assert code == translate.EXIT_INCOMPLETE == 3
    assert message and "last 34.0 s" in message and "0:26.0 of 1:00.0" in message


# --- 2. outputs checked before the work, kept on Ctrl-C --------------------------------------------

@pytest.mark.parametrize("flag", ["--out", "--captions"])
async def test_an_output_in_a_missing_folder_fails_before_any_work(tmp_path: Path, flag: str) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 16_000, 1, 0.5)
    paths = {"--out": str(tmp_path / "o.wav"), "--captions": str(tmp_path / "c.jsonl")}
    paths[flag] = str(tmp_path / "nodir" / "x")
    # an unreachable backend: reaching it would be "work" (and exit 1), the check comes first
    code, _, stderr = await cli(str(src), "--to", "es", "--backend", "ws://127.0.0.1:9",
                                "--out", paths["--out"], "--captions", paths["--captions"], timeout=30)
    assert code == 2
    assert "does not exist" in one_line(stderr) and flag in stderr


async def test_out_equal_to_the_input_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 16_000, 1, 0.5)
    before = src.read_bytes()
    code, _, stderr = await cli(str(src), "--to", "es", "--backend", "ws://127.0.0.1:9",
                                "--out", str(tmp_path / "." / "in.wav"), timeout=30)
    assert code == 2 and "is the input file" in one_line(stderr)
    assert src.read_bytes() == before


async def test_ctrl_c_keeps_what_was_translated(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 24_000, 1, 20.0)
    out, caps = tmp_path / "o.wav", tmp_path / "c.jsonl"
    async with Peer() as peer:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "translate", str(src), "--to", "es", "--backend",
            f"ws://127.0.0.1:{peer.port}", "--out", str(out), "--captions", str(caps), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(100):  # real-time pacing: wait until some audio came back
            await asyncio.sleep(0.1)
            if peer.connections and len(peer.connections[0].audio) > 48_000:
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, stderr
    err = stderr.decode()
    assert "Traceback" not in err and "interrupted after" in err
    with wave.open(str(out)) as w:  # a valid WAV with what had arrived
        assert w.getnframes() > 12_000
    assert caps.read_text().strip()


# --- 3. the end of the file reaches the translation ------------------------------------------------

@needs_local
async def test_the_readme_sample_as_8k_stereo_keeps_its_second_sentence(tmp_path: Path) -> None:
    """Whisper without timestamps ended the text after "Good morning everyone." whenever the file ended
    right after the second sentence (written with `sox -D`)."""
    speech, src = tmp_path / "s.wav", tmp_path / "readme8k.wav"
    espeak(speech, "Good morning everyone. The meeting starts at ten.")
    subprocess.run(["sox", str(speech), "-D", "-r", "8000", "-c", "2", str(src)], check=True)
    code, stdout, stderr = await cli(str(src), "--to", "es", "--backend", "local", "--out",
                                     str(tmp_path / "o.wav"), "--fast", "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert "meeting" in summary["source_text"].lower(), summary
    assert "reunión" in summary["target_text"], summary
    assert summary["output_seconds"] > 3.0


# --- 4. nothing produced: say why, exit non-zero ----------------------------------------------------

async def test_a_silent_file_says_no_speech_detected(tmp_path: Path) -> None:
    src = tmp_path / "silence.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
        w.writeframes(bytes(16_000 * 2))
    async with Peer() as peer:  # the peer echoes: silence comes back as silence, no text
        code, _, stderr = await cli(str(src), "--to", "es", "--backend", f"ws://127.0.0.1:{peer.port}",
                                    "--out", str(tmp_path / "o.wav"), "--fast", timeout=60)
    # the echo peer returns audio, so this run "produced" something; the local backend would not
    assert code in (0, 1), stderr
    result = translate.Result(input_bytes=32_000)
    assert translate.outcome(result, bytes(32_000)) == (1, "no speech detected: the input is silent")


async def test_a_header_only_wav_says_there_is_no_audio(tmp_path: Path) -> None:
    src = tmp_path / "empty.wav"
    with wave.open(str(src), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
    code, _, stderr = await cli(str(src), "--to", "es", "--backend", "ws://127.0.0.1:9",
                                "--out", str(tmp_path / "o.wav"), timeout=30)
    assert code == 1 and "has no audio" in one_line(stderr)


def test_unknown_speech_and_engine_errors_are_named() -> None:
    noisy = (np.sin(np.arange(24_000) / 5) * 8000).astype("<i2").tobytes()
    code, message = translate.outcome(translate.Result(input_bytes=len(noisy)), noisy)
    assert code == 1 and message and "not in a language the recogniser knows" in message
    failed = translate.Result(input_bytes=len(noisy), errors=["asr_failed: model crashed"])
    assert translate.outcome(failed, noisy) == (1, "nothing was translated: the backend reported "
                                                   "asr_failed: model crashed")


@needs_local
async def test_local_silence_exits_1_with_no_speech_detected(tmp_path: Path) -> None:
    src = tmp_path / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(src), "trim", "0", "2"], check=True)
    code, _, stderr = await cli(str(src), "--to", "es", "--backend", "local", "--out", str(tmp_path / "o.wav"),
                                "--fast")
    assert code == 1 and "no speech detected" in one_line(stderr)


class BrokenRecognizer:
    languages = frozenset({"en"})
    fixed_language = "en"
    partial_interval_ms = 1000

    def transcribe(self, audio, prefix=None, language=None):
        from bot.localrt.engines.asr import EngineError

        raise EngineError("the recogniser crashed")


@needs_local
def test_an_engine_error_is_one_line_and_exit_1(tmp_path: Path, monkeypatch, capsys) -> None:
    from bot.__main__ import build_parser
    from bot.localrt.engines.bundle import Engines

    real_load = Engines.load

    def broken_load(config):
        engines = real_load(config)
        return Engines(config=engines.config, asr=BrokenRecognizer(), mt=engines.mt, tts=engines.tts)

    monkeypatch.setattr(Engines, "load", staticmethod(broken_load))
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "en.wav"
    espeak(src, "Where is the train station?", "en-us")
    args = build_parser().parse_args(["translate", str(src), "--to", "es", "--backend", "local",
                                      "--out", str(tmp_path / "o.wav"), "--fast"])
    assert args._main(args) == 1
    err = capsys.readouterr().err
    assert "nothing was translated: the backend reported asr_failed: the recogniser crashed" in err


# --- 6. tracebacks become one line ------------------------------------------------------------------

async def test_a_directory_as_input_is_one_line(tmp_path: Path) -> None:
    code, _, stderr = await cli(str(tmp_path), "--to", "es", "--backend", "ws://127.0.0.1:9",
                                "--out", str(tmp_path / "o.wav"), timeout=30)
    assert code == 2 and "is a directory" in one_line(stderr)


@needs_local
async def test_ctranslate2_without_a_model_path_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 16_000, 1, 0.5)
    config = tmp_path / "config.yaml"
    config.write_text("local:\n  mt:\n    engine: ctranslate2\n")
    code, _, stderr = await cli(str(src), "--to", "es", "--backend", "local", "--config", str(config),
                                "--out", str(tmp_path / "o.wav"), "--fast")
    assert code == 2 and "mt.model_path" in one_line(stderr)


# --- 8. what the user sees ------------------------------------------------------------------------

async def test_the_text_is_printed_and_a_human_summary_without_json(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 24_000, 1, 1.0)
    async with Peer() as peer:
        code, stdout, stderr = await cli(str(src), "--to", "es", "--backend", f"ws://127.0.0.1:{peer.port}",
                                         "--out", str(tmp_path / "o.wav"), "--fast", timeout=60)
    assert code == 0, stderr
    assert stdout.strip() and not stdout.lstrip().startswith("{")  # the translated text, not JSON
    assert "s of translated speech" in stderr and "\r" not in stderr  # no progress bar off a terminal


async def test_progress_is_shown_on_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 24_000, 1, 1.0)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a width
    try:
        async with Peer() as peer:
            code, _, _ = await cli(str(src), "--to", "es", "--backend", f"ws://127.0.0.1:{peer.port}",
                                   "--out", str(tmp_path / "o.wav"), timeout=60, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    assert code == 0
    assert b"translating" in b"".join(chunks)


async def test_translate_reads_config_yaml_in_the_working_folder(tmp_path: Path) -> None:
    src = tmp_path / "in.wav"
    tone_wav(src, 24_000, 1, 0.5)
    async with Peer() as peer:
        (tmp_path / "config.yaml").write_text(f"backend: ws://127.0.0.1:{peer.port}\n")
        code, stdout, stderr = await cli(str(src), "--to", "es", "--out", str(tmp_path / "o.wav"), "--fast",
                                         "--json", cwd=tmp_path, timeout=60)
    assert code == 0, stderr
    assert json.loads(stdout)["backend"] == f"ws://127.0.0.1:{peer.port}"
    assert translate.config_path(None, tmp_path) == Path("config.yaml")
    assert translate.config_path(None, tmp_path / "nowhere") is None


@needs_local
async def test_from_a_language_the_local_backend_cannot_hear_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "de.wav"
    espeak(src, "Wo ist der Bahnhof?", "de")
    # whisper base hears German, but no installed apertium pair translates from it
    code, _, stderr = await cli(str(src), "--to", "en", "--from", "de", "--backend", "local",
                                "--out", str(tmp_path / "o.wav"), "--fast")
    assert code == 2
    assert "hears de but cannot translate from it; it translates from" in one_line(stderr)


@needs_local
async def test_speech_the_recogniser_does_not_know_is_named(tmp_path: Path) -> None:
    """Before: Spanish to the English recogniser came out as an invented English sentence, exit 0."""
    src, config = tmp_path / "es.wav", tmp_path / "config.yaml"
    espeak(src, "¿Dónde está la estación de tren? Mi hermano vive en una casa grande.", "es")
    config.write_text("local:\n  asr:\n    model: tiny.en\n")  # the English-only recogniser
    code, _, stderr = await cli(str(src), "--to", "es", "--backend", "local", "--out", str(tmp_path / "o.wav"),
                                "--fast", "--config", str(config))
    assert code == 1
    assert "speech was not in a language the recogniser knows (it knows: en)" in one_line(stderr)


def test_from_is_checked_against_the_languages_document() -> None:
    langs = {"output_languages": ["ca", "es"], "input_languages": ["en"],
             "routes": [{"input": "en", "output": "es"}, {"input": "en", "output": "ca"}]}
    translate.check_source_language("en", "es", langs)
    translate.check_source_language("en-US", "ca", langs)
    translate.check_source_language("fr", "es", None)  # a backend that does not say: accepted
    with pytest.raises(translate.UsageError, match="cannot hear fr"):
        translate.check_source_language("fr", "es", langs)
    with pytest.raises(translate.UsageError, match="no en→de route; from en it translates into ca, es"):
        translate.check_source_language("en", "de", langs)
    heard_only = {**langs, "recognised_languages": ["en", "ja"]}  # whisper hears Japanese; no pair from it
    with pytest.raises(translate.UsageError, match="hears ja but cannot translate from it; it translates from en"):
        translate.check_source_language("ja", "es", heard_only)
