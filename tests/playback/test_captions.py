"""Captions: the pure board (pacing, utterance ends, escaping, length) and the poster against a fake channel."""

from __future__ import annotations

import asyncio
import itertools
from unittest.mock import MagicMock

import discord
import pytest

from bot.playback.captions import (
    ARROW,
    CaptionBoard,
    CaptionPoster,
    CaptionRouter,
    Done,
    Edit,
    Post,
)
from bot.playback.config import PlaybackConfig
from bot.realtime.outputs import SourceText, TargetText, TranslatedAudio


def src(text: str, final: bool = False) -> SourceText:
    return SourceText(text, 0, final)


def tgt(text: str, final: bool = False) -> TargetText:
    return TargetText(text, 0, final)


def board(**kw) -> CaptionBoard:
    b = CaptionBoard(min_edit_interval_s=1.0, pause_s=2.0, **kw)
    b.set_speaker(1, "Alice", "es")
    b.set_speaker(2, "Bob", "fr")
    return b


def test_first_fragment_posts_at_once_with_the_header() -> None:
    b = board()
    assert b.add(1, src(" Hello"), 0.0) == [Post(1, "**Alice** (→ es): Hello")]


def test_fragments_are_joined_exactly_and_edits_are_paced() -> None:
    b = board()
    b.add(1, src("Hel"), 0.0)
    assert b.add(1, src("lo wor"), 0.3) == []  # within the interval: held
    assert b.add(1, src("ld"), 0.6) == []
    assert b.tick(0.9) == []
    assert b.tick(1.0) == [Edit(1, "**Alice** (→ es): Hello world")]  # no spaces added between fragments
    assert b.tick(1.5) == []  # nothing new
    assert b.add(1, tgt("Hola"), 1.7) == []
    assert b.add(1, tgt(" mundo"), 2.1) == [Edit(1, f"**Alice** (→ es): Hello world {ARROW} Hola mundo")]


def test_a_steady_stream_is_edited_at_most_once_per_interval_and_ends_complete() -> None:
    b = board()
    words = [f" w{i}" for i in range(100)]
    sent: list[tuple[float, Post | Edit]] = []
    now = 0.0
    for word in words:  # a word every 0.1 s for 10 s
        for action in b.add(1, src(word), now) + b.tick(now):
            if isinstance(action, Post | Edit):
                sent.append((now, action))
        now += 0.1
    actions = b.tick(now + 5)
    sent += [(now + 5, a) for a in actions if isinstance(a, Post | Edit)]
    assert actions[-1] == Done(1)
    times = [t for t, _ in sent]
    assert all(b2 - a >= 1.0 - 1e-9 for a, b2 in itertools.pairwise(times))
    assert 9 <= len(sent) <= 12  # ~ one per second, not one per fragment
    assert sent[-1][1].content == "**Alice** (→ es): " + "".join(words).strip()


def test_both_streams_final_ends_the_utterance_and_the_next_words_start_a_new_message() -> None:
    b = board()
    assert b.add(1, tgt("Hola"), 0.0) == [Post(1, f"**Alice** (→ es): {ARROW} Hola")]  # no source yet (GA order)
    assert b.add(1, tgt("", final=True), 0.2) == []
    # the whole transcript arrives final, after the translation: same message, ended (edit waits its turn)
    assert b.add(1, src("Hello", final=True), 0.4) == []
    assert b.tick(0.9) == []
    assert b.tick(1.0) == [Edit(1, f"**Alice** (→ es): Hello {ARROW} Hola"), Done(1)]
    assert b.add(1, tgt("Adiós"), 1.2) == [Post(2, f"**Alice** (→ es): {ARROW} Adiós")]


def test_final_when_due_edits_and_finishes_at_once() -> None:
    b = board()
    b.add(1, src("Hi"), 0.0)
    assert b.add(1, tgt("Hola", final=True), 1.5) == [Edit(1, f"**Alice** (→ es): Hi {ARROW} Hola")]
    assert b.add(1, src("", final=True), 1.6) == [Done(1)]  # the edit just sent is already the final text


