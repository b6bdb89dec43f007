"""Parley's configuration: `config.yaml` validated by pydantic, secrets from the environment only.

Every field has a default that works, so an empty file is a valid config. A bad file is reported as
`ConfigError` naming the field path (`audio.chunk_ms`), never as a traceback. Secrets are `SecretStr`
and are read from the environment, never from the file, so a shared config can't leak a token.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from bot.localrt.config import LocalRTConfig
from bot.playback.config import PlaybackConfig
from bot.realtime.options import (  # the realtime layer's own sections, composed here
    AudioConfig,
    Endpoint,
    InterpreterConfig,
    ModelsConfig,
    ReconnectConfig,
    SessionConfig,
)
from bot.store import StoreError, sqlite_path
from bot.voice.config import VoiceConfig

OPENAI_WS_BASE = "wss://api.openai.com/v1"
NAMED_BACKENDS = ("openai", "openai-realtime", "local")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


class ConfigError(Exception):
    """A config problem a user can fix; the message names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PricesConfig(_Section):
    """US dollars per audio minute sent, by backend (silence counts: it is billed audio time)."""

    openai: float = Field(0.034, ge=0)
    openai_realtime: float = Field(0.06, ge=0, alias="openai-realtime")
    local: float = Field(0.0, ge=0)
    url: float = Field(0.0, ge=0)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CapsConfig(_Section):
    """Limits, enforced in the store so that they hold across processes sharing one database."""

    max_sessions: int = Field(16, ge=1)  # open sessions in this process
    max_sessions_per_guild: int | None = Field(None, ge=1)  # open sessions in one guild, all processes together
    daily_budget_usd: float | None = Field(None, ge=0)  # per guild and UTC day, all processes together
    # A session reserves this much audio time from the budget at a time (atomically in the store), and more
    # as it runs: the guild's reservations never exceed its budget, so processes cannot overshoot it together.
    reserve_s: float = Field(30.0, gt=0)
    # A session's running cost is written to the store this often; a process killed loses at most this much
    # of the ledger, and one not heard from for `lease_stale_s` has its sessions recorded by another process.
    checkpoint_s: float = Field(1.0, gt=0)
    lease_stale_s: float = Field(60.0, gt=0)


class DiscordConfig(_Section):
    """Where Discord is. The defaults are Discord itself; a Discord-compatible server (Parley's own sandbox,
    used by `python -m bot demo`) sets all three."""

    api_base: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    ca_file: Path | None = None  # an extra CA certificate (PEM) to trust, for a server with its own certificate
    # Sharding: this process runs `shard_ids` (default: all) of `shard_count` shards, both accounts alike.
    # A guild's shard is (guild_id >> 22) % shard_count; its room lives in the process holding that shard.
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None

    @model_validator(mode="after")
    def _shards(self) -> DiscordConfig:
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("shard_ids needs shard_count (how many shards there are in all)")
            bad = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if bad or not self.shard_ids or len(set(self.shard_ids)) != len(self.shard_ids):
                raise ValueError(f"shard_ids must be distinct shard numbers from 0 to {self.shard_count - 1}, "
                                 f"got {self.shard_ids}")
        return self

    @field_validator("api_base")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http:// or https:// URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("gateway_url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise ValueError(f"must be a ws:// or wss:// URL, got {v!r}")
        return v

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v


class MetricsConfig(_Section):
    """Prometheus metrics (`/metrics`); off unless a port is set."""

    port: int | None = Field(None, ge=0, le=65535)  # 0 = any free port (logged)
    host: str = "127.0.0.1"


class TranscriptsConfig(_Section):
    """Room transcripts (`/translate transcript`): in memory only, never written to disk by Parley."""

    retention_s: float = Field(default=600.0, ge=0, le=86_400)  # kept this long after the room closes
    max_lines: int = Field(default=5000, ge=10)  # per room; the oldest lines go first (counted in the file)


