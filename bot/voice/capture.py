"""Capture files: the raw voice datagrams and gateway events of one connection, as JSON lines.

Format (one object per line): a header
``{"parley_capture": 1, "mode": ..., "secret_key": "<hex>", "members": {"<user_id>": "<name>"}}``, then
records in time order, either ``{"t": s, "data": "<base64>"}`` or ``{"t": s, "op": N, "d": {...}}``.
A later op 4 record (``d`` with ``mode`` and ``secret_key``) re-keys the transport.

Captures hold the voice session's transport key: treat them like the audio they contain. DAVE frames
stay end-to-end encrypted (MLS secrets never leave davey), so a replay counts them as undecryptable.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CAPTURE_VERSION = 1


class CaptureError(ValueError):
    """The file is not a Parley capture (message is one line, for the CLI)."""


@dataclass
class CaptureHeader:
    mode: str
    secret_key: bytes
    members: dict[int, str] = field(default_factory=dict)


@dataclass
class Datagram:
    t: float
    data: bytes


@dataclass
class GatewayEvent:
    t: float
    op: int
    d: Any


class CaptureWriter:
    """Appends records to a capture file; the header is written when the transport key is known."""

    def __init__(self, path: Path, members: dict[int, str] | None = None) -> None:
        self.path = path
        self.members = dict(members or {})
        self._file: IO[str] | None = None
        self._unwritten = 0

    def start(self, mode: str, secret_key: bytes | list[int]) -> None:
        """Open the file and write the header (later keys are recorded as op 4 events)."""
        key = bytes(secret_key).hex()
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
            header = {
                "parley_capture": CAPTURE_VERSION,
                "mode": mode,
                "secret_key": key,
                "members": {str(k): v for k, v in self.members.items()},
            }
            self._write(header)

    @property
    def started(self) -> bool:
        return self._file is not None

    def datagram(self, t: float, data: bytes) -> None:
        if self._file is not None:
            self._write({"t": round(t, 6), "data": base64.b64encode(data).decode("ascii")})

    def event(self, t: float, op: int, d: Any) -> None:
        if self._file is not None:
            if op == 4 and isinstance(d, dict) and "secret_key" in d:
                d = {"mode": d.get("mode"), "secret_key": bytes(d["secret_key"]).hex()}
            self._write({"t": round(t, 6), "op": op, "d": d})

    def _write(self, obj: dict[str, Any]) -> None:
        assert self._file is not None
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._unwritten += 1
        if self._unwritten >= 500:
            self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._unwritten = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _key(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value)
    return bytes(value)


def read_capture(path: Path) -> tuple[CaptureHeader, Iterator[Datagram | GatewayEvent]]:
    """Parse the header eagerly (so a wrong file fails at once) and stream the records."""
    try:
        handle = path.open("r", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CaptureError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        first = handle.readline()
        header_obj = json.loads(first) if first.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        handle.close()
        raise CaptureError(f"{path} is not a Parley capture (first line is not JSON)") from None
    if not isinstance(header_obj, dict) or header_obj.get("parley_capture") != CAPTURE_VERSION:
        handle.close()
        raise CaptureError(f"{path} is not a Parley capture (missing parley_capture header)")
    try:
        header = CaptureHeader(
            mode=str(header_obj["mode"]),
            secret_key=_key(header_obj["secret_key"]),
            members={int(k): str(v) for k, v in (header_obj.get("members") or {}).items()},
        )
    except (KeyError, ValueError, TypeError):
        handle.close()
        raise CaptureError(f"{path}: capture header lacks a valid mode/secret_key/members") from None

    def records() -> Iterator[Datagram | GatewayEvent]:
        with handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    t = float(obj["t"])
                    if "data" in obj:
                        yield Datagram(t, base64.b64decode(obj["data"]))
                    elif "op" in obj:
                        d = obj.get("d")
                        if obj["op"] == 4 and isinstance(d, dict) and "secret_key" in d:
                            d = {"mode": d.get("mode"), "secret_key": _key(d["secret_key"])}
                        yield GatewayEvent(t, int(obj["op"]), d)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line from a crash: skip it

    return header, records()
