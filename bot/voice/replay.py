"""``python -m bot replay CAPTURE.jsonl --out DIR``: decode a capture into one WAV per member."""

from __future__ import annotations

import argparse
import json
import re
import sys
import wave
from pathlib import Path

from bot.audio.resample import FRAME_SAMPLES, OUT_RATE
from bot.voice.capture import CaptureError, Datagram, read_capture
from bot.voice.config import VoiceConfig
from bot.voice.dave import DaveDecryptor
from bot.voice.receiver import VoiceReceiver

TICK = 0.02


class TimelineSink:
    """Places each member's frames on the capture's clock: pauses between talk spurts become silence."""

    def __init__(self) -> None:
        self.now = 0.0
        self.samples: dict[int, bytearray] = {}
        self._talking: set[int] = set()

    def on_frame(self, user_id: int, pcm: bytes, at: float = 0.0) -> None:
        buf = self.samples.setdefault(user_id, bytearray())
        if user_id not in self._talking:
            self._talking.add(user_id)
            start = int(self.now * OUT_RATE) // FRAME_SAMPLES * FRAME_SAMPLES * 2
            if start > len(buf):
                buf += bytes(start - len(buf))
        buf += pcm

    def on_stream_end(self, user_id: int) -> None:
        self._talking.discard(user_id)


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "member"


def replay(path: Path, out_dir: Path, config: VoiceConfig | None = None) -> tuple[dict, dict[int, Path]]:
    """Decode ``path`` into ``out_dir``; return the counters and the WAV written for each member."""
    header, records = read_capture(path)
    sink = TimelineSink()
    receiver = VoiceReceiver(sink, config, dave=DaveDecryptor(None))
    receiver.set_key(header.mode, header.secret_key)
    next_tick = TICK
    for record in records:
        if record.t - next_tick > 10.0:  # a long pause (or a bogus time): one tick covers it
            sink.now = next_tick = record.t
        while record.t >= next_tick:
            sink.now = next_tick
            receiver.tick(next_tick)
            next_tick += TICK
        sink.now = record.t
        if isinstance(record, Datagram):
            receiver.feed(record.data, record.t)
        else:
            receiver.on_gateway(record.op, record.d, record.t)
    receiver.flush()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[int, Path] = {}
    used: set[str] = set()
    for user_id, pcm in sink.samples.items():
        stem = _safe_name(header.members[user_id]) if user_id in header.members else str(user_id)
        if stem in used:
            stem = f"{stem}-{user_id}"
        used.add(stem)
        target = out_dir / f"{stem}.wav"
        with wave.open(str(target), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(OUT_RATE)
            w.writeframes(bytes(pcm))
        written[user_id] = target
    return receiver.counters(), written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("capture", type=Path, help="capture file written by the bot (JSON lines)")
    parser.add_argument("--out", type=Path, required=True, help="directory for one WAV per member")


def main(args: argparse.Namespace) -> int:
    try:
        counters, written = replay(args.capture, args.out)
    except CaptureError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"replay: {exc.strerror or exc}: {exc.filename or args.out}", file=sys.stderr)
        return 2
    counters["wav"] = {str(uid): str(p) for uid, p in written.items()}
    print(json.dumps(counters, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover - `python -m bot replay` is the entry point
    p = argparse.ArgumentParser(prog="replay")
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
