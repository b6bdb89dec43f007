"""`Caps`: how many sessions may be open and how much a guild may spend, across every process sharing a store.

Why in the store: several bot processes (shards) share one PostgreSQL database (or, on one machine, one SQLite
file), and a guild's cap or budget must hold for all of them together. Each session is a *lease* row: admitting
it checks the guild's open leases and reserves budget in one atomic transaction (see `bot.store`), and a running
session reserves more before it runs out, so the guild's reservations never exceed its budget. The audio path
never waits on the database: `over_budget` and `spent_today` read this process's memory, refreshed by the
reservations and by a checkpointer that writes running costs every `caps.checkpoint_s`. Closing a lease moves
its cost into the ledger in one transaction, retried until written; a lease left by a killed process is
recorded at its last checkpoint when that process starts again (same owner) or, by anyone, once it has not been
heard from for `caps.lease_stale_s`.

`caps.max_sessions` is per process and counted here, with no await between the check and the count.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import CapsConfig
from bot.pipeline.service import CapReached
from bot.realtime.session import TranslationSession
from bot.store import Store, today

log = logging.getLogger("parley.pipeline")

class BudgetReached(CapReached):
    """Today's budget of the guild is spent (or reserved by its open sessions, in any process)."""


REFUSAL_RETRY_S = 1.0  # a speaker refused by the store's caps asks the store again after this, not every frame
STORE_RETRY_S = 1.0  # after a store error, a reservation is asked for again after this
UNCONFIRMED_BUDGET = "Translation paused: today's budget is nearly spent and is being checked."
UNCHECKED_BUDGET = "Translation is paused: Parley cannot check today's budget (its database does not answer)."


def default_owner(shard_ids: list[int] | None = None, shard_count: int | None = None) -> str:
    """The name this process's leases carry: the same after a restart (so its killed leases are recorded at
    once), different from any other process sharing the store (each runs its own shards)."""
    shards = "all" if shard_ids is None else ",".join(map(str, shard_ids)) + f"/{shard_count}"
    return f"{socket.gethostname()}/shards-{shards}"


@dataclass(eq=False)
class Lease:
    """One admitted session: its row in the store, the budget it holds, and its running cost."""

    lease_id: str
    guild_id: int
    reserved: float
    session: TranslationSession | None = None
    closed: bool = False

    @property
    def usd(self) -> float:
        return self.session.cost.dollars if self.session is not None else 0.0


@dataclass
class _Unsaved:
    guild_id: int
    usd: float
    day: dt.date


@dataclass
class _Guild:
    leases: set[Lease] = field(default_factory=set)
    day: dt.date | None = None
    closed_usd: float = 0.0  # the ledger of `day` as last known, plus what this process closed since
    refused: tuple[float, str] | None = None  # (monotonic until, reason): the store said no a moment ago
    # The guild's sessions in this process share what they reserved: they stop together (the room's stop
    # reason is per guild) once their costs reach the sum of their reservations and the store has no more.
    denied: bool = False  # the store's last answer: nothing more to reserve today
    retry_at: float = 0.0  # monotonic: no reservation asked before this (after a store error)
    extending: asyncio.Task[None] | None = None


