"""Everything `/translate` says to members, in one place so the voice stays short, friendly and consistent."""

from __future__ import annotations

from urllib.parse import urlsplit

# -- command descriptions (shown in Discord's command picker) -----------------------------------------
GROUP = "Live speech translation in voice channels"
JOIN = "Interpret the voice channel you are in"
JOIN_OUTPUT = "Voice channel where the translations are spoken (remembered for next time)"
JOIN_CAPTIONS = "Text channel for captions (remembered for next time)"
JOIN_TWO_WAY = "Interpret the output channel too, into this one: a conversation across languages"
LEAVE = "Stop interpreting in this server"
LANGUAGE = "Choose the language your speech is translated into"
LANGUAGE_CODE = "The language you hear: a code such as es, fr or pt-BR (or its name)"
LANGUAGE_SPEAKS = "The language you speak (otherwise it is recognised from your speech)"
STATUS = "What Parley is doing in this server"
OPTOUT = "Keep your voice out of translation (never sent anywhere)"
TRANSCRIPT = "Get the room's transcript as a file (time, speaker, what was said, translation)"
TRANSCRIPT_FORMAT = "Markdown to read (default), or SubRip / WebVTT subtitles for a recording"
TRANSCRIPT_DELETE = "Admins (Manage Server): delete the transcript now instead"
OPTOUT_ENABLED = "True: opt out (the default). False: opt back in"

# -- errors -----------------------------------------------------------------------------------------
NOT_IN_VOICE = "Join a voice channel first: Parley interprets the channel you're in."
TWO_WAY_NEEDS_OUTPUT = "A two-way room needs an output channel: pick one with `output_channel`."
SAME_CHANNEL = "Pick a different output channel: playing translations into the source would translate them again."
CANNOT_SEE = "You can't see {channel}, so it can't be used here."
CANNOT_POST = "I can't send messages in {channel}. Give me Send Messages there, or pick another caption channel."
NOTICE_FAILED = (
    "I couldn't post the notice that translation is on in {channel}, so I didn't start. "
    "Give me Send Messages there and try again."
)
NOT_RUNNING = "Parley isn't interpreting in this server. Start with `/translate join`."
LEAVE_DENIED = "Only members in {channel} or with Manage Channels can stop interpreting."
BAD_LANGUAGE = "`{code}` isn't a language I know. Try a code like `es`, `fr` or `pt-BR`, or pick one from the list."
STORE_DOWN = "I can't save preferences right now. Please try again in a moment."
UNEXPECTED = "Something went wrong on my side; it has been logged. Please try again."
GUILD_ONLY = "These commands work in a server, not in direct messages."
NO_TRANSCRIPT = "There is no transcript here: none is running, and closed rooms' transcripts are deleted soon after."
TRANSCRIPT_DENIED = "You can't see {channel}, where it was said, so you can't have its transcript."
TRANSCRIPT_CHANNEL_GONE = "The channel it was said in is gone; only members with Manage Server can have its transcript."
TRANSCRIPT_DELETE_DENIED = "Only members with Manage Server can delete the transcript."

# -- confirmations ----------------------------------------------------------------------------------
LEFT = "Stopped. Every session is closed and I've left the voice channels."
LANGUAGE_SET = "Your speech will be translated into {language}."
SPEAKS_SET = "You speak {language}: speech in the language you hear is not translated."
LANGUAGE_NOTHING = (
    "Give `code` (the language your speech is translated into), `speaks` (the language you speak), or both."
)
OPTED_OUT = (
    "You're opted out: your voice is never sent for translation in this server. "
    "`/translate optout enabled:False` undoes it."
)
NOT_SAVED = "Done for this session, but I couldn't save it: run the command again later so it survives a restart."
TRANSCRIPT_DELETED = "The transcript is deleted."
OPTED_IN = "You're opted back in: your voice is translated while Parley is in your channel."
NOTICE_OFF = "**Live translation is off** in {source}."


def language_label(code: str, name: str) -> str:
    return f"{name} — {code}"


def backend_label(backend: str) -> str:
    """A backend name, or only the host of a URL backend (its path or query may carry tokens)."""
    if "://" not in backend:
        return backend
    return urlsplit(backend).hostname or "a custom server"


def where_audio_goes(backend: str) -> str:
    """The privacy-relevant part of a backend: who receives members' audio (never a URL's path or query)."""
    if backend == "local":
        return "translated on this host by Parley's own offline server (no audio leaves it)"
    if backend in ("openai", "openai-realtime"):
        return "sent to OpenAI to be translated"
    host = urlsplit(backend).hostname
    return f"sent to the translation server at {host or 'the configured address'} to be translated"


def joined(source: str, output: str | None, captions: str | None, two_way: bool = False) -> str:
    if two_way and output:
        parts = [f"Interpreting {source} and {output} into each other: each channel hears the other's translations."]
    else:
        parts = [f"Interpreting {source}."]
    if output and not two_way:
        parts.append(f"Translations are spoken in {output}.")
    if captions:
        parts.append(f"Captions go to {captions}.")
    return " ".join(parts)