def test_a_final_stream_that_speaks_again_is_a_new_utterance() -> None:
    b = board()  # e.g. no input transcription: only target finals
    b.add(1, tgt("Uno", final=True), 0.0)
    actions = b.add(1, tgt("Dos"), 0.5)
    assert actions == [Done(1), Post(2, f"**Alice** (→ es): {ARROW} Dos")]


def test_a_pause_ends_the_utterance() -> None:
    b = board()
    b.add(1, src("One"), 0.0)
    assert b.tick(1.9) == []
    assert b.tick(2.0) == [Done(1)]
    assert b.add(1, src("Two"), 2.5) == [Post(2, "**Alice** (→ es): Two")]


def test_a_pause_with_an_edit_pending_sends_it_when_due_then_finishes() -> None:
    b = CaptionBoard(min_edit_interval_s=3.0, pause_s=1.0)
    b.set_speaker(1, "Alice")
    b.add(1, src("One"), 0.0)
    b.add(1, src(" two"), 0.5)
    assert b.tick(1.5) == []  # ended by the pause, but its last edit must wait for the interval
    assert b.add(1, src("Three"), 2.0) == [Post(2, "**Alice**: Three")]  # a new line meanwhile
    assert b.tick(2.9) == []
    assert b.tick(3.0) == [Done(2), Edit(1, "**Alice**: One two"), Done(1)]  # line 2 paused too


def test_speakers_have_their_own_messages() -> None:
    b = board()
    assert b.add(1, src("Hi"), 0.0) == [Post(1, "**Alice** (→ es): Hi")]
    assert b.add(2, src("Salut"), 0.1) == [Post(2, "**Bob** (→ fr): Salut")]
    b.add(1, src(" there"), 0.5)
    assert b.tick(1.0) == [Edit(1, "**Alice** (→ es): Hi there")]
    assert b.end(2, 1.1) == [Done(2)]
    assert b.end(2, 1.2) == []


def test_an_unnamed_speaker_and_a_bare_final_with_nothing_open() -> None:
    b = CaptionBoard()
    assert b.add(9, tgt("", final=True), 0.0) == []
    assert b.add(9, src("x"), 0.0) == [Post(1, "**Speaker 9**: x")]


def test_markdown_and_mentions_in_speech_and_names_are_neutralised() -> None:
    b = CaptionBoard()
    b.set_speaker(1, "*Evil*_name", "es")
    [post] = b.add(1, src("**bold** @everyone hi @here\nnew line `code`"), 0.0)
    assert isinstance(post, Post)
    assert "@everyone" not in post.content and "@here" not in post.content
    assert "\\*\\*bold\\*\\*" in post.content and "\\`code\\`" in post.content
    assert "\n" not in post.content
    assert post.content.startswith("**\\*Evil\\*\\_name** (→ es): ")


def test_long_utterances_split_at_the_message_limit_without_losing_words() -> None:
    b = CaptionBoard(min_edit_interval_s=0.0, max_chars=200)
    b.set_speaker(1, "A")
    words = [f" word{i:03d}" for i in range(100)]
    contents: dict[int, str] = {}
    for i, word in enumerate(words):
        for action in b.add(1, src(word), float(i)):
            if isinstance(action, Post | Edit):
                assert len(action.content) <= 200
                contents[action.line] = action.content
    assert len(contents) > 3
    shown = " ".join(c.removeprefix("**A**: ") for c in contents.values())
    assert shown.split() == "".join(words).split()


def test_one_fragment_longer_than_a_message_is_cut_with_an_ellipsis() -> None:
    b = CaptionBoard(max_chars=150)
    [post] = b.add(1, src("x" * 500), 0.0)
    assert len(post.content) == 150 and post.content.endswith("…")


def test_flush_all_sends_pending_text_now() -> None:
    b = board()
    b.add(1, src("a"), 0.0)
    b.add(1, src("b"), 0.1)
    b.add(2, src("c"), 0.2)
    assert b.flush_all(0.3) == [Edit(1, "**Alice** (→ es): ab"), Done(1), Done(2)]
    assert b.tick(10) == []


def test_from_config() -> None:
    b = CaptionBoard.from_config(PlaybackConfig(caption_edit_interval_s=0.5, caption_pause_s=4))
    assert (b.min_edit_interval_s, b.pause_s) == (0.5, 4)


