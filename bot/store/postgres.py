"""The store in PostgreSQL, through asyncpg: what several bot processes share (shards on several machines).

The schema version lives in `parley_schema`; each migration step runs in its own transaction under an
advisory lock, so processes starting together migrate once. Lease decisions take a per-guild advisory
transaction lock: two processes deciding for one guild are serialised, other guilds are not held up.
Types match the SQLite store's behaviour: ids are BIGINT (Discord snowflakes), times epoch seconds, money
double precision.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import date
from typing import TypeVar

import asyncpg

from bot.store import (
    SCHEMA_VERSION,
    Grant,
    GuildSettings,
    MemberPrefs,
    Reclaimed,
    Store,
    StoreError,
    redact,
    reservation,
    today,
    when,
)

T = TypeVar("T")

# What a store call may fail of: PostgreSQL's answers, the driver, the network (all a StoreError to callers)
_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_MIGRATION_LOCK = 0x70617231  # pg_advisory_xact_lock key while migrating ("par1")
_GUILD_LOCK_CLASS = 0x7061  # two-key advisory locks: (class, guild) for lease decisions

# Migration N takes the database at version N to N + 1, the same steps as the SQLite store's. Append only.
MIGRATIONS: tuple[str, ...] = (
    # 0 → 1: per-member preferences and per-guild channels
    """
    CREATE TABLE members (
        guild_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        target_language TEXT,
        opted_out BOOLEAN NOT NULL DEFAULT FALSE,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (guild_id, user_id)
    );
    CREATE TABLE guilds (
        guild_id BIGINT PRIMARY KEY,
        output_channel_id BIGINT,
        caption_channel_id BIGINT,
        updated_at DOUBLE PRECISION NOT NULL
    );
    """,
    # 1 → 2: the daily spend ledger; a partial index for opt-out lookups
    """
    CREATE TABLE spend (
        guild_id BIGINT NOT NULL,
        day DATE NOT NULL,
        usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (guild_id, day)
    );
    CREATE INDEX members_opted_out ON members (guild_id) WHERE opted_out;
    """,
    # 2 → 3: the language a member speaks
    """
    ALTER TABLE members ADD COLUMN speaks TEXT;
    """,
    # 3 → 4: open sessions of every process
    """
    CREATE TABLE leases (
        lease_id TEXT PRIMARY KEY,
        guild_id BIGINT NOT NULL,
        owner TEXT NOT NULL,
        day DATE NOT NULL,
        reserved DOUBLE PRECISION NOT NULL DEFAULT 0,
        usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        opened_at DOUBLE PRECISION NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX leases_guild ON leases (guild_id);
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION

POOL_SIZE = 4


class PostgresStore(Store):
    """A small asyncpg pool; every call takes one connection for one statement or one transaction."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.where = redact(url)
        self.path = self.where
        self._pool: asyncpg.Pool | None = pool

    @classmethod
    async def connect(cls, url: str) -> PostgresStore:
        where = redact(url)
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE, timeout=10)
        except _FAILURES as e:
            raise StoreError(f"{where}: cannot connect to PostgreSQL: {_reason(e)}") from None
        try:
            async with pool.acquire() as conn:
                await _migrate(conn, where)
        except StoreError:
            await pool.close()
            raise
        except _FAILURES as e:
            await pool.close()
            raise StoreError(f"{where}: not a usable Parley database ({_reason(e)})") from None
        except BaseException:
            pool.terminate()
            raise
        return cls(url, pool)

    async def close(self) -> None:
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        await pool.close()

    # -- members --------------------------------------------------------------------------------

    async def member(self, guild_id: int, user_id: int) -> MemberPrefs:
        row = await self._call(lambda c: c.fetchrow(
            "SELECT target_language, opted_out, updated_at, speaks FROM members WHERE guild_id = $1 AND user_id = $2",
            guild_id, user_id,
        ))
        if row is None:
            return MemberPrefs(guild_id, user_id)
        return MemberPrefs(guild_id, user_id, row[0], bool(row[1]), when(row[2]), row[3])

    async def set_language(self, guild_id: int, user_id: int, language: str | None) -> None:
        await self._upsert_member(guild_id, user_id, "target_language", language)

    async def set_speaks(self, guild_id: int, user_id: int, language: str | None) -> None:
        await self._upsert_member(guild_id, user_id, "speaks", language)

    async def spoken_languages(self, guild_id: int) -> set[str]:
        rows = await self._call(lambda c: c.fetch(
            "SELECT DISTINCT speaks FROM members WHERE guild_id = $1 AND speaks IS NOT NULL", guild_id,
        ))
        return {r[0] for r in rows}

    async def set_opt_out(self, guild_id: int, user_id: int, opted_out: bool) -> None:
        await self._upsert_member(guild_id, user_id, "opted_out", bool(opted_out))

    async def opted_out_members(self, guild_id: int) -> set[int]:
        rows = await self._call(lambda c: c.fetch(
            "SELECT user_id FROM members WHERE guild_id = $1 AND opted_out", guild_id))
        return {r[0] for r in rows}

    async def _upsert_member(self, guild_id: int, user_id: int, column: str, value: object) -> None:
        assert column in ("target_language", "opted_out", "speaks")  # a fixed name, never user input
        sql = (
            f"INSERT INTO members (guild_id, user_id, {column}, updated_at) VALUES ($1, $2, $3, $4) "
            f"ON CONFLICT (guild_id, user_id) DO UPDATE SET {column} = excluded.{column}, "
            "updated_at = excluded.updated_at"
        )
        await self._call(lambda c: c.execute(sql, guild_id, user_id, value, time.time()))

    # -- guilds ---------------------------------------------------------------------------------

    async def guild(self, guild_id: int) -> GuildSettings:
        row = await self._call(lambda c: c.fetchrow(
            "SELECT output_channel_id, caption_channel_id, updated_at FROM guilds WHERE guild_id = $1", guild_id))
        return GuildSettings(guild_id) if row is None else GuildSettings(guild_id, row[0], row[1], when(row[2]))

    async def set_guild_channels(
        self, guild_id: int, output_channel_id: int | None, caption_channel_id: int | None
    ) -> None:
        await self._call(lambda c: c.execute(
            "INSERT INTO guilds (guild_id, output_channel_id, caption_channel_id, updated_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (guild_id) DO UPDATE SET "
            "output_channel_id = excluded.output_channel_id, caption_channel_id = excluded.caption_channel_id, "
            "updated_at = excluded.updated_at",
            guild_id, output_channel_id, caption_channel_id, time.time(),
        ))

    # -- spend ----------------------------------------------------------------------------------

    async def add_spend(self, guild_id: int, usd: float, day: date | None = None) -> None:
        if not usd >= 0:
            raise ValueError(f"spend must be a non-negative amount, got {usd!r}")
        await self._call(lambda c: c.execute(_ADD_SPEND, guild_id, day or today(), float(usd)))

    async def spend_today(self, guild_id: int, day: date | None = None) -> float:
        usd = await self._call(lambda c: c.fetchval(
            "SELECT usd FROM spend WHERE guild_id = $1 AND day = $2", guild_id, day or today()))
        return 0.0 if usd is None else float(usd)

    # -- leases ---------------------------------------------------------------------------------

    async def open_lease(
        self, lease_id: str, guild_id: int, owner: str, *, reserve_usd: float, budget_usd: float | None,
        max_sessions: int | None, day: date | None = None,
    ) -> Grant:
        d = day or today()

        async def decide(c: asyncpg.Connection) -> Grant:
            await c.execute("SELECT pg_advisory_xact_lock($1, $2)", _GUILD_LOCK_CLASS, _lock_key(guild_id))
            if max_sessions is not None:
                n = await c.fetchval("SELECT COUNT(*) FROM leases WHERE guild_id = $1", guild_id)
                if n >= max_sessions:
                    return Grant(0.0, (await _totals(c, guild_id, d))[0], "sessions")
            spent, committed = await _totals(c, guild_id, d)
            reserve = reservation(reserve_usd, budget_usd, committed)
            if reserve is None:
                return Grant(0.0, spent, "budget")
            now = time.time()
            await c.execute(
                "INSERT INTO leases (lease_id, guild_id, owner, day, reserved, usd, opened_at, seen_at) "
                "VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
                lease_id, guild_id, owner, d, reserve, now,
            )
            return Grant(reserve, spent)

        return await self._transaction(decide)

    async def extend_lease(
        self, lease_id: str, usd: float, *, reserve_usd: float, budget_usd: float | None, day: date | None = None
    ) -> Grant:
        d = day or today()

        async def decide(c: asyncpg.Connection) -> Grant:
            guild_id = await c.fetchval("SELECT guild_id FROM leases WHERE lease_id = $1", lease_id)
            if guild_id is None:
                return Grant(0.0, 0.0, "budget")
            await c.execute("SELECT pg_advisory_xact_lock($1, $2)", _GUILD_LOCK_CLASS, _lock_key(guild_id))
            await c.execute(
                "UPDATE leases SET usd = $1, day = $2, seen_at = $3 WHERE lease_id = $4",
                float(usd), d, time.time(), lease_id,
            )
            spent, committed = await _totals(c, guild_id, d)
            reserve = reservation(reserve_usd, budget_usd, committed)
            if reserve is None:
                return Grant(0.0, spent, "budget")
            await c.execute("UPDATE leases SET reserved = reserved + $1 WHERE lease_id = $2", reserve, lease_id)
            return Grant(reserve, spent)

        return await self._transaction(decide)

    async def checkpoint_leases(self, costs: dict[str, float]) -> None:
        if not costs:
            return
        now = time.time()

        async def update(c: asyncpg.Connection) -> None:
            await c.executemany(
                "UPDATE leases SET usd = $1, seen_at = $2 WHERE lease_id = $3",
                [(float(usd), now, lease_id) for lease_id, usd in costs.items()],
            )

        await self._transaction(update)

    async def close_lease(self, lease_id: str, usd: float, day: date | None = None) -> float | None:
        if not usd >= 0:
            raise ValueError(f"spend must be a non-negative amount, got {usd!r}")
        d = day or today()

        async def close(c: asyncpg.Connection) -> float | None:
            guild_id = await c.fetchval("DELETE FROM leases WHERE lease_id = $1 RETURNING guild_id", lease_id)
            if guild_id is None:
                return None
            return float(await c.fetchval(_ADD_SPEND + " RETURNING usd", guild_id, d, float(usd)))

        return await self._transaction(close)

    async def reclaim_leases(self, owner: str, keep: frozenset[str], stale_s: float) -> list[Reclaimed]:
        async def reclaim(c: asyncpg.Connection) -> list[Reclaimed]:
            rows = await c.fetch(
                "SELECT lease_id, guild_id, owner, day, usd FROM leases WHERE owner = $1 OR seen_at < $2 "
                "FOR UPDATE SKIP LOCKED",
                owner, time.time() - stale_s,
            )
            gone = [Reclaimed(r[0], r[1], r[2], r[3], float(r[4])) for r in rows if r[0] not in keep]
            for lease in gone:
                if await c.fetchval("DELETE FROM leases WHERE lease_id = $1 RETURNING 1", lease.lease_id):
                    await c.execute(_ADD_SPEND, lease.guild_id, lease.day, lease.usd)
            return gone

        return await self._transaction(reclaim)

    async def open_leases(self, guild_id: int) -> int:
        return int(await self._call(lambda c: c.fetchval("SELECT COUNT(*) FROM leases WHERE guild_id = $1", guild_id)))

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.where}: the store is closed")
        try:
            async with pool.acquire() as conn:
                return await fn(conn)
        except _FAILURES as e:
            raise StoreError(f"{self.where}: {_reason(e)}") from None

    async def _transaction(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run(c: asyncpg.Connection) -> T:
            async with c.transaction():
                return await body(c)

        return await self._call(run)


_ADD_SPEND = (
    "INSERT INTO spend (guild_id, day, usd) VALUES ($1, $2, $3) "
    "ON CONFLICT (guild_id, day) DO UPDATE SET usd = spend.usd + excluded.usd"
)


def _lock_key(guild_id: int) -> int:
    """A guild id folded into the int4 second key of a two-key advisory lock (a collision only serialises)."""
    return ((guild_id ^ (guild_id >> 32)) & 0xFFFFFFFF) - (1 << 31)


async def _totals(c: asyncpg.Connection, guild_id: int, day: date) -> tuple[float, float]:
    row = await c.fetchrow(
        "SELECT COALESCE((SELECT usd FROM spend WHERE guild_id = $1 AND day = $2), 0), "
        "COALESCE(SUM(usd), 0), COALESCE(SUM(reserved), 0) FROM leases "
        "WHERE guild_id = $1 AND day = $2",
        guild_id, day,
    )
    ledger, live, held = float(row[0]), float(row[1]), float(row[2])
    return ledger + live, ledger + held


async def _migrate(conn: asyncpg.Connection, where: str) -> None:
    """Each missing step in its own transaction, under an advisory lock; the version moves with its step."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS parley_schema (version INTEGER NOT NULL)")
        if await conn.fetchval("SELECT COUNT(*) FROM parley_schema") == 0:
            await conn.execute("INSERT INTO parley_schema (version) VALUES (0)")
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            step = await conn.fetchval("SELECT version FROM parley_schema")
            if step > SCHEMA_VERSION:
                raise StoreError(
                    f"{where}: database schema version {step} is newer than this Parley understands "
                    f"({SCHEMA_VERSION}); upgrade Parley or point store.url at another database"
                )
            if step == SCHEMA_VERSION:
                return
            await conn.execute(MIGRATIONS[step])  # several statements: one simple-protocol call
            await conn.execute("UPDATE parley_schema SET version = $1", step + 1)


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__
