"""A translations-protocol backend that echoes: run in its own process so its CPU is not the bot's.

Answers like `/v1/realtime/translations` (the event shapes of tests/realtime/peer.py and
bot/realtime/translation_events.py): `session.created`, `session.updated` for each `session.update`, and
for every `session.input_audio_buffer.append` one `session.output_transcript.delta` and one
`session.output_audio.delta` carrying the same audio back, with `elapsed_ms` = the end of that audio on the
session's input clock; `session.close` → the rest echoed, `session.closed`.

    python benchmarks/echo_backend.py      # prints the port on stdout, serves until stdin closes
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

_SESSION = {"id": "sess_echo", "type": "translation", "model": "gpt-realtime-translate", "audio": {}}


async def _handle(ws) -> None:
    session = dict(_SESSION, expires_at=int(time.time()) + 3600)
    await ws.send(json.dumps({"type": "session.created", "event_id": "ev_c", "session": session}))
    received = 0  # bytes of input audio
    n = 0
    async for raw in ws:
        n += 1
        # appends are by far the most frequent event: avoid a JSON parse of the audio for them
        if '"session.input_audio_buffer.append"' in raw[:60]:
            ev = json.loads(raw)
            audio = ev["audio"]
            received += len(audio) * 3 // 4 - audio.endswith("=") - audio.endswith("==")
            elapsed = received // 48
            await ws.send(json.dumps({"type": "session.output_transcript.delta", "event_id": f"ev_{n}_t",
                                      "delta": "·", "elapsed_ms": elapsed}))
            await ws.send(json.dumps({"type": "session.output_audio.delta", "event_id": f"ev_{n}_a",
                                      "delta": audio, "sample_rate": 24000, "channels": 1, "format": "pcm16",
                                      "elapsed_ms": elapsed}))
            continue
        ev = json.loads(raw)
        kind = ev.get("type")
        if kind == "session.update":
            lang = ev.get("session", {}).get("audio", {}).get("output", {}).get("language")
            answer = dict(session, audio={"output": {"language": lang}} if lang else {})
            await ws.send(json.dumps({"type": "session.updated", "event_id": f"ev_{n}", "session": answer}))
        elif kind == "session.close":
            await ws.send(json.dumps({"type": "session.closed", "event_id": f"ev_{n}_closed"}))
            await ws.close()
            return


async def _main() -> None:
    from websockets.asyncio.server import serve

    async with serve(_handle, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # the parent closes our stdin (or dies): stop


class EchoBackend:
    """Starts the echo backend in a child process; `url` once started; `close()` ends it."""

    def __init__(self) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip():
            raise RuntimeError("the echo backend did not start")
        self.port = int(line)
        self.url = f"ws://127.0.0.1:{self.port}/v1/realtime/translations"

    def cpu_seconds(self) -> float:
        """User + system CPU of the backend process so far (from /proc)."""
        import os

        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    asyncio.run(_main())
