"""config.yaml + environment → Settings; bad input names the field; secrets never printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings, resolve_endpoint

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_shipped_config_is_valid_and_matches_the_defaults() -> None:
    shipped = load_settings(ROOT / "config.yaml", env={})
    defaults = load_settings(None, env={})
    assert shipped.model_dump(exclude={"secrets"}) == defaults.model_dump(exclude={"secrets"})


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("backend: carrier-pigeon\n", "backend"),
        ("audio:\n  chunk_ms: 30\n", "audio.chunk_ms"),
        ("audio:\n  chunk_ms: 5000\n", "audio.chunk_ms"),
        ("session:\n  replay_buffer_s: -1\n", "session.replay_buffer_s"),
        ("reconnect:\n  jitter: 3\n", "reconnect.jitter"),
        ("target_language: Spanish\n", "target_language"),
        ("modles:\n  translate: x\n", "modles"),
        ("local:\n  port: 99999\n", "local.port"),
        ("voice:\n  jitter_depth: -1\n", "voice.jitter_depth"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text), env={})
    assert f"  {field}: " in str(e.value)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "backend: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- a\n- b\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", env={})


def test_secrets_come_from_the_environment_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment"):
        load_settings(write(tmp_path, "secrets:\n  openai_api_key: sk-1\n"), env={})
    s = load_settings(None, env={"OPENAI_API_KEY": "sk-very-secret", "DISCORD_TOKEN": "tok-secret"})
    assert s.secrets.openai_api_key.get_secret_value() == "sk-very-secret"
    for text in (repr(s), str(s), s.model_dump_json(), repr(resolve_endpoint(s))):
        assert "sk-very-secret" not in text and "tok-secret" not in text


def test_backends_resolve_to_urls_and_protocols() -> None:
    env = {"OPENAI_API_KEY": "sk-1"}
    e = resolve_endpoint(load_settings(None, env=env))
    assert (e.url, e.protocol) == ("wss://api.openai.com/v1/realtime/translations?model=gpt-realtime-translate",
                                   "translation")
    e = resolve_endpoint(load_settings(None, env={**env, "PARLEY_BACKEND": "openai-realtime"}))
    assert (e.url, e.protocol) == ("wss://api.openai.com/v1/realtime?model=gpt-realtime", "realtime")
    e = resolve_endpoint(load_settings(None, env={"PARLEY_BACKEND": "local"}))
    assert e.url == "ws://127.0.0.1:8765/v1/realtime/translations?model=gpt-realtime-translate"
    assert e.api_key is None and e.price_per_minute == 0
    e = resolve_endpoint(load_settings(None, env={"PARLEY_BACKEND": "ws://10.0.0.5:9000"}))
    assert e.url == "ws://10.0.0.5:9000/v1/realtime/translations?model=gpt-realtime-translate"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        resolve_endpoint(load_settings(None, env={}))


def test_the_openai_key_never_goes_to_a_plaintext_url() -> None:
    env = {"OPENAI_API_KEY": "sk-1"}
    assert resolve_endpoint(load_settings(None, env={**env, "PARLEY_BACKEND": "ws://10.0.0.5:9000"})).api_key is None
    e = resolve_endpoint(load_settings(None, env={**env, "PARLEY_BACKEND": "wss://proxy.example/v1"}))
    assert e.api_key.get_secret_value() == "sk-1"
    e = resolve_endpoint(load_settings(None, env={**env, "LOCALRT_API_KEY": "lk", "PARLEY_BACKEND": "ws://h:1"}))
    assert e.api_key.get_secret_value() == "lk"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=60)


def test_run_with_a_bad_file_exits_nonzero_naming_the_field(tmp_path: Path) -> None:
    bad = write(tmp_path, "backend: nowhere\naudio:\n  chunk_ms: 33\n")
    r = run_cli("run", "--config", str(bad))
    assert r.returncode == 2
    assert "backend:" in r.stderr and "audio.chunk_ms:" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_check_never_prints_secrets(tmp_path: Path) -> None:
    r = run_cli("run", "--check", "--config", str(ROOT / "config.yaml"),
                env={"OPENAI_API_KEY": "sk-hidden-42", "DISCORD_TOKEN": "disc-hidden"})
    assert r.returncode == 0, r.stderr
    assert "sk-hidden-42" not in r.stdout + r.stderr and "disc-hidden" not in r.stdout + r.stderr


def test_help_lists_every_subcommand() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "translate", "localrt", "replay"):
        assert cmd in r.stdout


def test_every_command_finds_the_config_the_same_way(tmp_path: Path) -> None:
    """The file given, else ./config.yaml when present, else the defaults — for run as for translate."""
    import subprocess
    import sys

    from bot.config import config_path

    assert config_path(Path("x.yaml"), tmp_path) == Path("x.yaml")
    assert config_path(None, tmp_path) is None
    (tmp_path / "config.yaml").write_text("target_language: es\n")
    assert config_path(None, tmp_path) == Path("config.yaml")
    env = {"PATH": "/usr/bin:/bin", "DISCORD_TOKEN": "x", "PARLEY_BACKEND": "ws://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-m", "bot", "run", "--check"], cwd=tmp_path / "..", env=env,
                          capture_output=True, text=True, timeout=120)
    assert "cannot read config file" not in done.stderr + done.stdout, done.stderr
    assert "(defaults)" in done.stdout + done.stderr, done.stdout + done.stderr
