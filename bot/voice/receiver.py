"""VoiceReceiver: raw Discord voice datagrams in, per-member 20 ms speech frames out (no I/O).

Single-threaded by design: one owner (the receive worker thread, or a replay) feeds datagrams and
voice-gateway events in arrival order and calls :meth:`tick` on a clock. Nothing here raises on bad
input: every datagram ends in exactly one :class:`Outcome` counter, and a failing speaker is reset
without touching the others.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.audio.outcomes import OUTCOME_NAMES, Outcome
from bot.audio.sink import FrameSink
from bot.audio.stream import FRAME_SECONDS, STAT_FEC, STAT_OUT, STAT_PLC, STAT_STREAMS, ReceiveStream
from bot.voice.config import VoiceConfig
from bot.voice.dave import DaveDecryptor
from bot.voice.hold import HeldPacket, UnmappedHold
from bot.voice.rtp import RtpHeader, parse_rtp
from bot.voice.transport import TransportDecryptor

_log = logging.getLogger(__name__)

OP_SESSION_DESCRIPTION = 4
OP_SPEAKING = 5
OP_CLIENTS_CONNECT = 11
OP_CLIENT_CONNECT = 12
OP_CLIENT_DISCONNECT = 13
GATEWAY_OPS = frozenset({OP_SESSION_DESCRIPTION, OP_SPEAKING, OP_CLIENTS_CONNECT, OP_CLIENT_CONNECT,
                         OP_CLIENT_DISCONNECT})


class VoiceReceiver:
    """Demultiplexes one voice connection's datagrams into per-member speech streams."""

    def __init__(
        self,
        sink: FrameSink,
        config: VoiceConfig | None = None,
        *,
        dave: DaveDecryptor | None = None,
        mode: str | None = None,
        secret_key: bytes | list[int] | None = None,
    ) -> None:
        self.config = config or VoiceConfig()
        self._sink = sink
        self._dave = dave or DaveDecryptor()
        self._transport: TransportDecryptor | None = None
        self._count = [0] * len(Outcome)
        self._stats = {STAT_FEC: 0, STAT_PLC: 0, STAT_OUT: 0, STAT_STREAMS: 0}
        self.received = 0
        self._speakers: dict[int, ReceiveStream] = {}  # user id → stream
        self._by_ssrc: dict[int, ReceiveStream] = {}
        self._video: set[int] = set()
        self._hold = UnmappedHold(self.config.unmapped_hold_packets, self.config.unmapped_hold_seconds)
        self.members_seen: set[int] = set()
        if mode is not None and secret_key is not None:
            self.set_key(mode, secret_key)

    # -- keys and gateway events -------------------------------------------------------------------

    def set_key(self, mode: str, secret_key: bytes | list[int]) -> bool:
        """Install the transport key from op 4; an unsupported mode leaves packets counted NO_KEY."""
        try:
            self._transport = TransportDecryptor(mode, secret_key)
        except (ValueError, ImportError, TypeError) as exc:
            _log.warning("voice receive: cannot decrypt mode %r: %s", mode, exc)
            self._transport = None
            return False
        return True

    def on_gateway(self, op: int, d: Any, now: float) -> None:
        """Apply a voice-gateway event (ops 4, 5, 11, 12, 13); malformed payloads are ignored."""
        try:
            if op == OP_SPEAKING:
                self._map(int(d["ssrc"]), int(d["user_id"]), now)
            elif op == OP_CLIENT_CONNECT:
                user = int(d["user_id"])
                for key in ("video_ssrc", "rtx_ssrc"):
                    self._mark_video(int(d.get(key) or 0))
                for stream in d.get("streams") or ():
                    self._mark_video(int(stream.get("ssrc") or 0))
                    self._mark_video(int(stream.get("rtx_ssrc") or 0))
                if d.get("audio_ssrc"):
                    self._map(int(d["audio_ssrc"]), user, now)
            elif op == OP_CLIENTS_CONNECT:
                self.members_seen.update(int(u) for u in d["user_ids"])
            elif op == OP_CLIENT_DISCONNECT:
                self._drop_user(int(d["user_id"]))
            elif op == OP_SESSION_DESCRIPTION:
                self.set_key(d["mode"], d["secret_key"])
        except (KeyError, TypeError, ValueError, AttributeError):
            _log.debug("voice receive: ignoring malformed op %s payload", op)
        except Exception:  # e.g. libopus missing when a speaker is created: log, never raise
            _log.exception("voice receive: op %s failed", op)

    def _mark_video(self, ssrc: int) -> None:
        if ssrc and ssrc not in self._by_ssrc:
            self._video.add(ssrc)
            for _ in self._hold.release(ssrc):
                self._count[Outcome.VIDEO] += 1

    def _map(self, ssrc: int, user_id: int, now: float) -> None:
        self.members_seen.add(user_id)
        self._video.discard(ssrc)
        current = self._by_ssrc.get(ssrc)
        if current is not None and current.user_id == user_id:
            return
        if current is not None:  # SSRC reused by another member
            self._drop_user(current.user_id)
        old = self._speakers.get(user_id)
        if old is not None:  # member reconnected with a new SSRC
            self._drop_user(user_id)
        c = self.config
        stream = ReceiveStream(
            user_id,
            self._sink,
            self._count,
            self._stats,
            self._dave.decrypt,
            jitter_depth=c.jitter_depth,
            max_conceal_frames=c.max_conceal_frames,
        )
        self._speakers[user_id] = stream
        self._by_ssrc[ssrc] = stream
        for packet in self._hold.release(ssrc):
            self._push(stream, packet.sequence, packet.frame, packet.arrival)

    def _drop_user(self, user_id: int) -> None:
        """Member left (op 13) or was remapped: decode what is buffered, end the stream, forget it."""
        stream = self._speakers.pop(user_id, None)
        if stream is None:
            return
        for ssrc in [s for s, v in self._by_ssrc.items() if v is stream]:
            del self._by_ssrc[ssrc]
        try:
            stream.flush()
        except Exception:
            _log.exception("voice receive: flushing speaker %s failed", user_id)
            self._fail(stream)
        stream.discard()

    # -- datagrams -----------------------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> None:
        """One UDP datagram as received from Discord's voice server."""
        self.received += 1
        count = self._count
        if data.__class__ is not bytes:  # recv() gives bytes; tools may hand bytearray/memoryview
            data = bytes(data)
        header = parse_rtp(data)
        if header.__class__ is not RtpHeader:
            count[header] += 1  # type: ignore[index]
            return
        transport = self._transport
        if transport is None:
            count[Outcome.NO_KEY] += 1
            return
        frame = transport.decrypt(data, header)  # type: ignore[arg-type]
        if frame.__class__ is not bytes:
            count[frame] += 1  # type: ignore[index]
            return
        ssrc = header.ssrc  # type: ignore[union-attr]
        stream = self._by_ssrc.get(ssrc)
        if stream is not None:
            self._push(stream, header.sequence, frame, now)  # type: ignore[union-attr, arg-type]
        elif ssrc in self._video:
            count[Outcome.VIDEO] += 1
        else:
            evicted = self._hold.add(HeldPacket(now, ssrc, header.sequence, frame))  # type: ignore
            count[Outcome.UNMAPPED_DROPPED] += evicted

    def _push(self, stream: ReceiveStream, sequence: int, frame: bytes, now: float) -> None:
        try:
            stream.push(sequence, frame, now)
        except Exception:
            _log.exception("voice receive: speaker %s failed; resetting it", stream.user_id)
            self._fail(stream)

    def _fail(self, stream: ReceiveStream) -> None:
        """Count what the broken stream still owed and replace it with a fresh one."""
        self._count[Outcome.INTERNAL_ERROR] += max(stream.uncounted, 0)
        stream.uncounted = 0
        user_id = stream.user_id
        ssrcs = [s for s, v in self._by_ssrc.items() if v is stream]
        if self._speakers.get(user_id) is stream:
            del self._speakers[user_id]
            for ssrc in ssrcs:
                del self._by_ssrc[ssrc]
            for ssrc in ssrcs:
                self._map(ssrc, user_id, stream.last_arrival)

    # -- clock ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Call every ~20 ms: releases packets stuck behind gaps, ends silent streams, expires holds."""
        c = self.config
        hold = (c.jitter_depth + 1) * FRAME_SECONDS
        for stream in list(self._speakers.values()):
            try:
                stream.tick(now, hold, c.stream_timeout)
            except Exception:
                _log.exception("voice receive: speaker %s failed on tick", stream.user_id)
                self._fail(stream)
        if len(self._hold):
            self._count[Outcome.UNMAPPED_DROPPED] += self._hold.expire(now)

    def flush(self) -> None:
        """Decode everything still buffered, end all streams, drop held packets (pending → 0)."""
        for stream in list(self._speakers.values()):
            try:
                stream.flush()
            except Exception:
                _log.exception("voice receive: speaker %s failed on flush", stream.user_id)
                self._fail(stream)
        self._count[Outcome.UNMAPPED_DROPPED] += self._hold.clear()

    def close(self) -> None:
        """Flush, then release every speaker's decoder and resampler (connection gone)."""
        self.flush()
        self._speakers.clear()
        self._by_ssrc.clear()

    # -- accounting ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Datagrams not yet counted: held for an unmapped SSRC or buffered in a speaker."""
        return len(self._hold) + sum(s.uncounted for s in self._speakers.values())

    def user_of(self, ssrc: int) -> int | None:
        """The member an audio SSRC is mapped to now, or ``None`` (unmapped, or video)."""
        stream = self._by_ssrc.get(ssrc)
        return None if stream is None else stream.user_id

    @property
    def speakers(self) -> dict[int, int]:
        """SSRC → member id currently mapped."""
        return {ssrc: s.user_id for ssrc, s in self._by_ssrc.items()}

    def counters(self) -> dict[str, Any]:
        """JSON-ready snapshot: ``received == sum(outcomes) + pending``; ``dave_failures``: frames
        DAVE dropped, by reason (see :class:`bot.voice.dave.DaveDecryptor`)."""
        dave_failures = getattr(self._dave, "failure_counts", None)  # tests stand in other decryptors
        return {
            "received": self.received,
            "pending": self.pending,
            "outcomes": dict(zip(OUTCOME_NAMES, self._count, strict=True)),
            "frames": dict(self._stats),
            "dave_failures": dave_failures() if dave_failures is not None else {},
        }
