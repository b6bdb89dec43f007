"""Caps across processes, on SQLite and PostgreSQL: two real processes racing for a guild's last session slots and
last budget, and a process killed with SIGKILL during a session (its spend recorded once, at restart)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.store import Store
from tests.pipeline.caps_child import FRAME_BYTES, PRICE

G = 1
ROOT = Path(__file__).resolve().parents[2]
FRAME_USD = PRICE * (FRAME_BYTES / 48) / 60_000  # one 20 ms frame


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "shared.sqlite3")
    return request.getfixturevalue("postgres_url")


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.pipeline.caps_child", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_two_processes_race_for_the_last_slots_and_the_last_budget(target: str) -> None:
    budget, already = 0.05, 0.03  # $0.02 left: 20 s of audio at $0.06/min, 1000 frames
    async with await Store.open(target) as store:  # migrated before the race
        await store.add_spend(G, already)
    start_at = f"{time.time() + 4:.3f}"  # both processes imported and connected by then
    racers = [child("race", target, f"host/shards-{i}/2", start_at, str(G), "4", str(budget), "3") for i in (0, 1)]
    results = []
    for p in racers:
        out, err = await asyncio.to_thread(p.communicate, timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    print("race:", results)
    admitted = sum(r["admitted"] for r in results)
    assert max(r["peak_open"] for r in results) <= 3, "never more than the guild's 3 sessions open at once"
    assert admitted == 3 and sum(r["refused"] for r in results) == 5
    assert sum(r["stopped_by_budget"] for r in results) == admitted, "every session ran until the budget stopped it"
    async with await Store.open(target) as store:
        ledger = await store.spend_today(G)
        assert await store.open_leases(G) == 0
    spent = sum(r["usd"] for r in results)
    assert ledger == pytest.approx(already + spent, abs=1e-12), "each session's cost recorded once"
    # no overshoot beyond the frame each session sends before it sees its reservation is used up
    assert budget - admitted * FRAME_USD <= ledger <= budget + admitted * FRAME_USD


async def test_a_process_killed_during_a_session_has_its_spend_recorded_once_at_restart(target: str) -> None:
    from bot.config import Endpoint
    from bot.pipeline.rooms import RoomManager
    from tests.realtime.test_session import fast_settings

    async with await Store.open(target) as store:
        pass  # migrated
    p = child("killed", target)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(p.stdout.readline), timeout=60)  # type: ignore[union-attr]
        assert line.startswith("READY "), line + p.stderr.read()  # type: ignore[union-attr]
        usd = float(line.split()[1])
        assert usd > 0
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    assert p.returncode == -signal.SIGKILL

    async with await Store.open(target) as store:
        assert await store.spend_today(1) == 0.0 and await store.open_leases(1) == 1, "not recorded yet"
        for restart in range(2):  # the same process (same host, same shards) starting again, twice
            rooms = RoomManager(fast_settings(), store, Endpoint("ws://127.0.0.1:9/", "translation", "m", None, 0.034),
                                join_voice=None)  # type: ignore[arg-type]
            await rooms.start()
            assert rooms._caps.reclaimed == ([(1, pytest.approx(usd, abs=1e-15))] if restart == 0 else [])
            await rooms.close()
            assert await store.spend_today(1) == pytest.approx(usd, abs=1e-15), "recorded exactly once"
            assert await store.open_leases(1) == 0
