"""`python -m bot translate IN.wav --to es`: one file through one translation session.

The quickest way to try a backend: the file is streamed in 20 ms frames, paced in real time (as a
speaker would be) or as fast as the session accepts (`--fast`); translated audio goes to a 24 kHz mono
WAV, captions to JSON lines. With `--backend local` and no server listening, an in-process bot.localrt
is started on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from bot.audiofile import AudioFileError, read_wav_24k_mono, write_wav_24k_mono
from bot.config import ConfigError, Settings, check_language, load_settings, resolve_endpoint
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import SessionFatal, SessionUnavailable, TranslationSession

FRAME_BYTES = 960  # 20 ms of 24 kHz pcm16
log = logging.getLogger("parley.translate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="WAV file (any sample rate and channel count)")
    p.add_argument("--to", required=True, metavar="LANG", help="target language, e.g. es")
    p.add_argument("--backend", help="openai | openai-realtime | local | ws://host:port (default: config)")
    p.add_argument("--out", type=Path, required=True, help="translated audio, 24 kHz mono WAV")
    p.add_argument("--captions", type=Path, help="captions as JSON lines: kind, text, elapsed_ms")
    p.add_argument("--fast", action="store_true", help="send as fast as accepted instead of in real time")
    p.add_argument("--config", type=Path, help="config.yaml (default: built-in defaults)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the session does")


class Captions:
    """Joins append-only fragments that share a kind and `elapsed_ms` into one caption line."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def add(self, kind: str, text: str, elapsed_ms: int | None) -> None:
        last = self.lines[-1] if self.lines else None
        if last and last["kind"] == kind and last["elapsed_ms"] == elapsed_ms:
            last["text"] += text
        elif text:
            self.lines.append({"kind": kind, "text": text, "elapsed_ms": elapsed_ms})

    def write(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for line in self.lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")


async def translate_file(settings: Settings, pcm: bytes, language: str, fast: bool) -> tuple[bytes, Captions, dict]:
    endpoint = resolve_endpoint(settings)
    session = TranslationSession(endpoint, language, settings, name="translate")
    audio = bytearray()
    captions = Captions()
    errors: list[str] = []

    async def collect() -> None:
        async for out in session.outputs():
            match out:
                case TranslatedAudio():
                    audio.extend(out.pcm16)
                case SourceText():
                    captions.add("source", out.text, out.elapsed_ms)
                case TargetText():
                    captions.add("target", out.text, out.elapsed_ms)
                case SessionError():
                    errors.append(f"{out.code}: {out.message}")
                    print(f"translate: server error {out.code}: {out.message}", file=sys.stderr)

    await session.open()
    reader = asyncio.create_task(collect())
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(0, len(pcm), FRAME_BYTES):
        await session.send_audio(pcm[i : i + FRAME_BYTES])
        if not fast:  # pace against the clock, not per sleep, so drift does not accumulate
            await asyncio.sleep(max(0.0, start + (i + FRAME_BYTES) / 48_000 - loop.time()))
    await session.close()
    await reader
    if session.failure is not None:
        raise session.failure
    summary = {
        "backend": settings.backend,
        "input_seconds": round(len(pcm) / 48_000, 2),
        "output_seconds": round(len(audio) / 48_000, 2),
        "reconnects": session.stats.drops,
        "rotations": session.stats.rotations,
        "errors": len(errors),
        **session.cost.summary(),
    }
    return bytes(audio), captions, summary


@contextlib.asynccontextmanager
async def _local_server_if_needed(settings: Settings):
    """For `--backend local`: use a running bot.localrt, or start one in this process."""
    if settings.backend != "local":
        yield settings
        return
    url = resolve_endpoint(settings).url
    try:
        import websockets

        async with websockets.connect(url, open_timeout=1):
            pass
        yield settings
        return
    except Exception:
        pass
    from bot.localrt.engines.bundle import Engines
    from bot.localrt.server import LocalRTServer

    local = settings.local.model_copy(update={"host": "127.0.0.1", "port": 0})
    engines = await asyncio.to_thread(Engines.load, local)
    server = LocalRTServer(local, engines, settings.secrets.localrt_api_key and
                           settings.secrets.localrt_api_key.get_secret_value())
    await server.start()
    print(f"translate: started bot.localrt on 127.0.0.1:{server.port}", file=sys.stderr)
    try:
        yield settings.model_copy(update={"local": local.model_copy(update={"port": server.port})})
    finally:
        await server.close()


async def _run(args: argparse.Namespace, settings: Settings, pcm: bytes) -> dict:
    async with _local_server_if_needed(settings) as s:
        audio, captions, summary = await translate_file(s, pcm, args.to, args.fast)
    write_wav_24k_mono(args.out, audio)
    if args.captions:
        captions.write(args.captions)
    return summary


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env_backend = {"PARLEY_BACKEND": args.backend} if args.backend else {}
    import os

    settings = load_settings(args.config, env={**os.environ, **env_backend})
    try:
        settings = settings.model_copy(update={"target_language": check_language(args.to)})
    except ValueError as e:
        raise ConfigError(f"--to: {e}") from None
    try:
        pcm = read_wav_24k_mono(args.input)
        summary = asyncio.run(_run(args, settings, pcm))
    except AudioFileError as e:
        print(f"translate: {e}", file=sys.stderr)
        return 2
    except (SessionFatal, SessionUnavailable) as e:
        print(f"translate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