# -- the poster, against a fake text channel -----------------------------------------------------------


class FakeMessage:
    def __init__(self, channel: FakeChannel, content: str) -> None:
        self.channel, self.content = channel, content

    async def edit(self, *, content: str, allowed_mentions: discord.AllowedMentions) -> FakeMessage:
        self.channel.calls.append(("edit", content, allowed_mentions))
        if self.channel.fail_edit is not None:
            raise self.channel.fail_edit
        self.content = content
        return self


class FakeChannel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, discord.AllowedMentions]] = []
        self.messages: list[FakeMessage] = []
        self.fail_send: Exception | None = None
        self.fail_edit: Exception | None = None
        self.delay = 0.0

    async def send(self, content: str, *, allowed_mentions: discord.AllowedMentions) -> FakeMessage:
        self.calls.append(("send", content, allowed_mentions))
        await asyncio.sleep(self.delay)
        if self.fail_send is not None:
            raise self.fail_send
        message = FakeMessage(self, content)
        self.messages.append(message)
        return message


def http_error(status: int) -> discord.HTTPException:
    response = MagicMock(status=status, reason="x")
    cls = discord.NotFound if status == 404 else discord.HTTPException
    return cls(response, "nope")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


async def hello_then_hola(poster: CaptionPoster, clock: Clock, *also: object) -> None:
    """Member 1 says "Hello" (with `also` fed after it); a second later "Hola" ends the utterance; closed."""
    poster.start()
    poster.feed(1, src("Hello"))
    for out in also:
        poster.feed(1, out)  # type: ignore[arg-type]
    await settle()
    clock.now = 1.0
    poster.feed(1, tgt("Hola", final=True))
    poster.feed(1, src("", final=True))
    await settle()
    await poster.close()


async def test_poster_sends_then_edits_one_message_without_mentions() -> None:
    channel, clock = FakeChannel(), Clock()
    poster = CaptionPoster(channel, board(), clock=clock, tick_s=0.01)
    await hello_then_hola(poster, clock, TranslatedAudio(b"\0\0", 0))  # audio is not the captions' business
    assert [(kind, content) for kind, content, _ in channel.calls] == [
        ("send", "**Alice** (→ es): Hello"),
        ("edit", f"**Alice** (→ es): Hello {ARROW} Hola"),
    ]
    assert all(mentions.to_dict() == {"parse": []} for _, _, mentions in channel.calls)
    assert poster._messages == {}  # Done: forgotten


async def test_poster_coalesces_edits_queued_behind_a_slow_send() -> None:
    channel, clock = FakeChannel(), Clock()
    channel.delay = 0.05
    b = CaptionBoard(min_edit_interval_s=0.0)
    poster = CaptionPoster(channel, b, clock=clock, tick_s=0.01)
    poster.start()
    poster.feed(1, src("a"))  # send in flight for 50 ms
    await asyncio.sleep(0.01)
    for ch in "bcdef":
        clock.now += 0.1
        poster.feed(1, src(ch))
    await asyncio.sleep(0.2)
    await poster.close()
    assert [(kind, content) for kind, content, _ in channel.calls] == [
        ("send", "**Speaker 1**: a"),
        ("edit", "**Speaker 1**: abcdef"),  # the four stale edits never went out
    ]


async def test_poster_survives_discord_errors_and_retries_with_the_next_edit() -> None:
    channel, clock = FakeChannel(), Clock()
    channel.fail_send = http_error(500)
    poster = CaptionPoster(channel, CaptionBoard(min_edit_interval_s=0.0), clock=clock, tick_s=0.01)
    poster.start()
    poster.feed(1, src("a"))
    await settle()
    channel.fail_send = None
    poster.feed(1, src("b"))
    await settle()
    assert [m.content for m in channel.messages] == ["**Speaker 1**: ab"]
    channel.fail_edit = http_error(404)  # someone deleted the message: post it again
    poster.feed(1, src("c"))
    await settle()
    await poster.close()
    assert [m.content for m in channel.messages] == ["**Speaker 1**: ab", "**Speaker 1**: abc"]


