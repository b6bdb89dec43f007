"""`python -m bot translate IN.wav --to es --out OUT.wav`: one file through one translation session.

The quickest way to try a backend: the file (WAV, FLAC, OGG, MP3…, any rate and channel count) is
streamed in 20 ms frames, paced in real time (as a speaker would be) or as fast as the session accepts
(`--fast`); translated audio goes to a 24 kHz mono WAV as it arrives, captions to JSON lines. With
`--backend local` and no server listening, an in-process bot.localrt is started on a free port.

Outputs are checked and opened before any work, and whatever arrived is kept when the run stops early
(Ctrl-C, a backend that gives up). Exit codes: 0 translated; 1 nothing was translated, or the backend
failed; 2 a usage, file or configuration problem; 3 incomplete (the end of the input was not
translated: the output stops early, and the message says where); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from bot.audiofile import AudioFileError, WavWriter, read_audio_24k_mono
from bot.config import (
    DEFAULT_CONFIG,
    ConfigError,
    Settings,
    check_language,
    config_path,
    load_settings,
    resolve_endpoint,
)
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio
from bot.realtime.session import SessionFatal, SessionUnavailable, TranslationSession

FRAME_BYTES = 960  # 20 ms of 24 kHz pcm16
BYTES_PER_S = 48_000
CUT_SLACK_MS = 250  # unanswered audio below this is the last partial frame, not a loss
SILENCE_PEAK = 64  # an input whose int16 samples never exceed this is silence (-54 dBFS)
EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
log = logging.getLogger("parley.translate")


class UsageError(Exception):
    """A problem the user fixes on the command line or in the files: one line, exit 2."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="audio file: WAV, FLAC, OGG, MP3… (any sample rate and channel count)")
    p.add_argument("--to", required=True, metavar="LANG", help="target language, e.g. es")
    p.add_argument("--from", dest="source", metavar="LANG",
                   help="the speaker's language, e.g. en; checked against what the backend can hear")
    p.add_argument("--backend", help="openai | openai-realtime | local | ws://host:port (default: config)")
    p.add_argument("--out", type=Path, required=True, help="translated audio, 24 kHz mono WAV")
    p.add_argument("--captions", type=Path,
                   help="captions as JSON lines: kind, text, elapsed_ms (without it the text is printed)")
    p.add_argument("--fast", action="store_true", help="send as fast as accepted instead of in real time")
    p.add_argument("--config", type=Path,
                   help=f"config file (default: ./{DEFAULT_CONFIG} when it exists, else built-in defaults)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (for scripts)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the session does")
    p.epilog = ("exit codes: 0 translated, 1 nothing translated or backend failure, 2 usage/file/config "
                "problem, 3 incomplete (the end was not translated), 130 interrupted")


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

    def text(self, kind: str) -> str:
        return "".join(line["text"] for line in self.lines if line["kind"] == kind).strip()

    def write(self, f: IO[str]) -> None:
        for line in self.lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
        f.flush()


@dataclass
class Result:
    """What one run produced; filled in as it goes, so an interrupted run still has it."""

    input_bytes: int
    captions: Captions = field(default_factory=Captions)
    errors: list[str] = field(default_factory=list)
    audio_bytes: int = 0
    sent_ms: float = 0.0
    answered_ms: float = 0.0
    complete: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def unanswered_ms(self) -> float:
        return max(0.0, self.sent_ms - self.answered_ms)

    @property
    def produced(self) -> bool:
        return self.audio_bytes > 0 or bool(self.captions.text("target"))


