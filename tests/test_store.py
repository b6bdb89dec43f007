"""bot.store against real databases: every behaviour on SQLite files and on a real PostgreSQL server (a throwaway
cluster, tests/pg.py); migrations, damage and threads per backend."""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import threading
from datetime import date, timedelta
from pathlib import Path

import pytest

from bot.store import SCHEMA_VERSION, GuildSettings, MemberPrefs, Store, StoreError

G, G2 = 111, 222


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store lives: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "p.sqlite3"
    return request.getfixturevalue("postgres_url")


async def test_member_round_trip_and_defaults(target: str | Path) -> None:
    async with await Store.open(target) as store:
        assert await store.member(G, 1) == MemberPrefs(G, 1, None, False, None)
        await store.set_language(G, 1, "pt-BR")
        m = await store.member(G, 1)
        assert (m.target_language, m.opted_out) == ("pt-BR", False)
        assert m.updated_at is not None and m.updated_at.tzinfo is not None
        assert m.language_or("en") == "pt-BR"
        await store.set_opt_out(G, 1, True)  # keeps the language
        assert await store.member(G, 1) == MemberPrefs(G, 1, "pt-BR", True, (await store.member(G, 1)).updated_at)
        await store.set_language(G, 1, None)
        assert (await store.member(G, 1)).language_or("en") == "en"
        assert (await store.member(G2, 1)).target_language is None  # per guild


async def test_speaks_round_trip_and_spoken_languages(target: str | Path) -> None:
    async with await Store.open(target) as store:
        await store.set_speaks(G, 1, "es")
        await store.set_speaks(G, 4, "pt")
        await store.set_speaks(G, 5, "es")
        await store.set_language(G, 2, "fr")  # a language heard, not spoken: no candidate
        await store.set_speaks(G2, 3, "ja")
        assert (await store.member(G, 1)).speaks == "es"
        assert (await store.member(G, 1)).target_language is None
        assert await store.spoken_languages(G) == {"es", "pt"}
        await store.set_speaks(G, 1, None)
        assert await store.spoken_languages(G) == {"es", "pt"}
        await store.set_speaks(G, 5, None)
        assert await store.spoken_languages(G) == {"pt"}
        assert await store.spoken_languages(G2) == {"ja"}


async def test_guild_channels_round_trip(target: str | Path) -> None:
    async with await Store.open(target) as store:
        assert await store.guild(G) == GuildSettings(G)
        await store.set_guild_channels(G, 5, 6)
        await store.set_guild_channels(G, 7, None)
        g = await store.guild(G)
        assert (g.output_channel_id, g.caption_channel_id) == (7, None)
        assert (await store.guild(G2)).output_channel_id is None


async def test_spend_ledger_is_per_guild_and_day(target: str | Path) -> None:
    today, yesterday = date(2026, 11, 25), date(2026, 11, 24)
    async with await Store.open(target) as store:
        assert await store.spend_today(G) == 0.0
        await store.add_spend(G, 0.25, today)
        await store.add_spend(G, 0.5, today)
        await store.add_spend(G, 9.0, yesterday)
        await store.add_spend(G2, 1.0, today)
        assert await store.spend_today(G, today) == pytest.approx(0.75)
        assert await store.spend_today(G, yesterday) == pytest.approx(9.0)
        before = await store.spend_today(G)  # UTC today by default
        await store.add_spend(G, 0.125)
        assert await store.spend_today(G) == pytest.approx(before + 0.125)
        with pytest.raises(ValueError):
            await store.add_spend(G, -1.0, today)
        with pytest.raises(ValueError):
            await store.add_spend(G, float("nan"), today)
        assert await store.spend_today(G, today + timedelta(days=1)) == 0.0


async def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "p.sqlite3"  # the directory is created
    store = await Store.open(path)
    await store.set_language(G, 1, "es")
    await store.set_opt_out(G, 2, True)
    await store.set_guild_channels(G, 10, 20)
    await store.add_spend(G, 1.5, date(2026, 1, 1))
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.member(G, 1)

    store = await Store.open(path)
    try:
        assert (await store.member(G, 1)).target_language == "es"
        assert await store.opted_out_members(G) == {2}
        assert (await store.guild(G)).caption_channel_id == 20
        assert await store.spend_today(G, date(2026, 1, 1)) == pytest.approx(1.5)
    finally:
        await store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_opted_out_members(target: str | Path) -> None:
    async with await Store.open(target) as store:
        assert await store.opted_out_members(G) == set()
        for user in (1, 2, 3):
            await store.set_opt_out(G, user, True)
        await store.set_opt_out(G, 2, False)
        await store.set_opt_out(G2, 9, True)
        await store.set_language(G, 4, "fr")  # a member with preferences but no opt-out
        assert await store.opted_out_members(G) == {1, 3}
        assert await store.opted_out_members(G2) == {9}


