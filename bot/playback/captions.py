"""Captions in the text chat: one message per utterance per speaker, edited as the words arrive.

`CaptionBoard` is the pure core: it takes the sessions' append-only text fragments (`SourceText`,
`TargetText`) with the time they arrived and returns what to do — `Post` a new message, `Edit` one, or
`Done` (the message will not change again). It paces edits (at most one per message per
`min_edit_interval_s`: Discord rate-limits them) and decides where an utterance ends: when both the
source and the translation were marked `final`, when a stream that was final starts again, after
`pause_s` without a fragment, or when the message would pass Discord's 2000 characters.

Fragments are concatenated exactly as they come (the server puts the spaces in), and the speech is
escaped for markdown and mentions; the poster also sends with `AllowedMentions.none()`.

`CaptionPoster` is the thin async part: it feeds a board from the pipeline (never blocking it), ticks it,
and carries the actions out with `channel.send` / `message.edit`, one at a time, latest edit wins. Given a
channel webhook (Parley may manage webhooks there), it posts each caption under the speaker's name and avatar
instead (the board then leaves the name out of the text), never pinging anyone; discord.py's webhook client
honours the rate limits (429 → wait `retry_after`, retry). If the webhook fails or is deleted, it falls back
to labelled messages.
`CaptionRouter` is the pipeline's caption sink: `(guild_id, user_id, output)` → that guild's poster.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import discord
from discord.utils import escape_markdown, escape_mentions

from bot.playback.config import PlaybackConfig
from bot.realtime.outputs import SessionOutput, SourceText, TargetText

log = logging.getLogger("parley.captions")

MAX_CHARS = 2000  # Discord's message length limit
ARROW = "⟶"


@dataclass(frozen=True, slots=True)
class Post:
    line: int
    content: str
    key: int = field(default=0, compare=False)  # the speaker (a webhook posts under their name)


@dataclass(frozen=True, slots=True)
class Edit:
    line: int
    content: str
    key: int = field(default=0, compare=False)  # the speaker (a labelled message keeps their name)


@dataclass(frozen=True, slots=True)
class Done:
    """The line's message is final: the poster may forget it."""

    line: int


CaptionAction = Post | Edit | Done


def _clean(text: str) -> str:
    """Speech as shown: on one line, markdown and mentions neutralised."""
    return escape_mentions(escape_markdown(text.replace("\r", " ").replace("\n", " ").strip()))


@dataclass(slots=True)
class _Line:
    id: int
    key: int
    header: str
    opened_at: float
    last_at: float
    source: str = ""
    target: str = ""
    source_final: bool = False
    target_final: bool = False
    sent: str | None = None  # what Discord shows (None: not posted yet)
    sent_at: float = field(default=float("-inf"))


