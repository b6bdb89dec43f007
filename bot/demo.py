"""`python -m bot demo`: see Parley interpret a conversation with no Discord account and no API key.

It starts the sandbox (a local Discord, `bot/sandbox/`) and bot.localrt, then runs the real bot as its own
process — `python -m bot run`, unchanged, pointed at the sandbox by the `discord:` settings. Simulated
people join: two speakers in the source channel, one listener in the output channel. A speaker types
`/translate join` and each speaker `/translate language`; they speak (by default a short synthesized
two-person conversation). The demo writes what the listener heard (`output.wav`), the caption channel as a
reader sees it (`captions.md`) and a `timeline.json`, and prints who said what, the translation, and the
ear-voice span of each utterance (speech onset → first translated sound heard).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bot.audio.pcm import to_float, to_pcm16
from bot.audiofile import AudioFileError, read_wav_24k_mono, write_wav_24k_mono
from bot.config import ConfigError, DiscordConfig, check_language
from bot.run import discord_client_options
from bot.sandbox.member import QUIET, RATE, Member
from bot.sandbox.server import Event, Sandbox

log = logging.getLogger("parley.demo")

DEFAULT_CONVERSATION = (
    ("Alice", "en-us", "Good morning everyone. The meeting starts at ten."),
    ("Bob", "en-gb", "Thank you. I will send the report this afternoon."),
)
DEFAULT_TARGET = "es"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speaker", action="append", default=[], metavar="FILE.wav[:LANG]",
                   help="a speaker saying this WAV; LANG is the language their speech is translated into "
                        f"(their /translate language, default {DEFAULT_TARGET}). Repeat for several speakers. "
                        "Default: a synthesized two-person conversation in English")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="where to write output.wav, captions.md, "
                   "timeline.json and the logs (default: demo-out)")
    p.add_argument("--config", type=Path, help="a config.yaml whose local: section the demo's bot.localrt uses")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the sandbox and members do")


@dataclass
class Utterance:
    speaker: str
    wav: Path
    language: str
    text: str | None = None  # known for synthesized speech
    started: float = 0.0  # monotonic time its first frame was sent
    onset_s: float = 0.0  # where speech starts inside the file
    end_s: float = 0.0  # where it ends
    heard_at: float | None = None  # monotonic time the listener first heard its translation
    sent_s: float = 0.0

    @property
    def ear_voice_span_s(self) -> float | None:
        """Speech onset → the first translated sound heard (what a listener waits)."""
        return None if self.heard_at is None else self.heard_at - (self.started + self.onset_s)

    @property
    def after_speech_s(self) -> float | None:
        """End of the speech → the first translated sound (what the pipeline adds after the speaker stops)."""
        return None if self.heard_at is None else self.heard_at - (self.started + self.end_s)


@dataclass
class DemoResult:
    utterances: list[Utterance]
    captions: list[str]
    replies: list[dict[str, str]]
    timeline: list[dict[str, Any]] = field(default_factory=list)
    bot_exit: dict[str, Any] = field(default_factory=dict)


def parse_speaker(arg: str) -> tuple[Path, str]:
    """`FILE.wav[:LANG]` → (path, target language); LANG defaults to the demo's target."""
    path, lang = arg, ""
    head, sep, tail = arg.rpartition(":")
    if sep and head and "/" not in tail and not tail.lower().endswith(".wav"):
        path, lang = head, tail
    try:
        language = check_language(lang) if lang else DEFAULT_TARGET
    except ValueError as e:
        raise ConfigError(f"--speaker {arg}: {e}") from None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--speaker {arg}: no such file: {p}")
    return p, language


