"""The Docker image and docker-compose.yml, checked without a Docker engine.

The Dockerfile is parsed and checked against the Makefile (same Debian packages) and against what the bot needs
(a /data volume owned by its user, SIGTERM, a health check). Then its layout is reproduced: a directory owned by
uid 10001 stands for /data and is the working directory, the shipped config.yaml is the config, the environment
is the image's `ENV`, and the bot runs as that non-root user (through `setpriv` when the tests run as root):
`run --check`, then the bot itself against the sandbox Discord, its HEALTHCHECK command, and `docker stop`'s
SIGTERM. Not verified here: the image build itself (apt, pip in python:3.11-slim) and Docker's own handling.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bot.config import load_settings, resolve_endpoint

ROOT = Path(__file__).resolve().parents[1]
UID = 10001  # the image's `useradd --uid`


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def one(name: str) -> str:
    found = [args for word, args in instructions() if word == name]
    assert found, f"Dockerfile has no {name}"
    return found[-1]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return env


def makefile_packages() -> set[str]:
    m = re.search(r"^APT_PACKAGES\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    assert m
    return set(m.group(1).split())


def test_the_image_installs_the_makefiles_debian_packages() -> None:
    installs = [args for word, args in instructions() if word == "RUN" and "apt-get install" in args]
    assert installs
    words = set(installs[0].split("apt-get install", 1)[1].split("&&")[0].split())
    assert {w for w in words if not w.startswith("-")} == makefile_packages()


def test_the_image_runs_as_its_user_in_a_data_volume_it_owns() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert f"--uid {UID} parley" in runs
    assert "mkdir /data" in runs and "chown parley:parley /data" in runs
    assert one("USER") == "parley"
    assert one("WORKDIR") == "/data", "relative paths (store.path, voice.capture_dir) must land in the volume"
    assert one("VOLUME") in ("/data", '["/data"]')
    assert one("STOPSIGNAL") == "SIGTERM"
    assert one("HEALTHCHECK").startswith("--interval=")
    assert json.loads(one("CMD")) == ["python", "-m", "bot", "run", "--config", "/app/config.yaml"]
    assert any(word == "COPY" and args == "config.yaml ./" for word, args in instructions())
    # The shipped config keeps the store relative, i.e. in the working directory (/data).
    assert not load_settings(ROOT / "config.yaml", env={}).store.path.is_absolute()
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert ".venv" in ignored and ".git" in ignored and "*.sqlite3*" in ignored


def healthcheck_command() -> list[str]:
    args = one("HEALTHCHECK")
    return json.loads(args[args.index("CMD ") + 4 :])


def test_compose_runs_postgres_two_shards_and_two_localrt_workers() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"postgres", "localrt-1", "localrt-2", "bot-0", "bot-1"}
    from bot.__main__ import build_parser

    for name in ("localrt-1", "localrt-2"):
        local = services[name]["command"]
        assert local[:4] == ["python", "-m", "bot", "localrt"]
        args = build_parser().parse_args(local[3:])
        assert (args.host, args.port, str(args.config)) == ("0.0.0.0", 8765, "/app/config.yaml")
    assert services["postgres"]["image"].startswith("postgres:")
    assert "parley-pg:/var/lib/postgresql/data" in services["postgres"]["volumes"] and "parley-pg" in compose["volumes"]
    shards = []
    for name in ("bot-0", "bot-1"):
        bot = services[name]
        assert {d: c["condition"] for d, c in bot["depends_on"].items()} == {
            "postgres": "service_healthy", "localrt-1": "service_healthy", "localrt-2": "service_healthy"}
        env = {k: str(v).replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "pw") for k, v in
               bot["environment"].items() if not str(v).startswith("${")}
        # What each bot process then runs, with the image's config:
        settings = load_settings(ROOT / "config.yaml", env=env)
        endpoint = resolve_endpoint(settings)
        assert endpoint.pool is not None
        assert [w.name for w in endpoint.pool.workers] == ["localrt-1:8765", "localrt-2:8765"]
        assert settings.store.url == "postgresql://parley:pw@postgres:5432/parley"
        shards.append((settings.discord.shard_count, settings.discord.shard_ids))
    assert shards == [(2, [0]), (2, [1])]


def test_pyproject_license_is_spdx_and_setuptools_prints_no_deprecation() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"][0]
    import setuptools
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX licenses (`make deps` installs >= 77)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [str(w.message) for w in caught if "license" in str(w.message).lower()]


# -- the layout, reproduced ------------------------------------------------------------------------------


def as_image_user() -> list[str]:
    """The command prefix that runs as the image's non-root user (as root: setpriv to uid 10001)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop to the image's user")
    return [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups"]


@contextlib.contextmanager
def image_layout() -> Iterator[Path]:
    """base/app/config.yaml (root-owned, like /app), base/data (the user's, like /data), base/tmp (like /tmp)."""
    base = Path(tempfile.mkdtemp(prefix="parley-image-"))
    try:
        base.chmod(0o755)
        (base / "app").mkdir()
        shutil.copy(ROOT / "config.yaml", base / "app" / "config.yaml")
        (base / "data").mkdir()
        (base / "tmp").mkdir(mode=0o1777)
        (base / "tmp").chmod(0o1777)
        if os.geteuid() == 0:
            os.chown(base / "data", UID, UID)
        _join_models_as_the_build_does(base / "opt" / "models")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _join_models_as_the_build_does(cache: Path) -> None:
    """The image's build step: whisper base joined (as root) into PARLEY_MODEL_CACHE, readable by everyone."""
    from bot.localrt.engines.whisper_models import base_installed, whisper_base_path

    if not base_installed():
        return
    old = os.umask(0o022)  # a build's umask
    try:
        whisper_base_path(cache=cache)
    finally:
        os.umask(old)


def image_process_env(base: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(base / "tmp"), **image_env(), **extra}
    env["PARLEY_HEALTH_FILE"] = str(base / "tmp" / Path(image_env()["PARLEY_HEALTH_FILE"]).name)
    assert image_env()["PARLEY_MODEL_CACHE"] == "/opt/parley/models", "the build joins whisper base there"
    env["PARLEY_MODEL_CACHE"] = str(base / "opt" / "models")
    return env


def test_run_check_as_the_image_user_in_its_layout(tmp_path: Path) -> None:
    with image_layout() as base:
        env = image_process_env(base, DISCORD_TOKEN="fake", DISCORD_SPEAKER_TOKEN="fake")
        config = str(base / "app" / "config.yaml")
        cmd = [*as_image_user(), sys.executable, "-m", "bot", "run", "--check", "--config", config]
        r = subprocess.run(cmd, cwd=base / "data", env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"store.path: {base / 'data' / 'parley.sqlite3'}" in r.stdout
        assert "local.asr: faster-whisper (base)" in r.stdout, "the joined model, read-only, as the image user"
        assert not (base / "tmp" / ".cache").exists(), "nothing joined again at run time"
        # The old image: WORKDIR /app (root's) as the working directory of a non-root user.
        r = subprocess.run(cmd, cwd=base / "app", env=env, capture_output=True, text=True, timeout=120)
        if os.geteuid() == 0:
            assert r.returncode == 2, r.stdout
            assert "error  store.path: cannot create" in r.stdout and "not writable" in r.stdout
            assert "store.path" in r.stderr


@pytest.mark.timeout(180)
async def test_the_bot_starts_as_the_image_user_stays_healthy_and_stops_on_sigterm() -> None:
    import asyncio

    from tests.sandbox.stack import BotProcess, stack, until

    with image_layout() as base:
        async with stack(base) as s:
            config = yaml.safe_load((base / "app" / "config.yaml").read_text(encoding="utf-8"))
            config["backend"] = f"ws://127.0.0.1:{s.localrt.port}"
            config["discord"] = {"api_base": s.sb.api_base, "gateway_url": s.sb.gateway_url,
                                 "ca_file": str(s.sb.tls.ca_file)}
            (base / "app" / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
            env = image_process_env(base, DISCORD_TOKEN=s.listener.token, DISCORD_SPEAKER_TOKEN=s.voice.token)
            health = [*as_image_user(), sys.executable, *healthcheck_command()[1:]]
            r = subprocess.run(health, env=env, cwd=base / "data", capture_output=True, timeout=30)
            assert r.returncode == 1, "healthy before the bot ever ran"
            log = base / "bot.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([*as_image_user(), sys.executable, *json.loads(one("CMD"))[1:-1],
                                         str(base / "app" / "config.yaml")],
                                        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base / "data")
            bot = BotProcess(proc, log)
            s.bots.append(bot)
            await until(lambda: proc.poll() is not None or s.sb.gateway.sessions_of(s.listener.id), 60,
                        "the bot to log in")
            assert proc.poll() is None, bot.text()
            alive = Path(env["PARLEY_HEALTH_FILE"])
            await until(lambda: proc.poll() is not None or alive.exists(), 30, "the health heartbeat")
            assert proc.poll() is None, bot.text()
            r = await asyncio.to_thread(subprocess.run, health, env=env, cwd=base / "data", capture_output=True,
                                        timeout=30)
            assert r.returncode == 0, r.stderr
            store = base / "data" / "parley.sqlite3"
            assert store.exists()
            if os.geteuid() == 0:
                assert store.stat().st_uid == UID
            code, seconds = await asyncio.to_thread(bot.stop, signal.SIGTERM, 40)
            assert code == 0, bot.text()[-2000:]
            assert seconds < 10
            assert "Traceback" not in bot.text() and "unable to open database" not in bot.text()
