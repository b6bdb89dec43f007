"""`store.url` and the scaled-deployment settings: what is accepted, what is refused, and where secrets may live."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings


def settings(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    (tmp_path / "c.yaml").write_text(text)
    return load_settings(tmp_path / "c.yaml", env=env or {})


def test_store_url_chooses_the_database(tmp_path: Path) -> None:
    assert settings(tmp_path, "").store.target == Path("parley.sqlite3")
    assert settings(tmp_path, "store:\n  path: x.sqlite3\n").store.field == "store.path"
    s = settings(tmp_path, "store:\n  url: postgresql://parley@db:5432/parley\n")
    assert (s.store.target, s.store.field) == ("postgresql://parley@db:5432/parley", "store.url")
    assert settings(tmp_path, "store:\n  url: sqlite:///data/p.sqlite3\n").store.target == "sqlite:///data/p.sqlite3"


@pytest.mark.parametrize(("url", "why"), [
    ("mysql://db/parley", "sqlite:/// or postgresql:// URL, got one with scheme 'mysql'"),
    ("sqlite:relative.db", "sqlite:///relative/path"),
    ("postgresql:///nohost", "sqlite:/// or postgresql:// URL"),
])
def test_a_bad_store_url_names_the_field(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.url") as e:
        settings(tmp_path, f"store:\n  url: {url}\n")
    assert why in str(e.value)


def test_a_password_belongs_in_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PGPASSWORD") as e:
        settings(tmp_path, "store:\n  url: postgresql://parley:hunter2@db/parley\n")
    assert "hunter2" not in str(e.value)
    s = settings(tmp_path, "store:\n  path: x.sqlite3\n", env={"PARLEY_STORE_URL": "postgresql://parley:pw@db/parley"})
    assert s.store.url == "postgresql://parley:pw@db/parley"
    with pytest.raises(ConfigError) as e:  # a bad URL from the environment is not echoed
        settings(tmp_path, "", env={"PARLEY_STORE_URL": "mysql://parley:hunter2@db/parley"})
    assert "hunter2" not in str(e.value)


def test_one_image_runs_as_each_process(tmp_path: Path) -> None:
    env = {"PARLEY_SHARD_COUNT": "4", "PARLEY_SHARD_IDS": "2, 3", "PARLEY_LOCAL_URLS": "ws://a:8765,ws://b:8765"}
    s = settings(tmp_path, "discord:\n  api_base: https://discord.com/api/v10\n", env=env)
    assert (s.discord.shard_count, s.discord.shard_ids, s.local.urls) == (4, [2, 3], ["ws://a:8765", "ws://b:8765"])
    assert s.discord.api_base == "https://discord.com/api/v10", "the file's other settings stay"
    with pytest.raises(ConfigError, match=r"local\.urls"):
        settings(tmp_path, "", env={"PARLEY_LOCAL_URLS": "http://a:8765"})
