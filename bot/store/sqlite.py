"""The store in one SQLite file, through aiosqlite (its own thread per connection: the event loop never waits
on disk, SQLite never sees two threads). The schema version is `PRAGMA user_version`, migrated forward on open;
a file that is not a Parley database is a `StoreError` naming the path. Several processes may share one file on
one machine: every write transaction is `BEGIN IMMEDIATE` (the file's write lock), so lease decisions are atomic.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import TypeVar

import aiosqlite

from bot.store import (
    SCHEMA_VERSION,
    Grant,
    GuildSettings,
    MemberPrefs,
    Reclaimed,
    Store,
    StoreError,
    reservation,
    today,
    when,
)

T = TypeVar("T")

# Migration N takes a database at user_version N to N + 1. Append only; never edit a shipped step.
MIGRATIONS: tuple[str, ...] = (
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
    # 3 → 4: open sessions of every process (caps across processes; spend recorded once even if one is killed)
    """
    CREATE TABLE leases (
        lease_id TEXT PRIMARY KEY,
        guild_id INTEGER NOT NULL,
        owner TEXT NOT NULL,
        day TEXT NOT NULL,
        reserved REAL NOT NULL DEFAULT 0,
        usd REAL NOT NULL DEFAULT 0,
        opened_at REAL NOT NULL,
        seen_at REAL NOT NULL
    );
    CREATE INDEX leases_guild ON leases (guild_id);
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class SqliteStore(Store):
    """One aiosqlite connection; one statement or transaction at a time (a lock), so a transaction of one
    coroutine never swallows another's statement."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self.where = str(path)
        self._conn: aiosqlite.Connection | None = conn
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, target: str | Path) -> SqliteStore:
        where = Path(target)
        memory = str(target) == ":memory:"
        if not memory:
            try:
                where.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"{where}: cannot create its directory: {e.strerror}") from None
        pending = aiosqlite.connect(str(target), isolation_level=None)  # autocommit; transactions explicit
        try:
            conn = await pending
        except sqlite3.Error as e:
            # aiosqlite stops its thread without waiting: let it finish before the loop may close
            thread = getattr(pending, "_thread", None)
            if thread is not None and thread.is_alive():
                await asyncio.to_thread(thread.join, 5)
            raise StoreError(f"{where}: cannot open the database: {e}") from None
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            version = await _scalar(conn, "PRAGMA user_version")  # first read: a non-database fails here
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{where}: database schema version {version} is newer than this Parley understands "
                    f"({SCHEMA_VERSION}); upgrade Parley or point store.path at another file"
                )
            if not memory:
                await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses at most the last commits
            await _migrate(conn)
        except sqlite3.DatabaseError as e:
            await conn.close()
            raise StoreError(f"{where}: not a usable Parley database ({e})") from None
        except BaseException:  # a StoreError from a migration, or a cancel: the connection is not left open
            await conn.close()
            raise
        return cls(where, conn)

    async def close(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        async with self._lock:
            await conn.close()

    # -- members --------------------------------------------------------------------------------

    async def member(self, guild_id: int, user_id: int) -> MemberPrefs:
        row = await self._one(
            "SELECT target_language, opted_out, updated_at, speaks FROM members WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        if row is None:
            return MemberPrefs(guild_id, user_id)
        return MemberPrefs(guild_id, user_id, row[0], bool(row[1]), when(row[2]), row[3])

    async def set_language(self, guild_id: int, user_id: int, language: str | None) -> None:
        await self._upsert_member(guild_id, user_id, "target_language", language)

    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        await self._upsert_member(guild_id, user_id, "speaks", language)

    async def spoken_languages(self, guild_id: int) -> set[str]:
        rows = await self._all(
            "SELECT DISTINCT speaks FROM members WHERE guild_id = ? AND speaks IS NOT NULL", (guild_id,),
        )
        return {r[0] for r in rows}

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        await self._upsert_member(guild_id, user_id, "opted_out", int(opted_out))

    async def opted_out_members(self, guild_id: int) -> set[int]:
        rows = await self._all("SELECT user_id FROM members WHERE guild_id = ? AND opted_out = 1", (guild_id,))
        return {r[0] for r in rows}

    async def _upsert_member(self, guild_id: int, user_id: int, column: str, value: object) -> None:
        assert column in ("target_language", "opted_out", "speaks")  # a fixed name, never user input
        await self._write(
            f"INSERT INTO members (guild_id, user_id, {column}, updated_at) VALUES (?, ?, ?, ?) "
            f"ON CONFLICT (guild_id, user_id) DO UPDATE SET {column} = excluded.{column}, "
            "updated_at = excluded.updated_at",
            (guild_id, user_id, value, time.time()),
        )

    # -- guilds ---------------------------------------------------------------------------------

    async def guild(self, guild_id: int) -> GuildSettings:
        row = await self._one(
            "SELECT output_channel_id, caption_channel_id, updated_at FROM guilds WHERE guild_id = ?", (guild_id,)
        )
        return GuildSettings(guild_id) if row is None else GuildSettings(guild_id, row[0], row[1], when(row[2]))

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
        if not usd >= 0:
            raise ValueError(f"spend must be a non-negative amount, got {usd!r}")
        await self._write(_ADD_SPEND, (guild_id, (day or today()).isoformat(), usd))

    async def spend_today(self, guild_id: int, day: date | None = None) -> float:
        row = await self._one(
            "SELECT usd FROM spend WHERE guild_id = ? AND day = ?", (guild_id, (day or today()).isoformat())
        )
        return 0.0 if row is None else float(row[0])

    # -- leases ---------------------------------------------------------------------------------

    async def open_lease(
        self, lease_id: str, guild_id: int, owner: str, *, reserve_usd: float, budget_usd: float | None,
        max_sessions: int | None, day: date | None = None,
    ) -> Grant:
        d = (day or today()).isoformat()

        async def decide(c: aiosqlite.Connection) -> Grant:
            if max_sessions is not None:
                n = await _scalar(c, "SELECT COUNT(*) FROM leases WHERE guild_id = ?", (guild_id,))
                if n >= max_sessions:
                    return Grant(0.0, await _spent(c, guild_id, d), "sessions")
            spent, committed = await _totals(c, guild_id, d)
            reserve = reservation(reserve_usd, budget_usd, committed)
            if reserve is None:
                return Grant(0.0, spent, "budget")
            now = time.time()
            await c.execute(
                "INSERT INTO leases (lease_id, guild_id, owner, day, reserved, usd, opened_at, seen_at) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                (lease_id, guild_id, owner, d, reserve, now, now),
            )
            return Grant(reserve, spent)

        return await self._transaction(decide)

    async def extend_lease(
        self, lease_id: str, usd: float, *, reserve_usd: float, budget_usd: float | None, day: date | None = None
    ) -> Grant:
        d = (day or today()).isoformat()

        async def decide(c: aiosqlite.Connection) -> Grant:
            row = await (await c.execute("SELECT guild_id FROM leases WHERE lease_id = ?", (lease_id,))).fetchone()
            if row is None:
                return Grant(0.0, 0.0, "budget")
            guild_id = row[0]
            await c.execute(
                "UPDATE leases SET usd = ?, day = ?, seen_at = ? WHERE lease_id = ?",
                (usd, d, time.time(), lease_id),
            )
            spent, committed = await _totals(c, guild_id, d)
            reserve = reservation(reserve_usd, budget_usd, committed)
            if reserve is None:
                return Grant(0.0, spent, "budget")
            await c.execute("UPDATE leases SET reserved = reserved + ? WHERE lease_id = ?", (reserve, lease_id))
            return Grant(reserve, spent)

        return await self._transaction(decide)

    async def checkpoint_leases(self, costs: dict[str, float]) -> None:
        if not costs:
            return
        now = time.time()

        async def update(c: aiosqlite.Connection) -> None:
            await c.executemany(
                "UPDATE leases SET usd = ?, seen_at = ? WHERE lease_id = ?",
                [(usd, now, lease_id) for lease_id, usd in costs.items()],
            )

        await self._transaction(update)

    async def close_lease(self, lease_id: str, usd: float, day: date | None = None) -> float | None:
        if not usd >= 0:
            raise ValueError(f"spend must be a non-negative amount, got {usd!r}")
        d = (day or today()).isoformat()

        async def close(c: aiosqlite.Connection) -> float | None:
            row = await (await c.execute("SELECT guild_id FROM leases WHERE lease_id = ?", (lease_id,))).fetchone()
            if row is None:
                return None
            await c.execute("DELETE FROM leases WHERE lease_id = ?", (lease_id,))
            await c.execute(_ADD_SPEND, (row[0], d, usd))
            return float(await _scalar(c, "SELECT usd FROM spend WHERE guild_id = ? AND day = ?", (row[0], d)))

        return await self._transaction(close)

    async def reclaim_leases(self, owner: str, keep: frozenset[str], stale_s: float) -> list[Reclaimed]:
        async def reclaim(c: aiosqlite.Connection) -> list[Reclaimed]:
            rows = await c.execute_fetchall(
                "SELECT lease_id, guild_id, owner, day, usd, seen_at FROM leases WHERE owner = ? OR seen_at < ?",
                (owner, time.time() - stale_s),
            )
            gone = [Reclaimed(r[0], r[1], r[2], date.fromisoformat(r[3]), float(r[4]))
                    for r in rows if r[0] not in keep]
            for lease in gone:
                await c.execute("DELETE FROM leases WHERE lease_id = ?", (lease.lease_id,))
                await c.execute(_ADD_SPEND, (lease.guild_id, lease.day.isoformat(), lease.usd))
            return gone

        return await self._transaction(reclaim)

    async def open_leases(self, guild_id: int) -> int:
        row = await self._one("SELECT COUNT(*) FROM leases WHERE guild_id = ?", (guild_id,))
        return int(row[0]) if row else 0

    # -- plumbing -------------------------------------------------------------------------------

    def _live(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError(f"{self.where}: the store is closed")
        return self._conn

    async def _guard(self, call: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._lock:
            conn = self._live()
            try:
                return await call(conn)
            except sqlite3.Error as e:  # disk full, locked beyond busy_timeout, read-only or damaged file
                raise StoreError(f"{self.where}: {e}") from None

    async def _one(self, sql: str, params: tuple[object, ...]) -> sqlite3.Row | None:
        async def read(c: aiosqlite.Connection) -> sqlite3.Row | None:
            async with c.execute(sql, params) as cur:
                return await cur.fetchone()

        return await self._guard(read)

    async def _all(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        async def read(c: aiosqlite.Connection) -> list[sqlite3.Row]:
            return list(await c.execute_fetchall(sql, params))

        return await self._guard(read)

    async def _write(self, sql: str, params: tuple[object, ...]) -> None:
        async def write(c: aiosqlite.Connection) -> None:
            await c.execute(sql, params)  # autocommit: one statement, one transaction

        await self._guard(write)

    async def _transaction(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """`BEGIN IMMEDIATE` takes the file's write lock first: what `body` reads cannot change under it, in
        this process or another."""

        async def run(c: aiosqlite.Connection) -> T:
            await c.execute("BEGIN IMMEDIATE")
            try:
                result = await body(c)
            except BaseException:
                await _rollback(c)
                raise
            try:
                await asyncio.shield(c.execute("COMMIT"))
            except sqlite3.Error:  # e.g. disk full: the transaction may still be open, and would block the next
                await _rollback(c)
                raise
            return result

        return await self._guard(run)


_ADD_SPEND = (
    "INSERT INTO spend (guild_id, day, usd) VALUES (?, ?, ?) "
    "ON CONFLICT (guild_id, day) DO UPDATE SET usd = usd + excluded.usd"
)


async def _scalar(c: aiosqlite.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    async with c.execute(sql, params) as cur:
        row = await cur.fetchone()
    return row[0] if row is not None else 0


async def _spent(c: aiosqlite.Connection, guild_id: int, day: str) -> float:
    return (await _totals(c, guild_id, day))[0]


async def _totals(c: aiosqlite.Connection, guild_id: int, day: str) -> tuple[float, float]:
    """(spent, committed): the day's ledger plus open leases' checkpointed costs, and plus their reservations.

    A process keeps its sessions' costs within their reservations (caps.py), so the reservations bound what open
    leases can spend; a checkpoint that lags changes nothing here."""
    async with c.execute(
        "SELECT COALESCE((SELECT usd FROM spend WHERE guild_id = ? AND day = ?), 0), "
        "COALESCE(SUM(usd), 0), COALESCE(SUM(reserved), 0) FROM leases WHERE guild_id = ? AND day = ?",
        (guild_id, day, guild_id, day),
    ) as cur:
        ledger, live, held = await cur.fetchone()  # type: ignore[misc]
    return float(ledger) + float(live), float(ledger) + float(held)


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Apply each missing step in its own transaction; user_version moves with the step it records.

    The version is re-read under the write lock, so two processes opening one old file migrate it once.
    """
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            step = await _scalar(conn, "PRAGMA user_version")
            if step >= SCHEMA_VERSION:
                await conn.execute("COMMIT")
                return
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {step + 1}")
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Undo an open transaction. SQLite may have rolled it back itself (disk full, I/O error): a second
    ROLLBACK would then fail and its error would replace the one that matters."""
    if conn.in_transaction:
        await asyncio.shield(conn.execute("ROLLBACK"))