class Progress:
    """A progress bar on a terminal (tqdm, on stderr); nothing at all otherwise."""

    def __init__(self, total_s: float, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=round(total_s, 1), unit="s", desc="translating", leave=False,
                             bar_format="{desc} {bar} {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}]")

    def update(self, done_s: float) -> None:
        if self._bar is not None:
            self._bar.n = round(min(done_s, self._bar.total), 1)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def translate_file(settings: Settings, pcm: bytes, language: str, fast: bool, result: Result,
                         out: WavWriter, progress: Progress, spoken: str | None = None) -> None:
    """`spoken`: the input's language (`--from`), told to a backend that takes it (bot.localrt's
    `input_language`: no identification); None for the OpenAI models, which identify it themselves."""
    endpoint = resolve_endpoint(settings)
    # A close waits for what was sent: at most the whole input still to translate (plus the usual
    # margin), instead of a fixed 10 s that cut long `--fast` runs short.
    input_s = len(pcm) / BYTES_PER_S
    session_cfg = settings.session.model_copy(
        update={"close_timeout_s": settings.session.close_timeout_s + 2 * input_s})
    settings = settings.model_copy(update={"session": session_cfg})
    query = {"input_language": spoken.split("-")[0].lower()} if spoken else None
    session = TranslationSession(endpoint, language, settings, name="translate", query=query)

    async def collect() -> None:
        async for item in session.outputs():
            match item:
                case TranslatedAudio():
                    out.write(item.pcm16)
                    result.audio_bytes += len(item.pcm16)
                case SourceText():
                    result.captions.add("source", item.text, item.elapsed_ms)
                case TargetText():
                    result.captions.add("target", item.text, item.elapsed_ms)
                case SessionError() if not item.fatal:
                    result.errors.append(f"{item.code}: {item.message}" if item.code else item.message)
                    log.info("backend error: %s", result.errors[-1])
            result.answered_ms = max(result.answered_ms, session.acked_ms)
            progress.update(result.answered_ms / 1000)

    await session.open()
    reader = asyncio.create_task(collect(), name="translate-collect")
    closed = False
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(0, len(pcm), FRAME_BYTES):
            await session.send_audio(pcm[i : i + FRAME_BYTES])
            result.sent_ms = session.sent_ms
            if fast:
                progress.update(session.acked_ms / 1000)
            else:  # pace against the clock, not per sleep, so drift does not accumulate
                progress.update(session.sent_ms / 1000)
                await asyncio.sleep(max(0.0, start + (i + FRAME_BYTES) / BYTES_PER_S - loop.time()))
        result.sent_ms = session.sent_ms
        await session.close()
        closed = True
        result.answered_ms = max(result.answered_ms, session.acked_ms)
        result.complete = session.failure is None and result.unanswered_ms <= CUT_SLACK_MS
        # the session has ended: its outputs end too (bounded, so a stuck reader cannot hang us)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), timeout=5)
    finally:
        if not closed:  # interrupted or failed: stop at once, keep what arrived
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.abort(), timeout=5)
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    if session.failure is not None:
        raise session.failure
    result.summary = {
        "reconnects": session.stats.drops,
        "rotations": session.stats.rotations,
        **session.cost.summary(),
    }


def _languages_url(ws_url: str) -> str:
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/v1/languages", "", ""))