class Caps:
    def __init__(
        self,
        caps: CapsConfig,
        store: Store,
        price_per_minute: float,
        owner: str | None = None,
        today: Callable[[], dt.date] = today,
    ) -> None:
        self.caps = caps
        self.store = store
        self.owner = owner or default_owner()
        self._price = price_per_minute
        self._today = today
        self._guilds: dict[int, _Guild] = {}
        self._pending: set[str] = set()  # lease ids being admitted (their rows may exist already)
        self.open_sessions = 0  # slots in use in this process (`caps.max_sessions`)
        self._unsaved: dict[str, _Unsaved] = {}  # lease id → a close not written yet
        self._writes: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()  # one ledger write at a time: stored + unsaved is exact between them
        self._checkpointer: asyncio.Task[None] | None = None
        self._started = False
        self._reclaim_due = False  # the start-up reclaim failed: the checkpointer retries it
        self.store_errors = 0  # counted; logged once per streak
        self._failing = False
        self.reclaimed: list[tuple[int, float]] = []  # (guild, usd) recorded for leases of processes gone

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Record what a previous run of this process left open (killed), then keep checkpointing. Idempotent."""
        if self._started:
            return
        self._started = True
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="caps-checkpoint")
        try:
            await self._reclaim()
        except Exception as e:  # the checkpointer tries again
            self._store_failed(e)
            self._reclaim_due = True

    async def close(self) -> None:
        """Shutdown: every close written (or retried once more), the last costs checkpointed."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=5)
        if self._unsaved:
            with contextlib.suppress(TimeoutError):  # what is left unsaved is said just below
                await asyncio.wait_for(self._save(), timeout=5)
            if self._unsaved:  # reclaimed from their last checkpoint by the next start (or another process)
                log.error("caps: %d session(s)' spend could not be recorded at shutdown ($%.4f)", len(self._unsaved),
                          sum(u.usd for u in self._unsaved.values()))
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointer

    async def bootstrap(self, guild_id: int) -> None:
        """A room is joining: learn the guild's ledger for today (raises StoreError)."""
        await self.start()
        async with self._write_lock:  # no write in flight: stored + unsaved is exact
            today = self._today()
            stored = await self.store.spend_today(guild_id, today)
            unsaved = sum(u.usd for u in self._unsaved.values() if u.guild_id == guild_id and u.day == today)
            g = self._guild(guild_id)
            g.day, g.closed_usd = today, stored + unsaved

    # --- admission and release -------------------------------------------------------------------

    async def admit(self, guild_id: int) -> Lease:
        """A slot and a lease row, or CapReached with the reason a member reads. The process cap is checked and
        counted before the first await; the guild's cap and budget are decided by the store."""
        caps = self.caps
        if self.open_sessions >= caps.max_sessions:
            raise CapReached(f"All {caps.max_sessions} translation sessions are in use.")
        g = self._guild(guild_id)
        now = time.monotonic()
        if g.refused is not None and now < g.refused[0]:
            raise (BudgetReached if g.refused[1] == self.budget_reason() else CapReached)(g.refused[1])
        reason = self.over_budget(guild_id)
        if reason is not None:
            raise (BudgetReached if reason == self.budget_reason() else CapReached)(reason)
        self.open_sessions += 1
        lease_id = uuid.uuid4().hex
        self._pending.add(lease_id)
        try:
            if not self._started:
                await self.start()
            grant = await self.store.open_lease(
                lease_id, guild_id, self.owner, reserve_usd=self._quantum(), budget_usd=caps.daily_budget_usd,
                max_sessions=caps.max_sessions_per_guild, day=self._today(),
            )
        except BaseException as e:
            self.open_sessions -= 1
            self._pending.discard(lease_id)
            # the row may have been written before the answer was lost: closed with no cost (once, by its id)
            self._unsaved[lease_id] = _Unsaved(guild_id, 0.0, self._today())
            write = asyncio.create_task(self._save(), name=f"spend-{guild_id}")
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            if isinstance(e, Exception):
                self._store_failed(e)
                g.refused = (now + STORE_RETRY_S, "Translation is paused: Parley cannot reach its database.")
                raise CapReached(g.refused[1]) from None
            raise
        self._pending.discard(lease_id)
        self._store_ok()
        self._learn(g, grant.spent)
        if grant.refused is not None:
            self.open_sessions -= 1
            if grant.refused == "sessions":
                why = f"All {caps.max_sessions_per_guild} translation sessions of this server are in use."
                g.refused = (now + REFUSAL_RETRY_S, why)
                raise CapReached(why)
            g.refused = (now + REFUSAL_RETRY_S, self.budget_reason())
            raise BudgetReached(self.budget_reason())
        lease = Lease(lease_id, guild_id, grant.reserved)
        g.leases.add(lease)
        return lease

    def release(self, lease: Lease) -> asyncio.Task[None] | None:
        """Return the slot and move the lease's cost to the ledger. The slot and the in-memory ledger change now
        (no await: this runs in a `finally` that may be cancelled); the store write is a task, retried until
        written, that the caller may await."""
        if lease.closed:
            return None
        lease.closed = True
        self.open_sessions -= 1
        g = self._guild(lease.guild_id)
        g.leases.discard(lease)
        usd = lease.usd
        excess = usd - lease.reserved  # it spent some of its siblings' reservations: they have that much less
        for other in sorted(g.leases, key=lambda x: x.usd - x.reserved):
            if excess <= 0:
                break
            take = min(excess, max(0.0, other.reserved - other.usd))
            other.reserved -= take
            excess -= take
        today = self._today()
        if g.day != today:
            g.day, g.closed_usd = today, 0.0
        g.closed_usd += usd
        self._unsaved[lease.lease_id] = _Unsaved(lease.guild_id, usd, today)
        write = asyncio.create_task(self._close(lease), name=f"spend-{lease.guild_id}")
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        return write

    # --- what the audio path reads (no I/O) -------------------------------------------------------

    def spent_today(self, guild_id: int) -> float:
        """Today's spend: the ledger (closed sessions, zero after UTC midnight) plus this process's open ones."""
        g = self._guilds.get(guild_id)
        if g is None:
            return 0.0
        closed = g.closed_usd if g.day == self._today() else 0.0
        return closed + sum(lease.usd for lease in g.leases)

    def over_budget(self, guild_id: int) -> str | None:
        """Why this guild's sessions must stop now (a session spent what it reserved and the store has no more
        budget to give), or None. Asks the store for more before a session runs out."""
        budget = self.caps.daily_budget_usd
        if budget is None:
            return None
        g = self._guilds.get(guild_id)
        if g is None:
            return None
        if not g.leases:
            return self.budget_reason() if g.day == self._today() and g.closed_usd >= budget else None
        usd = sum(lease.usd for lease in g.leases)
        reserved = sum(lease.reserved for lease in g.leases)
        if g.denied and usd >= reserved:
            return self.budget_reason()
        if g.extending is not None and usd >= reserved:  # more was asked for but is not granted yet: no
            return UNCONFIRMED_BUDGET  # spending on credit (only near the end of the budget, or a slow store)
        now = time.monotonic()
        if g.extending is None and usd >= reserved - self._quantum() / 2:
            if now >= g.retry_at:  # ask for more before it runs out: the one that spent most holds it
                lease = max(g.leases, key=lambda x: x.usd - x.reserved)
                g.extending = asyncio.create_task(self._extend(g, lease), name=f"reserve-{guild_id}")
            elif usd >= reserved:
                return UNCHECKED_BUDGET  # the store does not answer: the budget cannot be checked
        return None

    # --- behind ----------------------------------------------------------------------------------

    def _guild(self, guild_id: int) -> _Guild:
        g = self._guilds.get(guild_id)
        if g is None:
            g = self._guilds[guild_id] = _Guild()
        return g

    def _quantum(self) -> float:
        return self._price * self.caps.reserve_s / 60.0

    def budget_reason(self) -> str:
        """What members read when the guild's budget for today is spent."""
        budget = self.caps.daily_budget_usd or 0.0
        return f"Today's translation budget (${budget:.2f}) is spent; translation resumes after midnight UTC."

    def _learn(self, g: _Guild, ledger: float) -> None:
        """The store told us the day's spend (ledger + open leases' checkpoints): never go below what we know."""
        today = self._today()
        if g.day != today:
            g.day, g.closed_usd = today, 0.0
        own_open = sum(lease.usd for lease in g.leases)
        g.closed_usd = max(g.closed_usd, ledger - own_open)

    async def _extend(self, g: _Guild, lease: Lease) -> None:
        try:
            grant = await self.store.extend_lease(
                lease.lease_id, lease.usd, reserve_usd=self._quantum(), budget_usd=self.caps.daily_budget_usd,
                day=self._today(),
            )
        except Exception as e:
            self._store_failed(e)
            g.retry_at = time.monotonic() + STORE_RETRY_S
        else:
            self._store_ok()
            if not lease.closed:
                lease.reserved += grant.reserved
            g.denied = grant.refused is not None
            self._learn(g, grant.spent)
        finally:
            g.extending = None

    async def _close(self, lease: Lease) -> None:
        extending = self._guild(lease.guild_id).extending
        if extending is not None:  # its reservation lands on the row before the row is closed
            await asyncio.wait({extending})  # not shield: its own outcome stays its own (store errors it reports)
        await self._save()

    async def _save(self) -> None:
        """Write the closes not yet in the store. One that fails stays unsaved and is written with the next close
        (or at `close()`): a store error delays the ledger, never loses from it nor writes it twice (closing a
        lease is keyed by its id)."""
        async with self._write_lock:
            for lease_id, u in list(self._unsaved.items()):
                try:
                    total = await self.store.close_lease(lease_id, u.usd, u.day)
                except Exception as e:
                    self._store_failed(e)
                    log.error("room %s: could not record $%.4f of spend yet (retried with the next): %s",
                              u.guild_id, u.usd, e)
                    continue
                self._store_ok()
                del self._unsaved[lease_id]
                if total is None and u.usd > 0:
                    log.warning("room %s: a session's lease was already recorded by another process (it was not "
                                "heard from for %.0f s); $%.4f of its spend is not in the ledger", u.guild_id,
                                self.caps.lease_stale_s, u.usd)
                elif total is not None:
                    g = self._guild(u.guild_id)
                    if g.day == u.day:
                        g.closed_usd = max(g.closed_usd, total)

    async def _checkpoint_loop(self) -> None:
        """Running costs to the store every `checkpoint_s`; leases of processes gone reclaimed now and then."""
        last_reclaim = time.monotonic()
        while True:
            await asyncio.sleep(self.caps.checkpoint_s)
            costs = {lease.lease_id: lease.usd for g in self._guilds.values() for lease in g.leases}
            try:
                await self.store.checkpoint_leases(costs)
                if self._reclaim_due or time.monotonic() - last_reclaim >= self.caps.lease_stale_s / 2:
                    last_reclaim = time.monotonic()
                    await self._reclaim()
                    self._reclaim_due = False
            except Exception as e:
                self._store_failed(e)
            else:
                self._store_ok()

    async def _reclaim(self) -> None:
        keep = frozenset(self._pending) | frozenset(
            lease.lease_id for g in self._guilds.values() for lease in g.leases) | frozenset(self._unsaved)
        for r in await self.store.reclaim_leases(self.owner, keep, self.caps.lease_stale_s):
            self.reclaimed.append((r.guild_id, r.usd))
            log.warning("room %s: recorded $%.4f of spend of a session left open by %s (the process was stopped "
                        "without closing it)", r.guild_id, r.usd, r.owner)

    def _store_failed(self, e: Exception) -> None:
        self.store_errors += 1
        if not self._failing:
            self._failing = True
            log.error("caps: the store failed (%s); retrying", e)

    def _store_ok(self) -> None:
        if self._failing:
            self._failing = False
            log.info("caps: the store answers again")
