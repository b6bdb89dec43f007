"""Prometheus metrics on an optional port (`metrics.port`, off by default), read at scrape time.

A custom collector asks the running app what it has — rooms, speakers, open sessions, dollars, the
listener's receive counters by outcome, the speaker account's player restarts — so nothing on the audio
path pays for bookkeeping and there is one source of truth: the components' own counters. No per-member
labels (cardinality, and privacy). The latency histograms (`bot.latency`) are the one exception to
"read at scrape time": a delay exists only when it ends, so it is observed there.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot import latency

log = logging.getLogger("parley.metrics")


class _App(Protocol):
    listener: Any
    speaker: Any
    rooms: Any


@dataclass(frozen=True)
class Snapshot:
    rooms: int
    speakers: int
    sessions_open: int
    usd_today: float
    outcomes: dict[str, int]
    datagrams_overflow: int
    frames_dropped: int
    player_restarts: int
    rooms_counters: dict[str, int]


def snapshot(app: _App) -> Snapshot:
    """What the app has now, through the components' public surfaces."""
    rooms = speakers = sessions = 0
    usd = 0.0
    for guild in list(getattr(app.listener, "guilds", ())):
        status = app.rooms.status(guild.id)
        if status is None:
            continue
        rooms += 1
        speakers += len(status.speakers)
        sessions += sum(1 for s in status.speakers if s.connected)
        usd += status.usd_today
    outcomes: Counter[str] = Counter()
    overflow = dropped = 0
    for vc in list(getattr(app.listener, "voice_clients", ())):
        counters = getattr(vc, "receive_counters", None)
        if counters is None:
            continue
        outcomes.update(counters.get("outcomes", {}))
        overflow += int(counters.get("overflow", 0))
        dropped += int(counters.get("frames_dropped", 0))
    restarts = int(getattr(app.speaker, "restarts", 0)) if app.speaker is not None else 0
    counters = getattr(app.rooms, "counters", None)
    return Snapshot(rooms, speakers, sessions, usd, dict(outcomes), overflow, dropped, restarts,
                    counters() if counters is not None else {})


class AppCollector(Collector):
    def __init__(self, app: _App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        s = snapshot(self.app)
        yield GaugeMetricFamily("parley_rooms", "Rooms being interpreted", value=s.rooms)
        yield GaugeMetricFamily("parley_speakers", "Members with a speaker in a room", value=s.speakers)
        yield GaugeMetricFamily("parley_sessions_open", "Translation sessions connected upstream",
                                value=s.sessions_open)
        yield GaugeMetricFamily("parley_usd_today", "Spend today in the guilds with a room (USD)", value=s.usd_today)
        packets = CounterMetricFamily("parley_voice_packets", "Received voice datagrams by outcome",
                                      labels=["outcome"])
        for outcome, n in sorted(s.outcomes.items()):
            packets.add_metric([outcome], n)
        yield packets
        yield CounterMetricFamily("parley_voice_datagrams_overflow", "Datagrams refused: the receive worker was behind",
                                  value=s.datagrams_overflow)
        yield CounterMetricFamily("parley_voice_frames_dropped", "Decoded frames dropped: the rooms were behind",
                                  value=s.frames_dropped)
        counted = dict(s.rooms_counters)
        yield CounterMetricFamily("parley_speaker_failures", "Speakers whose task failed (replaced after a backoff)",
                                  value=counted.pop("speaker_failures", 0))
        frames = CounterMetricFamily("parley_room_frames_untranslated",
                                     "Frames the rooms did not send upstream, by why: withheld (opted out), ignored "
                                     "(bots), refused (caps, budget, a refused language, a failed speaker or "
                                     "session), same_language (no translation needed), dropped (a full queue), "
                                     "failed (an error routing them)", labels=["reason"])
        for reason in ("withheld", "ignored", "refused", "same_language", "dropped", "failed"):
            frames.add_metric([reason], counted.get(reason, 0))
        yield frames
        yield CounterMetricFamily("parley_player_restarts", "Speaker-account players restarted after dying",
                                  value=s.player_restarts)
        yield from worker_metrics(getattr(getattr(self.app.rooms, "endpoint", None), "pool", None))


def worker_metrics(pool: Any) -> Iterator[Metric]:
    """The bot.localrt workers of `local.urls`, as the pool last saw them (labelled host:port); none without."""
    if pool is None:
        return
    up = GaugeMetricFamily("parley_localrt_worker_up", "1 if the bot.localrt worker answered its last load poll",
                           labels=["worker"])
    sessions = GaugeMetricFamily("parley_localrt_worker_sessions", "Sessions open on the worker (its last report)",
                                 labels=["worker"])
    backlog = GaugeMetricFamily("parley_localrt_worker_backlog_seconds",
                                "Input audio queued for the worker's engines (its last report)", labels=["worker"])
    picks = CounterMetricFamily("parley_localrt_worker_picks", "Session connects sent to the worker",
                                labels=["worker"])
    for w in list(pool.workers):
        up.add_metric([w.name], 1 if w.healthy else 0)
        sessions.add_metric([w.name], w.sessions)
        backlog.add_metric([w.name], w.backlog_s)
        picks.add_metric([w.name], w.picks_total)
    yield from (up, sessions, backlog, picks)


class MetricsServer:
    """`start()` serves /metrics on its own thread; `close()` in the app's `finally` stops it."""

    def __init__(self, app: _App, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AppCollector(app))
        for histogram in latency.ALL:  # the delays members feel, observed where each one ends
            self.registry.register(histogram)
        self.host, self.port = host, port
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, self.host, registry=self.registry)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