def consent_notice(
    source: str, backend: str, output: str | None, captions: str | None, *, originals: bool = True,
    retention_s: float = 600.0, two_way: bool = False,
) -> str:
    """Posted in the open when Parley joins: translation is on, where audio goes, how to stay out of it.
    A two-way room posts it in both channels' chat: members of both are heard."""
    kept = f" and for {duration(retention_s)} after" if retention_s > 0 else " (deleted when it stops)"
    then = []
    if two_way and output:
        source = f"{source} and {output} (two-way)"
        then.append("spoken in the other channel")
    elif output:
        then.append(f"spoken in {output}")
    if captions:
        then.append(f"captioned ({'original and translation' if originals else 'translation'}) in {captions}")
    return (
        f"🔴 **Live translation is on** in {source}. What members say there is {where_audio_goes(backend)}"
        + (f", then {' and '.join(then)}" if then else "")
        + f".\nA transcript (who said what, with its translation) is kept in memory while this runs{kept}, for "
        "`/translate transcript`; opted-out members are never in it.\n"
        "Don't want your voice translated? Run `/translate optout`: Parley then ignores your voice entirely. "
        "`/translate leave` stops it."
    )


def status(
    *,
    backend: str,
    source: str,
    output: str | None,
    captions: str | None,
    speakers: list[tuple[str, str, bool]],
    opted_out: int,
    usd_today: float,
    budget_usd: float | None,
    you: str,
    problem: str | None = None,
    not_translated: list[tuple[str, str]] | None = None,
    fastest_tempo: float = 1.0,
    audio_dropped_s: float = 0.0,
    same_language: list[tuple[str, str]] | None = None,
    two_way: bool = False,
    workers: list[tuple[str, bool, int]] | None = None,
) -> str:
    """`speakers` holds (mention, target language, connected) for each member being translated."""
    if two_way and output:
        lines = [f"**Interpreting** {source} ⇄ {output} (two-way: each hears the other) via {backend_label(backend)}.",
                 f"Captions: {captions or '—'}"]
    else:
        lines = [f"**Interpreting** {source} via {backend_label(backend)}."]
        if output or captions:
            lines.append(f"Output: {output or '—'} · Captions: {captions or '—'}")
    if speakers:
        shown = [f"{who} → {lang}{'' if live else ' (idle)'}" for who, lang, live in speakers[:10]]
        more = f" and {len(speakers) - 10} more" if len(speakers) > 10 else ""
        lines.append(f"Speakers: {', '.join(shown)}{more}")
    elif not same_language:
        lines.append("Speakers: nobody is talking right now.")
    for who, why in (same_language or [])[:10]:
        lines.append(f"ℹ️ {who} is not translated: {why}, the same language (no session, no cost).")
    lines.append(f"Opted out here: {opted_out}")
    if fastest_tempo > 1.0 or audio_dropped_s > 0:
        lines.append(catch_up(fastest_tempo, audio_dropped_s))
    lines.append(f"Cost today: {cost(usd_today, budget_usd)}")
    if workers and len(workers) > 1:
        shown_workers = [f"{name} {f'up, {n} sessions' if up else 'down'}" for name, up, n in workers]
        lines.append(f"Workers: {' · '.join(shown_workers)}")
    if problem:
        lines.append(f"⚠️ Last problem: {problem}")
    shown = not_translated_lines(not_translated or [])
    if shown:
        lines.extend(shown)
    lines.append(you)
    return "\n".join(lines)


def catch_up(fastest_tempo: float, dropped_s: float) -> str:
    """Translations run longer than speech: how the room kept up (faster playback, and what it still lost)."""
    line = f"Catching up: translations played up to {fastest_tempo:.2f}× faster (same pitch)"
    if dropped_s > 0:
        line = f"⚠️ {line}; {dropped_s:.1f} s of translated audio dropped (speakers ran too far ahead)"
    return line + "."


def not_translated_lines(members: list[tuple[str, str]]) -> list[str]:
    """(mention, reason) of each member who is not translated right now, at most 10 lines."""
    lines = [f"⚠️ {who} not translated: {why}" for who, why in members[:10]]
    if len(members) > 10:
        lines.append(f"…and {len(members) - 10} more not translated.")
    return lines


def not_translated(members: list[tuple[str, str]]) -> str:
    """Appended to the join reply: members whose stored language the backend cannot serve, and so on."""
    lines = not_translated_lines(members)
    return "\n" + "\n".join(lines) if lines else ""


def duration(seconds: float) -> str:
    """`10 minutes`, `1 hour`, `30 seconds`, `no time` — for notices."""
    if seconds <= 0:
        return "no time"
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            n = round(seconds / size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return "a moment"


def transcript_ready(lines: int, live: bool) -> str:
    where = "so far" if live else "of the last room"
    return f"Here is the transcript {where} ({lines} line{'s' if lines != 1 else ''})."


def cost(usd: float, budget_usd: float | None) -> str:
    return f"${usd:.2f}" + (f" of ${budget_usd:.2f} budget" if budget_usd is not None else "")


def you(language: str, opted_out: bool, default: bool, speaks: str | None = None) -> str:
    lang = f"{language} (server default)" if default else language
    spoken = f"; you speak {speaks}" if speaks else ""
    return f"You: {'opted out' if opted_out else 'translated into ' + lang}{spoken}."