def backend_languages(settings: Settings) -> dict[str, Any] | None:
    """`GET /v1/languages` of a bot.localrt-like backend; None when the backend does not serve it."""
    endpoint = resolve_endpoint(settings)
    if endpoint.protocol != "translation" or urlsplit(endpoint.url).scheme not in ("ws", "wss"):
        return None
    if settings.backend in ("openai", "openai-realtime"):
        return None
    request = urllib.request.Request(_languages_url(endpoint.url))
    if endpoint.api_key is not None:
        request.add_header("Authorization", f"Bearer {endpoint.api_key.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.info("no language list from %s: %s", _languages_url(endpoint.url), e)
        return None
    return data if isinstance(data, dict) else None


def check_target_language(target: str, langs: dict[str, Any] | None) -> None:
    """`--to LANG` against the backend's `output_languages` (when it says them)."""
    if langs is None:
        return
    outputs = [str(x) for x in langs.get("output_languages", [])]
    want = target.split("-")[0].lower()
    if want not in outputs:
        raise UsageError(f"--to {target}: the backend cannot translate into {target}; it can into "
                         f"{', '.join(outputs) or 'no language'} (`python -m bot localrt --languages` lists routes)")


def check_source_language(source: str, target: str, langs: dict[str, Any] | None) -> None:
    """`--from LANG` against what the backend can hear; UsageError with what it can when it cannot."""
    if langs is None:
        return  # the backend does not say (OpenAI's models detect the spoken language themselves)
    code = source.split("-")[0].lower()
    heard = [str(x) for x in langs.get("input_languages", [])]
    if code not in heard and code in langs.get("recognised_languages", []):
        raise UsageError(f"--from {source}: the backend hears {source} but cannot translate from it; it translates "
                         f"from {', '.join(heard) or 'no language'}")
    if code not in heard:
        raise UsageError(f"--from {source}: the backend cannot hear {source}; it recognises "
                         f"{', '.join(heard) or 'no language'} (install a multilingual ASR model for more)")
    routes = langs.get("routes", [])
    pairs = {(r.get("input"), r.get("output")) for r in routes if isinstance(r, dict)}
    want = target.split("-")[0].lower()
    if pairs and (code, want) not in pairs:
        outs = sorted({o for i, o in pairs if i == code})
        raise UsageError(f"--from {source} --to {target}: the backend has no {code}→{want} route; "
                         f"from {code} it translates into {', '.join(outs) or 'nothing'}")


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
    from bot.localrt.engines.asr import EngineError
    from bot.localrt.engines.bundle import Engines
    from bot.localrt.server import LocalRTServer

    local = settings.local.model_copy(update={"host": "127.0.0.1", "port": 0})
    try:
        engines = await asyncio.to_thread(Engines.load, local)
    except EngineError as e:
        raise UsageError(f"the local backend cannot start: {e}") from None
    server = LocalRTServer(local, engines, settings.secrets.localrt_api_key and
                           settings.secrets.localrt_api_key.get_secret_value())
    await server.start()
    print(f"translate: started bot.localrt on 127.0.0.1:{server.port}", file=sys.stderr)
    try:
        yield settings.model_copy(update={"local": local.model_copy(update={"port": server.port})})
    finally:
        with contextlib.suppress(TimeoutError):  # never hang on a connection that will not let go
            await asyncio.wait_for(server.close(), timeout=10)


async def _run(args: argparse.Namespace, settings: Settings, pcm: bytes, result: Result, out: WavWriter,
               progress: Progress) -> None:
    async with _local_server_if_needed(settings) as s:
        langs = await asyncio.to_thread(backend_languages, s)
        check_target_language(args.to, langs)
        if args.source:
            check_source_language(args.source, args.to, langs)
        # only a backend that lists what it hears (bot.localrt) takes the hint; it was checked just above
        spoken = args.source if args.source and langs is not None and "input_languages" in langs else None
        await translate_file(s, pcm, args.to, args.fast, result, out, progress, spoken)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: every output can be created, and none of them is the input or each other."""
    outputs = [("--out", args.out)] + ([("--captions", args.captions)] if args.captions else [])
    for flag, path in outputs:
        if _same_file(path, args.input):
            raise UsageError(f"{flag} {path}: that is the input file; choose another name")
        if path.is_dir():
            raise UsageError(f"{flag} {path}: is a directory; give a file name")
        parent = path.parent
        if not parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {parent} does not exist")
        if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UsageError(f"{flag} {path}: not writable")
    if args.captions and _same_file(args.out, args.captions):
        raise UsageError("--out and --captions name the same file")


def _fmt_s(ms: float) -> str:
    s = ms / 1000
    return f"{int(s // 60)}:{s % 60:04.1f}"


def outcome(result: Result, pcm: bytes) -> tuple[int, str | None]:
    """The exit code, and the line that explains a run that did not fully work."""
    if not result.produced:
        if result.errors:
            return EXIT_NOTHING, f"nothing was translated: the backend reported {result.errors[0]}"
        if not pcm:
            return EXIT_NOTHING, "the input has no audio (0 samples): nothing to translate"
        if _peak(pcm) <= SILENCE_PEAK:
            return EXIT_NOTHING, "no speech detected: the input is silent"
        if result.captions.text("source"):
            return EXIT_NOTHING, ("speech was recognised but nothing was translated "
                                  "(is there a route into this language? try --from)")
        return EXIT_NOTHING, ("no speech detected: nothing the recogniser could hear, or speech was not in a "
                              "language the recogniser knows (name it with --from to check)")
    if not result.complete:
        return EXIT_INCOMPLETE, (
            f"incomplete: the backend did not answer the last {result.unanswered_ms / 1000:.1f} s of the input "
            f"(after {_fmt_s(result.answered_ms)} of {_fmt_s(result.sent_ms)}); the output stops there")
    return EXIT_OK, None


def _peak(pcm: bytes) -> int:
    import numpy as np

    samples = np.frombuffer(pcm, "<i2")
    return int(np.abs(samples.astype(np.int32)).max()) if samples.size else 0


def summary_of(settings: Settings, args: argparse.Namespace, result: Result, code: int) -> dict[str, Any]:
    return {
        "backend": settings.backend,
        "input": str(args.input),
        "out": str(args.out),
        "captions": str(args.captions) if args.captions else None,
        "status": {EXIT_OK: "ok", EXIT_NOTHING: "nothing", EXIT_INCOMPLETE: "incomplete",
                   EXIT_INTERRUPTED: "interrupted"}.get(code, "failed"),
        "input_seconds": round(result.input_bytes / BYTES_PER_S, 2),
        "translated_seconds": round(min(result.answered_ms, result.sent_ms) / 1000, 2),
        "output_seconds": round(result.audio_bytes / BYTES_PER_S, 2),
        "source_text": result.captions.text("source"),
        "target_text": result.captions.text("target"),
        "errors": len(result.errors),
        **result.summary,
    }


def print_human(summary: dict[str, Any], show_text: bool) -> None:
    if show_text and summary["target_text"]:
        print(summary["target_text"])
    done = (f"{summary['input_seconds']:.1f} s in" if summary["status"] == "ok" else
            f"{summary['translated_seconds']:.1f} of {summary['input_seconds']:.1f} s translated")
    parts = [done, f"{summary['output_seconds']:.1f} s of translated speech "
             f"→ {summary['out']}"]
    if summary["captions"]:
        parts.append(f"captions → {summary['captions']}")
    if summary.get("reconnects"):
        parts.append(f"{summary['reconnects']} reconnect(s)")
    if summary.get("usd"):
        parts.append(f"${summary['usd']:.4f}")
    print("translate: " + ", ".join(parts), file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # what the session logs, this command says itself in one line (-v shows it all)
        logging.getLogger("parley.realtime").setLevel(logging.ERROR)
    env_backend = {"PARLEY_BACKEND": args.backend} if args.backend else {}
    settings = load_settings(config_path(args.config), env={**os.environ, **env_backend})
    try:
        settings = settings.model_copy(update={"target_language": check_language(args.to)})
        if args.source:
            check_language(args.source)
    except ValueError as e:
        raise ConfigError(f"--to/--from: {e}") from None
    try:
        check_outputs(args)
        pcm = read_audio_24k_mono(args.input)
    except (UsageError, AudioFileError) as e:
        print(f"translate: {e}", file=sys.stderr)
        return EXIT_USAGE
    result = Result(input_bytes=len(pcm))
    code, message = EXIT_OK, None
    if not pcm:
        code, message = outcome(result, pcm)
        print(f"translate: {args.input}: {message}", file=sys.stderr)
        return code
    try:
        writer = WavWriter(args.out)
        captions_file = args.captions.open("w", encoding="utf-8") if args.captions else None
    except (AudioFileError, OSError) as e:
        print(f"translate: {e}", file=sys.stderr)
        return EXIT_USAGE
    progress = Progress(len(pcm) / BYTES_PER_S, enabled=sys.stderr.isatty() and not args.verbose)
    try:
        asyncio.run(_run(args, settings, pcm, result, writer, progress))
        code, message = outcome(result, pcm)
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, (
            f"interrupted after {_fmt_s(result.sent_ms)} of {_fmt_s(len(pcm) / BYTES_PER_S * 1000)}; "
            "what was translated so far is kept")
    except (UsageError, SessionFatal) as e:
        code, message = (EXIT_USAGE if isinstance(e, UsageError) else EXIT_NOTHING), str(e)
    except SessionUnavailable as e:
        code, message = EXIT_NOTHING, str(e)
    finally:
        progress.close()
        writer.close()
        if captions_file is not None:
            result.captions.write(captions_file)
            captions_file.close()
    summary = summary_of(settings, args, result, code)
    if result.errors and result.produced:
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        print(f"translate: part of the input may be missing: the backend reported {result.errors[0]}{more}",
              file=sys.stderr)
    if message:
        print(f"translate: {message}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    elif code in (EXIT_OK, EXIT_INCOMPLETE, EXIT_INTERRUPTED):
        print_human(summary, show_text=not args.captions)
    return code