async def test_migrates_an_empty_v0_file(tmp_path: Path) -> None:
    path = tmp_path / "v0.sqlite3"
    sqlite3.connect(path).close()  # a SQLite file with no schema: user_version 0
    async with await Store.open(path) as store:
        await store.set_opt_out(G, 1, True)
        await store.add_spend(G, 0.5)
        assert await store.opted_out_members(G) == {1}
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_migrates_a_v1_file_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(
        """
        CREATE TABLE members (guild_id INTEGER NOT NULL, user_id INTEGER NOT NULL, target_language TEXT,
            opted_out INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL, PRIMARY KEY (guild_id, user_id));
        CREATE TABLE guilds (guild_id INTEGER PRIMARY KEY, output_channel_id INTEGER, caption_channel_id INTEGER,
            updated_at REAL NOT NULL);
        INSERT INTO members VALUES (111, 1, 'de', 0, 1700000000.0), (111, 2, NULL, 1, 1700000000.0);
        INSERT INTO guilds VALUES (111, 30, 40, 1700000000.0);
        PRAGMA user_version = 1;
        """
    )
    raw.close()
    async with await Store.open(path) as store:
        assert (await store.member(G, 1)).target_language == "de"
        assert (await store.member(G, 1)).updated_at.year == 2023  # type: ignore[union-attr]
        assert await store.opted_out_members(G) == {2}
        assert (await store.guild(G)).output_channel_id == 30
        await store.add_spend(G, 2.0, date(2026, 2, 2))  # the table v2 added
        assert await store.spend_today(G, date(2026, 2, 2)) == pytest.approx(2.0)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "members_opted_out" in indexes


async def test_a_failed_migration_step_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "v1-broken.sqlite3"
    raw = sqlite3.connect(path)
    # v1, but a stray index named like the one step 1 → 2 makes fails it half way: after its `spend` table
    raw.executescript("CREATE TABLE members (guild_id INTEGER, opted_out INTEGER);"
                      "CREATE TABLE stray (x INTEGER); CREATE INDEX members_opted_out ON stray (x);"
                      "PRAGMA user_version = 1;")
    raw.close()
    with pytest.raises(StoreError, match=re.escape("v1-broken.sqlite3")):
        await Store.open(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "spend" not in tables, "the half-done step was kept"


async def test_a_failed_migration_step_is_undone_on_the_open_connection(tmp_path: Path) -> None:
    import aiosqlite

    from bot.store.sqlite import _migrate

    path = tmp_path / "v1-broken.sqlite3"
    with sqlite3.connect(path) as raw:
        raw.executescript("CREATE TABLE members (guild_id INTEGER, opted_out INTEGER);"
                          "CREATE TABLE stray (x INTEGER); CREATE INDEX members_opted_out ON stray (x);"
                          "PRAGMA user_version = 1;")
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            await _migrate(conn)
        assert not conn.in_transaction
        rows = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE name = 'spend'")
        assert list(rows) == [], "the step's first statement outlived its failure"


async def test_corrupt_file_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not a database, just some text that happens to be long enough" * 50)
    with pytest.raises(StoreError) as e:
        await Store.open(path)
    assert str(path) in str(e.value) and "not a usable Parley database" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained sqlite traceback


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this Parley"):
        await Store.open(path)


async def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=re.escape(str(tmp_path))):
        await Store.open(tmp_path)


async def test_many_concurrent_calls(target: str | Path) -> None:
    async with await Store.open(target) as store:
        day = date(2026, 3, 3)
        await asyncio.gather(
            *(store.add_spend(G, 0.01, day) for _ in range(200)),
            *(store.set_opt_out(G, u, u % 2 == 0) for u in range(100)),
            *(store.set_language(G, u, "es") for u in range(100)),
            *(store.member(G, u) for u in range(100)),
        )
        assert await store.spend_today(G, day) == pytest.approx(2.0)
        assert await store.opted_out_members(G) == set(range(0, 100, 2))
        prefs = await asyncio.gather(*(store.member(G, u) for u in range(100)))
        assert all(p.target_language == "es" for p in prefs)


