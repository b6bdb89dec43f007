"""Member preferences, guild settings, the spend ledger and open session leases: one interface, two databases.

Why two: SQLite (one file, no server) is the embedded default; PostgreSQL is what several bot processes
(shards on several machines) share, so that caps and budgets hold across them. `store.url` chooses:
`sqlite:///parley.sqlite3` (or a bare path, `store.path`) or `postgresql://user@host/db`. Both run the same
versioned migrations (one step per schema version, append only) and the same test suite.

Leases are the database side of `caps`: a row per open translation session with the budget it reserved and
its running cost, checkpointed while it lives. Admission and each reservation are one atomic transaction
(SQLite `BEGIN IMMEDIATE`, PostgreSQL a per-guild advisory lock), so processes racing for a guild's last slot
or last cents cannot overshoot; closing a lease moves its cost into the ledger in the same transaction that
deletes it, so a cost is recorded exactly once — by its process, or, if that process was killed, by whoever
reclaims the row.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

SCHEMA_VERSION = 4  # both backends; each has one migration step per version


class StoreError(Exception):
    """The store cannot be used (not a database, newer schema, closed, unreachable); the message names where."""


@dataclass(frozen=True)
class MemberPrefs:
    guild_id: int
    user_id: int
    target_language: str | None = None  # None: the configured default target_language applies
    opted_out: bool = False
    updated_at: datetime | None = None  # None: never set
    speaks: str | None = None  # the language the member speaks; None: identified from their speech

    def language_or(self, default: str) -> str:
        return self.target_language or default


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int
    output_channel_id: int | None = None  # remembered from the last /translate join
    caption_channel_id: int | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Grant:
    """The answer to a lease or reservation request, decided atomically with the guild's other leases."""

    reserved: float  # US dollars reserved by this request (0 when refused, or when no budget is set)
    spent: float  # the guild's spend on the day: ledger + every open lease's checkpointed cost
    refused: Literal["sessions", "budget"] | None = None  # why nothing was granted


@dataclass(frozen=True)
class Reclaimed:
    """A lease left open by a process that is gone, recorded in the ledger by someone else."""

    lease_id: str
    guild_id: int
    owner: str
    day: date
    usd: float


def reservation(reserve_usd: float, budget_usd: float | None, committed: float) -> float | None:
    """What a lease may reserve now: up to `reserve_usd` of what the budget leaves; None when nothing is left.
    Both drivers decide by it, inside their transaction."""
    if budget_usd is None:
        return max(0.0, reserve_usd)
    left = budget_usd - committed
    if left <= 1e-12:
        return None
    return min(max(0.0, reserve_usd), left)


def today() -> date:
    return datetime.now(UTC).date()


def when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def redact(url: str) -> str:
    """A database URL fit for a log line or an error message: the password is never shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def sqlite_path(target: str | Path) -> str | Path:
    """`sqlite:///rel/path`, `sqlite:////abs/path`, `sqlite://:memory:` or a bare path → what SQLite opens."""
    if isinstance(target, str) and target.startswith("sqlite:"):
        rest = target.removeprefix("sqlite:").removeprefix("//")
        if rest in (":memory:", "/:memory:"):
            return ":memory:"
        if not rest.startswith("/"):
            raise StoreError(f"{target}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        return Path(rest[1:])
    return target


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class Store(abc.ABC):
    """The store's interface. `await Store.open(target)` picks the backend from `target`; use as `async with`."""

    where: str  # the file or the redacted URL, for messages

    @classmethod
    async def open(cls, target: str | Path) -> Store:
        """Open (creating if needed) and migrate: a path or `sqlite:` URL (`":memory:"` for a throwaway store),
        or a `postgresql://` URL."""
        if is_postgres(target):
            from bot.store.postgres import PostgresStore

            return await PostgresStore.connect(str(target))
        from bot.store.sqlite import SqliteStore

        return await SqliteStore.connect(sqlite_path(target))

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- members ------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def member(self, guild_id: int, user_id: int) -> MemberPrefs: ...

    @abc.abstractmethod
    async def set_language(self, guild_id: int, user_id: int, language: str | None) -> None:
        """None clears the member's choice (the configured default applies again). Validation is the caller's."""

    @abc.abstractmethod
    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        """The language the member speaks; None clears it (their language is identified from speech again)."""

    @abc.abstractmethod
    async def spoken_languages(self, guild_id: int) -> set[str]:
        """The languages members of the guild said they speak: the candidates when a backend identifies the
        language of a member who did not say. (Not the languages they hear: English speakers who want Spanish
        and French captions speak neither.)"""

    @abc.abstractmethod
    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None: ...

    @abc.abstractmethod
    async def opted_out_members(self, guild_id: int) -> set[int]: ...

    # -- guilds -------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def guild(self, guild_id: int) -> GuildSettings: ...

    @abc.abstractmethod
    async def set_guild_channels(
        self, guild_id: int, output_channel_id: int | None, caption_channel_id: int | None
    ) -> None: ...

    # -- spend --------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def add_spend(self, guild_id: int, usd: float, day: date | None = None) -> None:
        """Add `usd` to the guild's total for `day` (UTC today by default)."""

    @abc.abstractmethod
    async def spend_today(self, guild_id: int, day: date | None = None) -> float:
        """US dollars recorded for the guild on `day` (UTC today by default): closed sessions only."""

    # -- leases (caps across processes) -------------------------------------------------------------

    @abc.abstractmethod
    async def open_lease(
        self, lease_id: str, guild_id: int, owner: str, *, reserve_usd: float, budget_usd: float | None,
        max_sessions: int | None, day: date | None = None,
    ) -> Grant:
        """Atomically: refuse (the guild has `max_sessions` open leases, or its day's spend and reservations
        leave nothing of `budget_usd`) or insert the lease with up to `reserve_usd` reserved."""

    @abc.abstractmethod
    async def extend_lease(
        self, lease_id: str, usd: float, *, reserve_usd: float, budget_usd: float | None, day: date | None = None
    ) -> Grant:
        """Checkpoint the lease's cost and atomically reserve up to `reserve_usd` more within the budget."""

    @abc.abstractmethod
    async def checkpoint_leases(self, costs: dict[str, float]) -> None:
        """Record the running cost of open leases (and that their process is alive), in one transaction."""

    @abc.abstractmethod
    async def close_lease(self, lease_id: str, usd: float, day: date | None = None) -> float | None:
        """Delete the lease and add `usd` to its guild's ledger for `day`, in one transaction. Returns the
        day's ledger total, or None when the lease was already closed or reclaimed (nothing is added twice)."""

    @abc.abstractmethod
    async def reclaim_leases(self, owner: str, keep: frozenset[str], stale_s: float) -> list[Reclaimed]:
        """Record in the ledger, at their last checkpoint, and delete: the leases of `owner` not in `keep` (a
        previous run of this process, killed), and any lease not checkpointed for `stale_s` seconds."""

    @abc.abstractmethod
    async def open_leases(self, guild_id: int) -> int:
        """How many sessions the guild has open, in every process."""