def synthesize(text: str, voice: str, path: Path) -> Path:
    """Test speech from espeak-ng (Debian package espeak-ng)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise ConfigError("the default conversation needs espeak-ng (apt-get install espeak-ng), "
                          "or pass --speaker FILE.wav")
    subprocess.run([exe, "-v", voice, "-s", "160", "-w", str(path), text], check=True, capture_output=True)
    return path


def speech_span(pcm16: bytes) -> tuple[float, float]:
    """Where speech starts and ends in the audio (seconds)."""
    x = np.abs(to_float(pcm16))
    loud = np.flatnonzero(x > QUIET * 3)
    return (float(loud[0]) / RATE, float(loud[-1]) / RATE) if len(loud) else (0.0, 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {logfile}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} did not start within {timeout:.0f} s; see {logfile}")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 20.0) -> tuple[int, float]:
    """Signal a child and wait; kill it if it does not exit. Returns (exit code, seconds it took)."""
    t = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode, time.monotonic() - t


async def wait_quiet(member: Member, from_user: int, after: float, quiet_s: float, timeout: float) -> float | None:
    """Wait until `member` has heard `from_user` after `after` and then `quiet_s` of silence (or timeout).

    Returns the monotonic time the first sound after `after` was heard, if any."""
    deadline = time.monotonic() + timeout
    first: float | None = None
    while time.monotonic() < deadline:
        rec = member.recording
        onsets = [rec.t0 + t for t, u in rec.onsets if u == from_user and rec.t0 + t >= after]
        if onsets and first is None:
            first = onsets[0]
        if first is not None and time.monotonic() - rec.last_sound.get(from_user, 0.0) > quiet_s:
            return first
        await asyncio.sleep(0.1)
    return first


async def run_demo(utterances: list[Utterance], out: Path, config: Path | None, verbose: bool) -> DemoResult:
    work = Path(tempfile.mkdtemp(prefix="parley-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    members: list[Member] = []
    logs: list[Any] = []
    try:
        async with Sandbox(work / "sandbox") as sb, contextlib.AsyncExitStack() as people:
            people.push_async_callback(_close_members, members)  # before the sandbox closes: they leave cleanly
            listener, voice = sb.add_bot("Parley"), sb.add_bot("Parley Voice")
            speakers = {u.speaker: sb.add_person(u.speaker) for u in utterances}
            carol = sb.add_person("Carol")
            guild = sb.add_guild("Parley demo", next(iter(speakers.values())))
            lobby, interp = sb.add_channel(guild, "Lobby"), sb.add_channel(guild, "Interpretation")
            captions = sb.add_channel(guild, "captions", "text")
            await sb.invite(guild, listener, voice, carol, *speakers.values())

            port = free_port()
            cfg = work / "config.yaml"
            write_config(cfg, config, port, sb, work / "parley.sqlite3")
            env = {**os.environ, "DISCORD_TOKEN": listener.token, "DISCORD_SPEAKER_TOKEN": voice.token,
                   "PARLEY_BACKEND": "local"}
            env.pop("OPENAI_API_KEY", None)
            localrt_log, bot_log = (out / "localrt.log").open("wb"), (out / "bot.log").open("wb")
            logs += [localrt_log, bot_log]
            print("demo: starting bot.localrt (offline engines) and the sandbox Discord …", flush=True)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bot", "localrt", "--config", str(cfg), "--port", str(port)],
                stdout=localrt_log, stderr=subprocess.STDOUT, env=env))
            await wait_for_port(port, procs[0], 120, "bot.localrt", out / "localrt.log")
            print("demo: starting the bot: python -m bot run (pointed at the sandbox)", flush=True)
            bot_proc = subprocess.Popen([sys.executable, "-m", "bot", "run", "--config", str(cfg)],
                                        stdout=bot_log, stderr=subprocess.STDOUT, env=env)
            procs.append(bot_proc)
            await _wait(lambda: bool(sb.world.commands) and bool(sb.gateway.sessions_of(voice.id)),
                        60, "the bot did not log in to the sandbox", bot_proc, out / "bot.log")

            where = DiscordConfig(api_base=sb.api_base, gateway_url=sb.gateway_url, ca_file=sb.tls.ca_file)
            for user in (*speakers.values(), carol):
                m = Member(user, discord_client_options(where))
                members.append(m)
                await m.start()
            by_name = {m.name: m for m in members}
            for m in members:
                await m.join(interp if m.user is carol else lobby)
            listener_member = by_name["Carol"]

            replies: list[dict[str, str]] = []
            first = speakers[utterances[0].speaker]
            replies.append(await _command(sb, guild, first, listener, "join",
                                          {"output_channel": interp, "caption_channel": captions}))
            for name, user in speakers.items():
                lang = next(u.language for u in utterances if u.speaker == name)
                replies.append(await _command(sb, guild, user, listener, "language", {"code": lang}))
            await asyncio.sleep(1.0)  # let the listener's voice connection settle

            for u in utterances:
                print(f"demo: {u.speaker} speaks {u.wav.name} …", flush=True)
                pcm = read_wav_24k_mono(u.wav)
                (u.onset_s, u.end_s), u.sent_s = speech_span(pcm), len(pcm) / 2 / RATE
                sb.note("speech", {"speaker": u.speaker, "file": u.wav.name, "seconds": round(u.sent_s, 2)})
                u.started = await by_name[u.speaker].speak(pcm)
                u.heard_at = await wait_quiet(listener_member, voice.id, u.started, 1.5, 25)
            replies.append(await _command(sb, guild, first, listener, "status", {}))
            replies.append(await _command(sb, guild, first, listener, "leave", {}))
            await asyncio.sleep(0.5)

            code, took = stop_process(bot_proc, signal.SIGINT)
            bot_exit = {"signal": "SIGINT", "exit_code": code, "seconds": round(took, 2)}
            heard = listener_member.heard()
            write_wav_24k_mono(out / "output.wav", to_pcm16(heard))
            caption_lines = [m.content for m in sb.messages(captions, viewer=carol)]
            (out / "captions.md").write_text(_captions_md(caption_lines), encoding="utf-8")
            timeline = [_event_json(e) for e in sb.events]
            result = DemoResult(utterances, caption_lines, replies, timeline, bot_exit)
            (out / "timeline.json").write_text(json.dumps(_timeline(result, sb.clock() - time.monotonic()),
                                                          indent=2, ensure_ascii=False), encoding="utf-8")
            return result
    finally:
        for p in reversed(procs):
            stop_process(p, signal.SIGTERM, 10)
        for f in logs:
            f.close()
        shutil.rmtree(work, ignore_errors=True)


async def _close_members(members: list[Member]) -> None:
    for m in members:
        try:
            await m.close()
        except Exception as e:  # one member failing to leave must not keep the others in
            log.warning("demo: %s did not close cleanly: %r", m.name, e)


def write_config(path: Path, base: Path | None, port: int, sb: Sandbox, store: Path) -> None:
    """The user's config (for its local: engines) pointed at the sandbox, bot.localrt on `port`, a fresh store."""
    data: dict[str, Any] = {}
    if base is not None:
        try:
            data = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"--config {base}: cannot read it ({e})") from None
    data["backend"] = "local"
    data["local"] = {**(data.get("local") or {}), "host": "127.0.0.1", "port": port}
    data["discord"] = {"api_base": sb.api_base, "gateway_url": sb.gateway_url, "ca_file": str(sb.tls.ca_file)}
    data["store"] = {"path": str(store)}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