async def test_calls_never_run_on_the_event_loop_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real_connect = sqlite3.connect

    def spy(*args: object, **kwargs: object) -> sqlite3.Connection:
        seen.append(threading.get_ident())
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        conn.set_trace_callback(lambda _sql: seen.append(threading.get_ident()))
        return conn

    monkeypatch.setattr(sqlite3, "connect", spy)
    async with await Store.open(tmp_path / "p.sqlite3") as store:
        await store.set_language(G, 1, "es")
        await store.member(G, 1)
    assert len(seen) > 5 and loop_thread not in seen and len(set(seen)) == 1


async def test_memory_store_when_asked() -> None:
    async with await Store.open(":memory:") as store:
        await store.set_opt_out(G, 1, True)
        assert await store.opted_out_members(G) == {1}
    assert not Path(":memory:").exists()


async def test_a_v3_file_opens_with_its_rows_and_gains_leases(tmp_path: Path) -> None:
    """Files written by Parley before leases (schema 3, with `speaks`) open as they are."""
    path = tmp_path / "v3.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(
        """
        CREATE TABLE members (guild_id INTEGER NOT NULL, user_id INTEGER NOT NULL, target_language TEXT,
            opted_out INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL, speaks TEXT,
            PRIMARY KEY (guild_id, user_id));
        CREATE TABLE guilds (guild_id INTEGER PRIMARY KEY, output_channel_id INTEGER, caption_channel_id INTEGER,
            updated_at REAL NOT NULL);
        CREATE TABLE spend (guild_id INTEGER NOT NULL, day TEXT NOT NULL, usd REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (guild_id, day));
        CREATE INDEX members_opted_out ON members (guild_id) WHERE opted_out = 1;
        INSERT INTO members VALUES (111, 1, 'de', 0, 1700000000.0, 'en');
        INSERT INTO spend VALUES (111, '2026-02-02', 1.25);
        PRAGMA user_version = 3;
        """
    )
    raw.close()
    async with await Store.open(path) as store:
        m = await store.member(G, 1)
        assert (m.target_language, m.speaks) == ("de", "en")
        assert await store.spend_today(G, date(2026, 2, 2)) == pytest.approx(1.25)
        grant = await store.open_lease("a", G, "me", reserve_usd=0.1, budget_usd=None, max_sessions=None)
        assert grant.refused is None
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


