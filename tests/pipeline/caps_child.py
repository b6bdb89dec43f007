"""A bot process for the caps tests (tests/pipeline/test_caps.py), run as `python -m tests.pipeline.caps_child`.

`race STORE OWNER START_AT GUILD SESSIONS BUDGET MAX_PER_GUILD`: at wall time START_AT, asks for SESSIONS leases
of GUILD at once through `Caps`; each admitted one spends audio (a real `CostMeter`, 20 ms frames at 25x real
time) until the caps stop it, then closes. Prints one JSON line: admitted, refused, usd spent, most leases open.

`killed STORE`: a `RoomManager` with a real `TranslationSession` to an SDK-validating peer (both in this
process) opens one session, sends 1 s of speech, waits for its cost to be checkpointed, prints
`READY <usd>` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from types import SimpleNamespace

from bot.config import CapsConfig, Endpoint
from bot.pipeline.caps import Caps
from bot.pipeline.service import CapReached
from bot.realtime.cost import CostMeter
from bot.store import Store

PRICE = 0.06  # $ per audio minute: a 20 ms frame costs $0.00002
FRAME_BYTES = 960  # 20 ms of 24 kHz pcm16


async def race(target: str, owner: str, start_at: float, guild: int, sessions: int, budget: float,
               max_per_guild: int) -> None:
    store = await Store.open(target)
    caps = Caps(CapsConfig(max_sessions=64, max_sessions_per_guild=max_per_guild, daily_budget_usd=budget,
                           reserve_s=2.0, checkpoint_s=0.2), store, PRICE, owner=owner)
    await caps.start()
    peak = 0
    result = {"admitted": 0, "refused": 0, "usd": 0.0, "stopped_by_budget": 0}

    async def one() -> None:
        nonlocal peak
        try:
            lease = await caps.admit(guild)
        except CapReached:
            result["refused"] += 1
            return
        result["admitted"] += 1
        lease.session = SimpleNamespace(cost=CostMeter(PRICE))
        try:
            peak = max(peak, await store.open_leases(guild))
            for _ in range(3000):  # at most 60 s of audio
                if caps.over_budget(guild) is not None:
                    result["stopped_by_budget"] += 1
                    break
                lease.session.cost.add_audio(FRAME_BYTES)
                await asyncio.sleep(0.0008)
            result["usd"] += lease.usd
        finally:
            write = caps.release(lease)
            if write is not None:
                await write

    await asyncio.sleep(max(0.0, start_at - time.time()))
    await asyncio.gather(*(one() for _ in range(sessions)))
    await caps.close()
    await store.close()
    print(json.dumps({**result, "peak_open": peak}), flush=True)


async def killed(target: str) -> None:
    from bot.pipeline.rooms import RoomManager
    from tests.realtime.peer import Peer, numbered_audio
    from tests.realtime.test_session import fast_settings

    settings = fast_settings()
    settings.caps.checkpoint_s = 0.1
    store = await Store.open(target)
    async with Peer() as peer:
        rooms = RoomManager(settings, store, Endpoint(peer.url, "translation", "m", None, 0.034), join_voice=None)
        await rooms.start()
        async with rooms.lease(1, 42, "es") as session:
            await session.send_audio(numbered_audio(10))  # 1 s
            usd = session.cost.dollars
            while True:  # until the checkpointer has written what it cost so far
                await asyncio.sleep(0.05)
                row = await _lease_usd(store)
                if row is not None and abs(row - usd) < 1e-12:
                    break
            print(f"READY {usd!r}", flush=True)
            await asyncio.sleep(3600)


async def _lease_usd(store: Store) -> float | None:
    """The checkpointed cost of the one open lease (read the way an operator would, with SQL)."""
    from bot.store.postgres import PostgresStore
    from bot.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        row = await store._one("SELECT usd FROM leases", ())
        return None if row is None else float(row[0])
    assert isinstance(store, PostgresStore)
    return await store._call(lambda c: c.fetchval("SELECT usd FROM leases"))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "race":
        asyncio.run(race(args[0], args[1], float(args[2]), int(args[3]), int(args[4]), float(args[5]), int(args[6])))
    else:
        asyncio.run(killed(args[0]))