class StoreConfig(_Section):
    """Where member preferences, guild channels, the spend ledger and open sessions live (bot/store/).

    `url` chooses the database: `sqlite:///relative.sqlite3`, `sqlite:////absolute.sqlite3` or
    `postgresql://user@host:5432/db` (what several bot processes share). Unset: the SQLite file `path`.
    A PostgreSQL password belongs in the environment (`PGPASSWORD`, or the whole URL in `PARLEY_STORE_URL`),
    never in the file."""

    path: Path = Path("parley.sqlite3")
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme == "sqlite":
            try:
                sqlite_path(v)  # the store's own reading of it, so the two never disagree
            except StoreError as e:
                raise ValueError(str(e)) from None
            return v
        if parts.scheme in ("postgresql", "postgres") and parts.hostname:
            return v
        raise ValueError(f"must be a sqlite:/// or postgresql:// URL, got one with scheme {parts.scheme!r}")

    @property
    def target(self) -> str | Path:
        """What `Store.open` takes: the URL when set, else the file."""
        return self.url if self.url is not None else self.path

    @property
    def field(self) -> str:
        """The setting to name in a message about the store."""
        return "store.url" if self.url is not None else "store.path"




class Secrets(BaseModel):
    """Tokens from the environment. SecretStr keeps them out of reprs, logs and errors."""

    discord_token: SecretStr | None = None
    discord_speaker_token: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    localrt_api_key: SecretStr | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Secrets:
        env = os.environ if env is None else env
        return cls(
            discord_token=env.get("DISCORD_TOKEN") or None,
            discord_speaker_token=env.get("DISCORD_SPEAKER_TOKEN") or None,
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            localrt_api_key=env.get("LOCALRT_API_KEY") or None,
        )


class Settings(_Section):
    # openai | openai-realtime | local | a ws:// or wss:// URL of a server speaking either protocol
    backend: str = "openai"
    target_language: str = "es"  # shows something with every backend, the English-only offline one included
    models: ModelsConfig = ModelsConfig()
    audio: AudioConfig = AudioConfig()
    session: SessionConfig = SessionConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    interpreter: InterpreterConfig = InterpreterConfig()
    prices: PricesConfig = PricesConfig()
    caps: CapsConfig = CapsConfig()
    voice: VoiceConfig = VoiceConfig()
    playback: PlaybackConfig = PlaybackConfig()
    local: LocalRTConfig = LocalRTConfig()
    store: StoreConfig = StoreConfig()
    transcripts: TranscriptsConfig = TranscriptsConfig()
    discord: DiscordConfig = DiscordConfig()
    metrics: MetricsConfig = MetricsConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    secrets: Secrets = Field(default_factory=Secrets, exclude=True)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        if v in NAMED_BACKENDS:
            return v
        parts = urlsplit(v)
        if parts.scheme in ("ws", "wss") and parts.netloc:
            return v
        raise ValueError(f"must be one of {', '.join(NAMED_BACKENDS)} or a ws:// / wss:// URL, got {v!r}")

    @field_validator("target_language")
    @classmethod
    def _language_code(cls, v: str) -> str:
        return check_language(v)


def check_language(code: str) -> str:
    """A target language is an ISO 639 code, optionally with a region (`es`, `pt-BR`)."""
    if not _LANGUAGE.match(code):
        raise ValueError(f"must be a language code such as 'es' or 'pt-BR', got {code!r}")
    return code


def resolve_endpoint(settings: Settings) -> Endpoint:
    """Turn the configured backend into a URL + protocol. Raises ConfigError if a key is missing."""
    backend, models, prices, secrets = settings.backend, settings.models, settings.prices, settings.secrets
    if backend in ("openai", "openai-realtime"):
        if secrets.openai_api_key is None:
            raise ConfigError(f"backend {backend!r} needs OPENAI_API_KEY in the environment (or use backend: local)")
        if backend == "openai":
            url, protocol, model, price = "realtime/translations", "translation", models.translate, prices.openai
        else:
            url, protocol, model, price = "realtime", "realtime", models.realtime, prices.openai_realtime
        return Endpoint(_with_model(f"{OPENAI_WS_BASE}/{url}", model), protocol, model, secrets.openai_api_key, price)
    if backend == "local" and settings.local.urls:  # a pool of workers: each connect picks the least loaded
        from bot.realtime.pool import WorkerPool

        key = secrets.localrt_api_key
        urls = [_with_model(_translations_url(u), models.translate) for u in settings.local.urls]
        pool = WorkerPool(urls, key.get_secret_value() if key is not None else None)
        return Endpoint(urls[0], "translation", models.translate, key, prices.local, pool=pool)
    if backend == "local":
        host = settings.local.host if settings.local.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return Endpoint(
            _with_model(f"ws://{host}:{settings.local.port}/v1/realtime/translations", models.translate),
            "translation", models.translate, secrets.localrt_api_key, prices.local,
        )
    parts = urlsplit(backend)
    path = parts.path.rstrip("/")
    protocol: Literal["translation", "realtime"] = "realtime" if path.endswith("/realtime") else "translation"
    if protocol == "translation" and not path.endswith("/realtime/translations"):
        path = f"{path}/v1/realtime/translations" if not path.endswith("/v1") else f"{path}/realtime/translations"
    model = models.realtime if protocol == "realtime" else models.translate
    url = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    # An OpenAI key never travels over plaintext ws://: a URL backend gets LOCALRT_API_KEY, or the
    # OpenAI key only over wss://.
    key = secrets.localrt_api_key or (secrets.openai_api_key if parts.scheme == "wss" else None)
    return Endpoint(url if "model=" in parts.query else _with_model(url, model), protocol, model, key, prices.url)