class CaptionBoard:
    """Fragments + a clock in, `Post`/`Edit`/`Done` actions out. No I/O."""

    def __init__(self, *, min_edit_interval_s: float = 1.5, pause_s: float = 2.0, max_chars: int = MAX_CHARS,
                 named: bool = True) -> None:
        if max_chars < 100:
            raise ValueError("max_chars must leave room for a header and some words")
        self.named = named  # False: the message is posted under the speaker's name, the text leaves it out
        self.min_edit_interval_s = min_edit_interval_s
        self.pause_s = pause_s
        self.max_chars = max_chars
        self._speakers: dict[int, tuple[str, str | None]] = {}
        self._open: dict[int, _Line] = {}  # speaker → the line being written
        self._closing: dict[int, _Line] = {}  # line id → ended, its last edit waiting for the interval
        self._next_id = 0

    @classmethod
    def from_config(cls, config: PlaybackConfig, *, named: bool = True) -> CaptionBoard:
        return cls(min_edit_interval_s=config.caption_edit_interval_s, pause_s=config.caption_pause_s, named=named)

    def name(self, key: int) -> str:
        return self._speakers.get(key, (f"Speaker {key}", None))[0]

    def set_speaker(self, key: int, name: str, language: str | None = None) -> None:
        """Name and target language shown on the speaker's next lines."""
        self._speakers[key] = (name, language)

    def knows(self, key: int) -> bool:
        return key in self._speakers

    def add(self, key: int, fragment: SourceText | TargetText, now: float) -> list[CaptionAction]:
        actions: list[CaptionAction] = []
        is_source = isinstance(fragment, SourceText)
        text = fragment.text
        line = self._open.get(key)
        if line is not None and text and (line.source_final if is_source else line.target_final):
            actions += self._end(line, now)  # that stream finished its utterance: this is the next one
            line = None
        if line is None:
            if not text:
                return actions
            line = self._new_line(key, now)
        elif len(self._compose(line, text, is_source)) > self.max_chars:
            actions += self._end(line, now)  # full: the utterance goes on in a new message
            line = self._new_line(key, now)
        if is_source:
            line.source += text
            line.source_final |= fragment.final
        else:
            line.target += text
            line.target_final |= fragment.final
        line.last_at = now
        if line.source_final and line.target_final:
            actions += self._end(line, now)
        else:
            actions += self._flush(line, now)
        return actions

    def tick(self, now: float) -> list[CaptionAction]:
        """Due edits, and utterances that ended in a pause."""
        actions: list[CaptionAction] = []
        for line in list(self._open.values()):
            if now - line.last_at >= self.pause_s:
                actions += self._end(line, now)
            else:
                actions += self._flush(line, now)
        for line in list(self._closing.values()):
            if now - line.sent_at >= self.min_edit_interval_s:
                del self._closing[line.id]
                actions += [*self._flush(line, now, force=True), Done(line.id)]
        return actions

    def end(self, key: int, now: float) -> list[CaptionAction]:
        """The speaker's utterance is over (e.g. their session closed)."""
        line = self._open.get(key)
        return self._end(line, now) if line is not None else []

    def flush_all(self, now: float) -> list[CaptionAction]:
        """Shutting down: every line gets its final text now, paced or not."""
        actions: list[CaptionAction] = []
        for line in list(self._closing.values()):
            actions += [*self._flush(line, now, force=True), Done(line.id)]
        self._closing.clear()
        for line in list(self._open.values()):
            actions += self._end(line, now, force=True)
        return actions

    # -- internals --------------------------------------------------------------------------------------
    def _new_line(self, key: int, now: float) -> _Line:
        name, language = self._speakers.get(key, (f"Speaker {key}", None))
        if self.named:
            header = f"**{_clean(name)}**" + (f" (→ {_clean(language)})" if language else "") + ": "
        else:  # under the speaker's own name (a webhook): only the language
            header = f"(→ {_clean(language)}) " if language else ""
        self._next_id += 1
        line = _Line(self._next_id, key, header, now, now)
        self._open[key] = line
        return line

    @staticmethod
    def _compose(line: _Line, extra: str = "", to_source: bool = True) -> str:
        """The message for `line` (with `extra` appended to one stream), of any length."""
        source = _clean(line.source + extra if to_source else line.source)
        target = _clean(line.target if to_source else line.target + extra)
        body = f"{source} {ARROW} {target}".strip() if target else source
        return line.header + body

    def _render(self, line: _Line) -> str:
        content = self._compose(line)
        if len(content) > self.max_chars:  # one fragment alone longer than a message
            content = content[: self.max_chars - 1] + "…"
        return content

    def _flush(self, line: _Line, now: float, *, force: bool = False) -> list[CaptionAction]:
        content = self._render(line)
        if content == line.sent:
            return []
        if line.sent is None:
            action: CaptionAction = Post(line.id, content, line.key)
        elif force or now - line.sent_at >= self.min_edit_interval_s:
            action = Edit(line.id, content, line.key)
        else:
            return []  # dirty: a later tick sends it
        line.sent, line.sent_at = content, now
        return [action]

    def _end(self, line: _Line, now: float, *, force: bool = False) -> list[CaptionAction]:
        del self._open[line.key]
        if force or line.sent is None or now - line.sent_at >= self.min_edit_interval_s:
            return [*self._flush(line, now, force=True), Done(line.id)]
        if self._render(line) == line.sent:
            return [Done(line.id)]
        self._closing[line.id] = line
        return []