@pytest.mark.parametrize("url", ["sqlite:///REL", "sqlite:////ABS"])
async def test_sqlite_urls(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = url.replace("REL", "sub/p.sqlite3").replace("/ABS", str(tmp_path / "abs.sqlite3"))
    async with await Store.open(url) as store:
        await store.set_language(G, 1, "es")
    assert (tmp_path / ("sub/p.sqlite3" if "sub" in url else "abs.sqlite3")).is_file()
    with pytest.raises(StoreError, match="sqlite:///relative/path"):
        await Store.open("sqlite:relative")


async def test_postgres_everything_survives_reopen_and_migrates_once(postgres_url: str) -> None:
    first, second = await asyncio.gather(Store.open(postgres_url), Store.open(postgres_url))  # both migrate
    try:
        await first.set_language(G, 1, "es")
        await first.set_opt_out(G, 2, True)
        await first.set_guild_channels(G, 10, 20)
        await first.add_spend(G, 1.5, date(2026, 1, 1))
        assert (await second.member(G, 1)).target_language == "es"  # one database, two pools
    finally:
        await first.close()
        await second.close()
    with pytest.raises(StoreError, match="closed"):
        await first.member(G, 1)
    async with await Store.open(postgres_url) as store:
        assert await store.opted_out_members(G) == {2}
        assert (await store.guild(G)).caption_channel_id == 20
        assert await store.spend_today(G, date(2026, 1, 1)) == pytest.approx(1.5)
        snowflake = 1_180_000_000_000_000_000  # Discord ids need 64 bits (BIGINT)
        await store.set_language(snowflake, snowflake + 1, "fr")
        assert (await store.member(snowflake, snowflake + 1)).target_language == "fr"

    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT version FROM parley_schema") == SCHEMA_VERSION
        assert await conn.fetchval("SELECT COUNT(*) FROM parley_schema") == 1
        await conn.execute("UPDATE parley_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this Parley"):
        await Store.open(postgres_url)


async def test_postgres_unreachable_is_a_store_error_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    with pytest.raises(StoreError) as e:
        await Store.open(f"postgresql://parley:hunter2@127.0.0.1:{port}/parley")
    assert "cannot connect to PostgreSQL" in str(e.value) and f":{port}/parley" in str(e.value)
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


# -- leases: the database side of caps ------------------------------------------------------------------


async def test_lease_admission_by_sessions_and_budget(target: str | Path) -> None:
    day = date(2026, 5, 5)
    async with await Store.open(target) as store:
        await store.add_spend(G, 0.70, day)
        kw = dict(budget_usd=1.0, max_sessions=2, day=day)
        a = await store.open_lease("a", G, "p1", reserve_usd=0.2, **kw)
        assert (a.reserved, a.refused) == (pytest.approx(0.2), None) and a.spent == pytest.approx(0.70)
        b = await store.open_lease("b", G, "p2", reserve_usd=0.2, **kw)
        assert b.reserved == pytest.approx(0.1), "only what the budget leaves is reserved"
        c = await store.open_lease("c", G, "p1", reserve_usd=0.2, budget_usd=None, max_sessions=2, day=day)
        assert c.refused == "sessions" and await store.open_leases(G) == 2
        assert (await store.open_lease("d", G2, "p1", reserve_usd=0.2, **kw)).refused is None  # per guild
        # budget is fully reserved: a third lease in G with room for sessions is refused on budget
        e = await store.open_lease("e", G, "p1", reserve_usd=0.2, budget_usd=1.0, max_sessions=5, day=day)
        assert e.refused == "budget"
        # a extends: nothing left, but its cost is checkpointed
        ext = await store.extend_lease("a", 0.15, reserve_usd=0.2, budget_usd=1.0, day=day)
        assert ext.refused == "budget" and ext.spent == pytest.approx(0.85)
        # b closes having spent only 0.02: 0.08 comes back, and a can have it
        assert await store.close_lease("b", 0.02, day) == pytest.approx(0.72)
        assert await store.close_lease("b", 0.02, day) is None, "recorded once"
        ext = await store.extend_lease("a", 0.19, reserve_usd=0.2, budget_usd=1.0, day=day)
        assert ext.reserved == pytest.approx(1.0 - 0.72 - 0.2)
        assert await store.close_lease("a", 0.25, day) == pytest.approx(0.97)
        assert await store.spend_today(G, day) == pytest.approx(0.97)
        assert await store.open_leases(G) == 0
        with pytest.raises(ValueError):
            await store.close_lease("d", -1.0, day)


async def test_reclaim_records_a_dead_process_leases_once(target: str | Path) -> None:
    day = date(2026, 6, 6)
    async with await Store.open(target) as store:
        for lease, owner in (("old-1", "host/a"), ("old-2", "host/a"), ("live", "host/a"), ("other", "host/b")):
            await store.open_lease(lease, G, owner, reserve_usd=1.0, budget_usd=None, max_sessions=None, day=day)
        await store.checkpoint_leases({"old-1": 0.25, "old-2": 0.5, "live": 0.125, "other": 2.0})
        gone = await store.reclaim_leases("host/a", frozenset({"live"}), stale_s=3600)
        assert sorted((r.lease_id, r.usd, r.day) for r in gone) == [("old-1", 0.25, day), ("old-2", 0.5, day)]
        assert await store.spend_today(G, day) == pytest.approx(0.75)
        assert await store.reclaim_leases("host/a", frozenset({"live"}), stale_s=3600) == []
        assert await store.close_lease("old-1", 0.3, day) is None, "a reclaimed lease is not recorded twice"
        # a process not heard of for longer than stale_s is reclaimed by anyone
        gone = await store.reclaim_leases("host/c", frozenset(), stale_s=-1)
        assert {r.lease_id for r in gone} == {"live", "other"}
        assert await store.spend_today(G, day) == pytest.approx(0.75 + 0.125 + 2.0)
        assert await store.open_leases(G) == 0