async def _wait(cond: Any, timeout: float, message: str, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise RuntimeError(f"{message}: it exited with code {proc.returncode}; see {logfile}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} within {timeout:.0f} s; see {logfile}")
        await asyncio.sleep(0.1)


async def _command(sb: Sandbox, guild: Any, user: Any, app: Any, sub: str, options: dict[str, Any]) -> dict[str, str]:
    it = await sb.command(guild, user, app, sub, options)
    reply = await sb.reply(it, timeout=30)
    text = " ".join(f"{k}:{('#' + v.name) if hasattr(v, 'name') else v}" for k, v in options.items())
    print(f"  {user.name}: /translate {sub} {text}".rstrip())
    print("    " + reply.content.replace("\n", "\n    "))
    return {"member": user.name, "command": f"/translate {sub} {text}".rstrip(), "reply": reply.content}


def _captions_md(lines: list[str]) -> str:
    body = "\n\n".join(lines) if lines else "_(no captions were posted)_"
    return f"# #captions\n\nThe caption channel as a member reads it after the demo.\n\n{body}\n"


def _event_json(e: Event) -> dict[str, Any]:
    return {"t": round(e.t, 3), "event": e.name, **{k: v if isinstance(v, str | int | float | bool | list | dict)
                                                    or v is None else str(v) for k, v in e.data.items()}}


def _timeline(result: DemoResult, to_clock: float) -> dict[str, Any]:
    return {
        "utterances": [
            {"speaker": u.speaker, "file": u.wav.name, "target_language": u.language, "text": u.text,
             "seconds": round(u.sent_s, 2), "speech_onset_t": round(u.started + u.onset_s + to_clock, 3),
             "translation_heard_t": None if u.heard_at is None else round(u.heard_at + to_clock, 3),
             "ear_voice_span_s": None if u.ear_voice_span_s is None else round(u.ear_voice_span_s, 3),
             "after_speech_end_s": None if u.after_speech_s is None else round(u.after_speech_s, 3)}
            for u in result.utterances
        ],
        "commands": result.replies,
        "bot_exit": result.bot_exit,
        "events": result.timeline,
    }


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror})") from None
    utterances: list[Utterance] = []
    if args.speaker:
        names = ["Alice", "Bob", "Dana", "Eve", "Frank", "Grace", "Heidi", "Ivan"]
        for i, arg in enumerate(args.speaker):
            path, lang = parse_speaker(arg)
            try:
                read_wav_24k_mono(path)
            except AudioFileError as e:
                raise ConfigError(str(e)) from None
            utterances.append(Utterance(names[i % len(names)] + ("" if i < len(names) else str(i)), path, lang))
    else:
        for name, voice, text in DEFAULT_CONVERSATION:
            wav = synthesize(text, voice, out / f"{name.lower()}.wav")
            utterances.append(Utterance(name, wav, DEFAULT_TARGET, text))
    t = time.monotonic()
    try:
        result = asyncio.run(run_demo(utterances, out, args.config, args.verbose))
    except (RuntimeError, TimeoutError, ConnectionError, LookupError) as e:
        print(f"demo: failed: {e}", file=sys.stderr)
        return 1
    print_summary(result, out, time.monotonic() - t)
    return 0 if all(u.heard_at is not None for u in result.utterances) else 1


def print_summary(result: DemoResult, out: Path, seconds: float) -> None:
    print("\nWhat was said, and what the listener in #Interpretation heard:")
    for u in result.utterances:
        if u.ear_voice_span_s is None or u.after_speech_s is None:
            evs = "no translation heard"
        else:
            after = u.after_speech_s
            when = f"{after:.2f} s after the speech ended" if after >= 0 else f"{-after:.2f} s before it ended"
            evs = f"ear-voice span {u.ear_voice_span_s:.2f} s, {when}"
        said = f'"{u.text}"' if u.text else u.wav.name
        print(f"  {u.speaker} (→ {u.language}): {said}  [{evs}]")
    print("\nCaption channel:")
    for line in result.captions or ["(nothing posted)"]:
        print("  " + line.replace("\n", "\n  "))
    e = result.bot_exit
    print(f"\nThe bot exited with code {e.get('exit_code')} {e.get('seconds')} s after {e.get('signal')}.")
    print(f"Wrote {out / 'output.wav'}, {out / 'captions.md'}, {out / 'timeline.json'} in {seconds:.0f} s.")
    print("To run Parley on Discord: set DISCORD_TOKEN and DISCORD_SPEAKER_TOKEN (README: inviting the two "
          "accounts), then `make run`.")