def _translations_url(base: str) -> str:
    """ws://host:port (or …/v1) → ws://host:port/v1/realtime/translations."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith("/realtime/translations"):
        path = f"{path}/realtime/translations" if path.endswith("/v1") else f"{path}/v1/realtime/translations"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _with_model(url: str, model: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}{urlencode({'model': model})}"


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line per problem, each naming the field path the user has to fix."""
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against config.yaml)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


DEFAULT_CONFIG = Path("config.yaml")


def config_path(given: Path | None, cwd: Path | None = None) -> Path | None:
    """One rule for every command: the file given, else ./config.yaml when there is one, else the defaults."""
    if given is not None:
        return given
    default = (cwd or Path.cwd()) / DEFAULT_CONFIG
    return DEFAULT_CONFIG if default.is_file() else None


def load_settings(path: str | Path | None, env: dict[str, str] | None = None) -> Settings:
    """Read and validate the config file (None → all defaults) plus the environment.

    `PARLEY_BACKEND` overrides `backend` so `make run` can switch to the local server without editing
    the file; `PARLEY_STORE_URL` overrides `store.url` (a URL with a password stays out of the file);
    `PARLEY_SHARD_COUNT`, `PARLEY_SHARD_IDS` (`0,1`) and `PARLEY_LOCAL_URLS` (comma-separated) override
    `discord.shard_count`, `discord.shard_ids` and `local.urls`, so one image runs as several processes.
    """
    env = dict(os.environ) if env is None else env
    data: Any = {}
    source = str(path) if path is not None else "(defaults)"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{source}: cannot read config file: {e.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of settings, got {type(data).__name__}")
        if "secrets" in data:
            raise ConfigError(f"{source}: secrets: tokens belong in the environment, not in the config file")
        store_url = data.get("store", {}).get("url") if isinstance(data.get("store"), dict) else None
        if isinstance(store_url, str) and urlsplit(store_url).password is not None:
            raise ConfigError(f"{source}: store.url: the database password belongs in the environment "
                              "(PGPASSWORD, or the whole URL in PARLEY_STORE_URL), not in the config file")
    if env.get("PARLEY_BACKEND"):
        data = {**data, "backend": env["PARLEY_BACKEND"]}
    if env.get("PARLEY_STORE_URL"):  # may carry a password: the environment is where secrets live
        store = data.get("store") if isinstance(data.get("store"), dict) else {}
        data = {**data, "store": {**store, "url": env["PARLEY_STORE_URL"]}}
    # One image, several processes (docker-compose.yml): each is told its shards and its workers here.
    for var, section, key in (("PARLEY_SHARD_COUNT", "discord", "shard_count"),
                              ("PARLEY_SHARD_IDS", "discord", "shard_ids"), ("PARLEY_LOCAL_URLS", "local", "urls")):
        if env.get(var):
            value: object = env[var] if key == "shard_count" else [x.strip() for x in env[var].split(",") if x.strip()]
            part = data.get(section) if isinstance(data.get(section), dict) else {}
            data = {**data, section: {**part, key: value}}
    try:
        return Settings.model_validate({**data, "secrets": Secrets.from_env(env)})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