class CaptionPoster:
    """Carries a board's actions out in one text channel; `feed` is synchronous and never waits on Discord."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        board: CaptionBoard | None = None,
        *,
        name_of: Callable[[int], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = 0.25,
        webhook: discord.Webhook | None = None,
        avatar_of: Callable[[int], str | None] | None = None,
    ) -> None:
        self.channel = channel
        self.webhook = webhook  # post under each speaker's name and avatar (the board must be `named=False`)
        self._avatar_of = avatar_of
        self.board = board if board is not None else CaptionBoard()
        self._name_of = name_of
        self._clock = clock
        self._tick_s = tick_s
        self._queue: deque[CaptionAction] = deque()
        self._messages: dict[int, discord.Message] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._worker is None and not self._stopping:
            self._worker = asyncio.create_task(self._run(), name="captions")

    def feed(self, key: int, output: SessionOutput) -> None:
        """A session output of speaker `key`; anything but text is ignored."""
        if not isinstance(output, SourceText | TargetText):
            return
        if self._name_of is not None and not self.board.knows(key):
            name = self._name_of(key)
            if name:
                self.board.set_speaker(key, name)
        self._enqueue(self.board.add(key, output, self._clock()))

    def end(self, key: int) -> None:
        """Speaker `key` stopped (left, opted out, session closed): their message is complete."""
        self._enqueue(self.board.end(key, self._clock()))

    async def close(self, timeout: float = 10.0) -> None:
        """Send every line's final text (waiting at most `timeout` for Discord), then stop."""
        self._stopping = True
        self._enqueue(self.board.flush_all(self._clock()))
        worker, self._worker = self._worker, None
        if worker is None:
            worker = asyncio.create_task(self._drain())
        try:
            await asyncio.wait_for(worker, timeout)
        except TimeoutError:
            log.warning("captions: Discord did not take the last captions within %.0f s", timeout)

    def _enqueue(self, actions: list[CaptionAction]) -> None:
        for action in actions:
            if isinstance(action, Edit):  # latest text wins over a not-yet-sent post or edit of the same line
                for i, queued in enumerate(self._queue):
                    if isinstance(queued, Post | Edit) and queued.line == action.line:
                        self._queue[i] = dataclasses.replace(queued, content=action.content)
                        break
                else:
                    self._queue.append(action)
            else:
                self._queue.append(action)
        if actions:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if not self._stopping:
                self._enqueue(self.board.tick(self._clock()))
            await self._drain()
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick_s)

    async def _drain(self) -> None:
        while self._queue:
            await self._apply(self._queue.popleft())

    async def _apply(self, action: CaptionAction) -> None:
        if isinstance(action, Done):
            self._messages.pop(action.line, None)
            return
        none = discord.AllowedMentions.none()
        message = self._messages.get(action.line)
        try:
            if message is not None:
                content = action.content if isinstance(message, discord.WebhookMessage) else self._text(action)
                try:
                    await message.edit(content=content, allowed_mentions=none)
                    return
                except discord.NotFound:
                    pass  # deleted by someone: post it again
            if self.webhook is not None:
                self._messages[action.line] = await self._as_speaker(action, none)
                return
            self._messages[action.line] = await self.channel.send(self._text(action), allowed_mentions=none)
        except discord.HTTPException as exc:  # captions never stop the pipeline; the next edit retries
            log.warning("captions: %s failed: %s", type(action).__name__.lower(), exc)
        except Exception:
            log.exception("captions: %s failed", type(action).__name__.lower())


    def _text(self, action: Post | Edit) -> str:
        """A plain message's text: the board's, with the speaker's name in front when the board leaves it out
        (a webhook was meant to carry it, and refused or is gone)."""
        if self.board.named:
            return action.content
        return f"**{_clean(self.board.name(action.key))}** {action.content}"[:MAX_CHARS]

    async def _as_speaker(self, post: Post | Edit, none: discord.AllowedMentions) -> discord.Message:
        """Post through the webhook under the speaker's name and avatar; a refusal falls back to a labelled
        message (and a webhook that is gone, for good)."""
        assert self.webhook is not None
        name = self.board.name(post.key)
        avatar = self._avatar_of(post.key) if self._avatar_of is not None else None
        try:
            return await self.webhook.send(post.content, username=name[:80], avatar_url=avatar, allowed_mentions=none,
                                           wait=True)
        except discord.NotFound:
            log.warning("captions: the caption webhook was deleted; posting labelled messages from now on")
            self.webhook = None
        except discord.HTTPException as exc:  # e.g. a name Discord refuses for a webhook ("discord" in it)
            log.info("captions: the webhook refused a caption (%s); posted as a labelled message", exc)
        return await self.channel.send(self._text(post), allowed_mentions=none)


class CaptionRouter:
    """The pipeline's caption sink: `router(guild_id, user_id, output)` goes to that guild's poster."""

    def __init__(self, config: PlaybackConfig | None = None) -> None:
        self.config = config if config is not None else PlaybackConfig()
        self._posters: dict[int, CaptionPoster] = {}

    async def open(
        self, guild_id: int, channel: discord.abc.Messageable, *, name_of: Callable[[int], str | None] | None = None,
        webhook: discord.Webhook | None = None, avatar_of: Callable[[int], str | None] | None = None,
    ) -> CaptionPoster:
        """Start captions for a room in `channel` (a previous poster of the guild is closed first); with a
        `webhook`, each caption is posted under the speaker's name and avatar."""
        await self.close(guild_id)
        poster = CaptionPoster(channel, CaptionBoard.from_config(self.config, named=webhook is None), name_of=name_of,
                               webhook=webhook, avatar_of=avatar_of)
        self._posters[guild_id] = poster
        poster.start()
        return poster

    def get(self, guild_id: int) -> CaptionPoster | None:
        return self._posters.get(guild_id)

    async def close(self, guild_id: int) -> None:
        poster = self._posters.pop(guild_id, None)
        if poster is not None:
            await poster.close()

    def __call__(self, guild_id: int, user_id: int, output: SessionOutput) -> None:
        poster = self._posters.get(guild_id)
        if poster is not None:
            poster.feed(user_id, output)
