"""`python -m bot run --check`: could `make run` run the bot with this file, on this machine, with this environment?

The local backend's engines are really loaded (whisper takes about a second) and asked what they can produce.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.run import check
from tests.test_config import ROOT, run_cli


def test_the_shipped_config_passes_without_an_openai_key_and_says_what_make_run_does() -> None:
    r = run_cli("run", "--check", "--config", str(ROOT / "config.yaml"), env={"DISCORD_TOKEN": "fake"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "needs OPENAI_API_KEY" in r.stdout and "`make run` uses backend local" in r.stdout
    assert "ok     target_language: " in r.stdout  # the local engines were asked, not skipped
    assert "note   DISCORD_SPEAKER_TOKEN: not set" in r.stdout
    assert "Traceback" not in r.stderr


def test_a_missing_listener_token_is_named() -> None:
    r = run_cli("run", "--check", "--config", str(ROOT / "config.yaml"), env={"PARLEY_BACKEND": "local"})
    assert r.returncode == 2
    assert "error  DISCORD_TOKEN: not set" in r.stdout and "DISCORD_TOKEN" in r.stderr
    assert "DISCORD_SPEAKER_TOKEN: not set" in r.stdout


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("target_language: ja\n", "target_language"),
        ("local:\n  tts:\n    voices: {es: no-such-voice}\n", "local.tts.voices.es"),
        ("local:\n  asr:\n    model: /nonexistent/whisper-model\n", "local.asr.model"),
        ("local:\n  mt:\n    engine: ctranslate2\n", "local.mt.model_path"),
        ("store:\n  path: TMP/c.yaml/parley.sqlite3\n", "store.path"),
    ],
    ids=["language-local-cannot-produce", "espeak-voice", "asr-model", "ctranslate2-without-path", "store"],
)
def test_a_config_that_cannot_work_fails_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str
) -> None:
    (tmp_path / "c.yaml").write_text("backend: local\n" + text.replace("TMP", str(tmp_path)))
    settings = load_settings(tmp_path / "c.yaml", env={"DISCORD_TOKEN": "t", "DISCORD_SPEAKER_TOKEN": "s"})
    assert check(settings, "c.yaml") == 2
    out, err = capsys.readouterr()
    errors = [line for line in out.splitlines() if line.startswith("  error")]
    assert [line.split(":")[0].split()[-1] for line in errors] == [field], out
    assert field in err


def test_what_works_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # tiny.en: English is the one input
    (tmp_path / "c.yaml").write_text("backend: local\ntarget_language: es\nlocal:\n  tts:\n    voices: {es: es-419}\n"
                                     "  asr:\n    model: tiny.en\n"
                                     f"store:\n  path: {tmp_path / 'new' / 'p.sqlite3'}\n")
    assert check(load_settings(tmp_path / "c.yaml", env={"DISCORD_TOKEN": "t"}), "c.yaml") == 0
    out = capsys.readouterr().out
    assert "ok     target_language: es from 1 language(s) (en); e.g. from en: translation eng-spa, voice es-419" in out
    assert "ok     local.asr: faster-whisper (tiny.en) hears en" in out
    assert not (tmp_path / "new").exists(), "--check creates nothing"


def test_a_url_backend_that_does_not_answer_is_a_note_not_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    settings = load_settings(None, env={"DISCORD_TOKEN": "t", "PARLEY_BACKEND": f"ws://127.0.0.1:{port}"})
    assert check(settings, "(defaults)") == 0
    assert "target_language is checked when a member joins" in capsys.readouterr().out
