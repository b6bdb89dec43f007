"""`WorkerPool`: several bot.localrt workers behind one backend; each connect goes to the least-loaded healthy one.

Why per connect: a session that loses its worker (killed, restarted, network) reconnects through
`TranslationSession`'s own reconnect + replay, and that reconnect asks the pool again, so the session moves to
a live worker with its unanswered audio replayed: nothing the speaker said is lost. Load comes from the workers
themselves (`GET /v1/load` beside the websocket: open sessions and queued engine audio), asked of all of them
at once when the last answer is older than `POLL_TTL_S`; picks made since then count as sessions, so a burst of
speakers spreads out. A worker that does not answer is unhealthy until it answers again. No task runs in the
background: nothing to own, nothing to leak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp

log = logging.getLogger("parley.realtime")

LOAD_PATH = "/v1/load"
POLL_TTL_S = 0.5  # a load answer younger than this is reused
POLL_TIMEOUT_S = 1.0  # a worker slower than this to say how loaded it is counts as down


@dataclass
class Worker:
    """One bot.localrt worker as the pool last saw it."""

    url: str  # the websocket URL sessions connect to
    healthy: bool = True  # answered the last load poll (optimistic until first asked)
    sessions: int = 0  # open sessions it reported
    backlog_s: float = 0.0  # engine audio it has queued (seconds)
    picked: int = 0  # sessions sent to it since its last answer
    picks_total: int = 0
    error: str | None = None  # why it is unhealthy

    @property
    def name(self) -> str:
        """host:port, for labels and logs."""
        return urlsplit(self.url).netloc

    @property
    def load(self) -> float:
        """Sessions, counting a second of queued engine audio like one more session."""
        return self.sessions + self.picked + self.backlog_s


class WorkerPool:
    def __init__(self, urls: list[str], api_key: str | None = None) -> None:
        if not urls:
            raise ValueError("a worker pool needs at least one URL")
        self.workers = [Worker(u) for u in urls]
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._polled_at = float("-inf")
        self._poll: asyncio.Task[None] | None = None

    async def pick(self) -> str:
        """The websocket URL of the least-loaded healthy worker (all down: the next in turn, so the session's own
        backoff and error reporting carry on)."""
        if time.monotonic() - self._polled_at >= POLL_TTL_S:
            if self._poll is None or self._poll.done():
                self._poll = asyncio.create_task(self._poll_all(), name="worker-pool-poll")
            await asyncio.shield(self._poll)  # concurrent picks share one poll; a cancelled pick leaves it
        healthy = [w for w in self.workers if w.healthy]
        if healthy:
            chosen = min(healthy, key=lambda w: (w.load, w.picks_total))
        else:
            chosen = min(self.workers, key=lambda w: w.picks_total)
        chosen.picked += 1
        chosen.picks_total += 1
        return chosen.url

    async def _poll_all(self) -> None:
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, headers=self._headers) as http:
            await asyncio.gather(*(self._poll_one(http, w) for w in self.workers))
        self._polled_at = time.monotonic()

    async def _poll_one(self, http: aiohttp.ClientSession, worker: Worker) -> None:
        try:
            async with http.get(_load_url(worker.url)) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = await resp.json(content_type=None)
            sessions, backlog = int(body["sessions"]), float(body["backlog_s"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
            if worker.healthy:
                log.warning("bot.localrt worker %s is down: %s", worker.name, str(e) or type(e).__name__)
            worker.healthy, worker.error = False, str(e) or type(e).__name__
            return
        if not worker.healthy:
            log.info("bot.localrt worker %s is back", worker.name)
        worker.healthy, worker.error = True, None
        worker.sessions, worker.backlog_s, worker.picked = sessions, backlog, 0


def _load_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, LOAD_PATH, "", ""))
