"""`python -m bot localrt` problems a user meets are one line and exit 2 (issue 10)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.localrt.config import ASRConfig
from bot.localrt.engines.asr import EngineError, WhisperRecognizer

ROOT = Path(__file__).resolve().parents[2]


def localrt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot", "localrt", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def assert_one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = localrt("--port", str(port))
    assert result.returncode == 2
    line = assert_one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "already in use" in line


@pytest.mark.parametrize("model,expected", [
    ("/nonexistent/whisper-small", "no such folder"),
    ("./models/whisper", "no such folder"),
    ("small.en", "no such model on this host"),  # base and tiny.en are the bundled ones
    ("Systran/faster-whisper-small", "no such model on this host"),
])
def test_an_unavailable_asr_model_is_one_clear_sentence(model: str, expected: str) -> None:
    with pytest.raises(EngineError) as e:
        WhisperRecognizer(ASRConfig(model=model))
    message = str(e.value)
    assert expected in message and "local_files_only" not in message
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


def test_a_folder_without_a_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not a faster-whisper model folder"):
        WhisperRecognizer(ASRConfig(model=str(tmp_path)))


def test_cli_says_it_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("local:\n  asr:\n    model: /nonexistent/model\n")
    result = localrt("--config", str(config), "--languages")
    assert result.returncode == 2
    assert "asr.model /nonexistent/model: no such folder" in assert_one_line(result.stderr)
    config.write_text("local:\n  mt:\n    engine: ctranslate2\n")
    result = localrt("--config", str(config), "--languages")
    assert result.returncode == 2 and "mt.model_path" in assert_one_line(result.stderr)
