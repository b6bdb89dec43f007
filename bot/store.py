"""Member preferences and guild settings, kept in one SQLite file.

Why SQLite: a member's target language and opt-out must survive restarts, and a single file needs no
server. Every call runs on one dedicated thread that owns the one connection, so the event loop never
waits on disk and SQLite never sees two threads. The schema is versioned with `PRAGMA user_version`
and migrated forward on open; a file that is not a Parley database is a `StoreError` naming the path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Migration N takes a database at user_version N to N + 1. Append only; never edit a shipped step.
_MIGRATIONS: tuple[str, ...] = (
    # 0 → 1: per-member preferences and per-guild channels
    """
    CREATE TABLE members (
        guild_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        target_language TEXT,
        opted_out INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );
    CREATE TABLE guilds (
        guild_id INTEGER PRIMARY KEY,
        output_channel_id INTEGER,
        caption_channel_id INTEGER,
        updated_at REAL NOT NULL
    );
    """,
    # 1 → 2: the daily spend ledger behind caps.daily_budget_usd; a partial index for opt-out lookups
    """
    CREATE TABLE spend (
        guild_id INTEGER NOT NULL,
        day TEXT NOT NULL,
        usd REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (guild_id, day)
    );
    CREATE INDEX members_opted_out ON members (guild_id) WHERE opted_out = 1;
    """,
    # 2 → 3: the language a member speaks (skips language identification; same-language speech is not translated)
    """
    ALTER TABLE members ADD COLUMN speaks TEXT;
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


class StoreError(Exception):
    """The store cannot be used (not a database, newer schema, closed); the message names the file."""


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