async def test_poster_ends_lines_on_pause_by_itself_and_uses_names() -> None:
    channel, clock = FakeChannel(), Clock()
    poster = CaptionPoster(channel, CaptionBoard(pause_s=1.0), clock=clock, tick_s=0.01, name_of={5: "Zoë"}.get)
    poster.start()
    poster.feed(5, src("Hi"))
    await settle()
    clock.now = 1.5
    await settle()  # the tick ends the line
    poster.feed(5, src("Again"))
    await settle()
    await poster.close()
    assert [c for _, c, _ in channel.calls] == ["**Zoë**: Hi", "**Zoë**: Again"]


async def test_close_waits_for_the_send_in_flight_and_sends_the_last_words() -> None:
    channel, clock = FakeChannel(), Clock()
    channel.delay = 0.05
    poster = CaptionPoster(channel, CaptionBoard(min_edit_interval_s=5.0), clock=clock, tick_s=0.01)
    poster.start()
    poster.feed(1, src("first"))
    await asyncio.sleep(0.01)  # the send is in flight
    poster.feed(1, src(" last"))  # not due for 5 s
    await poster.close()
    assert [m.content for m in channel.messages] == ["**Speaker 1**: first last"]
    poster.feed(1, src("after close"))  # queued but never sent: the poster is stopped
    await settle()
    assert len(channel.calls) == 2


async def test_an_unexpected_error_does_not_stop_the_poster() -> None:
    channel, clock = FakeChannel(), Clock()
    channel.fail_send = TypeError("bug")
    poster = CaptionPoster(channel, CaptionBoard(min_edit_interval_s=0.0), clock=clock, tick_s=0.01)
    poster.start()
    poster.feed(1, src("a"))
    await settle()
    channel.fail_send = None
    poster.feed(1, src("b"))
    await settle()
    await poster.close()
    assert [m.content for m in channel.messages] == ["**Speaker 1**: ab"]


async def test_router_sends_each_guild_to_its_channel() -> None:
    router = CaptionRouter(PlaybackConfig())
    one, two = FakeChannel(), FakeChannel()
    await router.open(1, one)
    await router.open(2, two)
    router(1, 10, src("uno"))
    router(2, 20, src("deux"))
    router(3, 30, src("ignored"))  # no captions there
    await settle()
    await router.close(1)
    await router.close(2)
    await router.close(3)
    assert [c for _, c, _ in one.calls] == ["**Speaker 10**: uno"]
    assert [c for _, c, _ in two.calls] == ["**Speaker 20**: deux"]
    assert router.get(1) is None


@pytest.mark.parametrize("max_chars", [0, 99])
def test_a_too_small_limit_is_refused(max_chars: int) -> None:
    with pytest.raises(ValueError):
        CaptionBoard(max_chars=max_chars)


def test_under_the_speakers_own_name_the_text_leaves_the_name_out() -> None:
    """With a webhook the message carries the speaker's name and avatar: the text shows only the language."""
    board = CaptionBoard(named=False)
    board.set_speaker(1, "Alice", "es")
    (post,) = board.add(1, SourceText("Hello", None), 0.0)
    assert post == Post(1, "(→ es) Hello") and post.key == 1 and board.name(1) == "Alice"
    assert board.name(2) == "Speaker 2"


async def test_a_refused_webhook_falls_back_to_labelled_messages_whose_edits_keep_the_name() -> None:
    class RefusingWebhook:
        async def send(self, *args: object, **kwargs: object) -> None:
            raise http_error(400)  # e.g. a name Discord refuses for a webhook

    channel, clock = FakeChannel(), Clock()
    b = CaptionBoard(named=False)
    b.set_speaker(1, "Alice", "es")
    poster = CaptionPoster(channel, b, webhook=RefusingWebhook(), clock=clock, tick_s=0.01)  # type: ignore[arg-type]
    await hello_then_hola(poster, clock)
    assert [(kind, content) for kind, content, _ in channel.calls] == [
        ("send", "**Alice** (→ es) Hello"),
        ("edit", f"**Alice** (→ es) Hello {ARROW} Hola"),  # the name stays when the message grows
    ]