def _today() -> date:
    return datetime.now(UTC).date()


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class Store:
    """Async facade over one SQLite connection owned by one worker thread. Create with `await Store.open(path)`."""

    def __init__(self, path: Path, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self.path = path
        self._executor = executor
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating if needed) and migrate the database at `path`; `":memory:"` for a throwaway store."""
        where = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-store")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, _connect, str(path), where)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(where, executor, conn)

    async def close(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- members --------------------------------------------------------------------------------

    async def member(self, guild_id: int, user_id: int) -> MemberPrefs:
        def read(c: sqlite3.Connection) -> MemberPrefs:
            row = c.execute(
                "SELECT target_language, opted_out, updated_at, speaks FROM members WHERE guild_id = ? AND user_id = ?",
                (guild_id, user_id),
            ).fetchone()
            if row is None:
                return MemberPrefs(guild_id, user_id)
            return MemberPrefs(guild_id, user_id, row[0], bool(row[1]), _when(row[2]), row[3])

        return await self._run(read)

    async def set_language(self, guild_id: int, user_id: int, language: str | None) -> None:
        """None clears the member's choice (the configured default applies again). Validation is the caller's."""
        await self._upsert_member(guild_id, user_id, "target_language", language)

    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        """The language the member speaks; None clears it (their language is identified from speech again)."""
        await self._upsert_member(guild_id, user_id, "speaks", language)

    async def guild_languages(self, guild_id: int) -> set[str]:
        """Every language members of the guild chose to hear or said they speak: the candidates when a
        backend identifies a speaker's language."""

        def read(c: sqlite3.Connection) -> set[str]:
            rows = c.execute(
                "SELECT target_language FROM members WHERE guild_id = ? AND target_language IS NOT NULL "
                "UNION SELECT speaks FROM members WHERE guild_id = ? AND speaks IS NOT NULL",
                (guild_id, guild_id),
            )
            return {r[0] for r in rows}

        return await self._run(read)

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        await self._upsert_member(guild_id, user_id, "opted_out", int(opted_out))

    async def opted_out_members(self, guild_id: int) -> set[int]:
        def read(c: sqlite3.Connection) -> set[int]:
            rows = c.execute("SELECT user_id FROM members WHERE guild_id = ? AND opted_out = 1", (guild_id,))
            return {r[0] for r in rows}

        return await self._run(read)

    async def _upsert_member(self, guild_id: int, user_id: int, column: str, value: object) -> None:
        assert column in ("target_language", "opted_out", "speaks")  # a fixed name, never user input
        sql = (
            f"INSERT INTO members (guild_id, user_id, {column}, updated_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (guild_id, user_id) DO UPDATE SET {column} = excluded.{column}, "
            "updated_at = excluded.updated_at"
        )
        await self._write(sql, (guild_id, user_id, value, time.time()))

    # -- guilds ---------------------------------------------------------------------------------

    async def guild(self, guild_id: int) -> GuildSettings:
        def read(c: sqlite3.Connection) -> GuildSettings:
            row = c.execute(
                "SELECT output_channel_id, caption_channel_id, updated_at FROM guilds WHERE guild_id = ?", (guild_id,)
            ).fetchone()
            return GuildSettings(guild_id) if row is None else GuildSettings(guild_id, row[0], row[1], _when(row[2]))

        return await self._run(read)

    async def set_guild_channels(
        self, guild_id: int, output_channel_id: int | None, caption_channel_id: int | None
    ) -> None:
        await self._write(
            "INSERT INTO guilds (guild_id, output_channel_id, caption_channel_id, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (guild_id) DO UPDATE SET output_channel_id = excluded.output_channel_id, "
            "caption_channel_id = excluded.caption_channel_id, updated_at = excluded.updated_at",
            (guild_id, output_channel_id, caption_channel_id, time.time()),
        )

    # -- spend ----------------------------------------------------------------------------------

    async def add_spend(self, guild_id: int, usd: float, day: date | None = None) -> None:
        """Add `usd` to the guild's total for `day` (UTC today by default)."""
        if not usd >= 0:
            raise ValueError(f"spend must be a non-negative amount, got {usd!r}")
        await self._write(
            "INSERT INTO spend (guild_id, day, usd) VALUES (?, ?, ?) "
            "ON CONFLICT (guild_id, day) DO UPDATE SET usd = usd + excluded.usd",
            (guild_id, (day or _today()).isoformat(), usd),
        )

    async def spend_today(self, guild_id: int, day: date | None = None) -> float:
        """US dollars spent by the guild on `day` (UTC today by default)."""

        def read(c: sqlite3.Connection) -> float:
            row = c.execute(
                "SELECT usd FROM spend WHERE guild_id = ? AND day = ?", (guild_id, (day or _today()).isoformat())
            ).fetchone()
            return 0.0 if row is None else float(row[0])

        return await self._run(read)

    # -- plumbing -------------------------------------------------------------------------------

    async def _write(self, sql: str, params: tuple[object, ...]) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.execute(sql, params)  # autocommit: one statement, one transaction

        await self._run(write)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.path}: the store is closed")

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as e:  # disk full, locked beyond busy_timeout, read-only or damaged file
                raise StoreError(f"{self.path}: {e}") from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def _connect(target: str, path: Path) -> sqlite3.Connection:
    """Open and migrate; runs on the store's thread, which then owns the connection."""
    if target != ":memory:":
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{path}: cannot create its directory: {e.strerror}") from None
    try:
        conn = sqlite3.connect(target, isolation_level=None)  # autocommit; transactions are explicit
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the database: {e}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # first read: a non-database fails here
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: database schema version {version} is newer than this Parley understands "
                f"({SCHEMA_VERSION}); upgrade Parley or point store.path at another file"
            )
        if target != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses at most the last commits
        _migrate(conn)
    except StoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path}: not a usable Parley database ({e})") from None
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply each missing step in its own transaction; user_version moves with the step it records.

    The version is re-read under the write lock, so two processes opening one old file migrate it once.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            step = conn.execute("PRAGMA user_version").fetchone()[0]
            if step >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                return
            for statement in _MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
