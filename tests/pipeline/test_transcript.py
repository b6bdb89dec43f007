"""Transcript: text outputs → lines with time, name, source and translation; Markdown, SRT and WebVTT."""

from __future__ import annotations

import re

import pytest

from bot.pipeline.transcript import Transcript
from bot.realtime.outputs import SessionError, SourceText, TargetText, TranslatedAudio

T0 = 1_764_252_000.0  # 2025-11-27 14:00:00 UTC


def fed() -> Transcript:
    t = Transcript("#Lobby", T0, name_of={1: "Alice", 2: "Bob <b>"}.get)
    t.add(1, SourceText("Good morning ", None), T0 + 1.0, "es")
    t.add(2, SourceText("Hello *all*", None, final=True), T0 + 1.5, "eo")  # interleaved speakers
    t.add(1, TargetText("Buenos días ", None), T0 + 2.0, "es")
    t.add(1, SourceText("everyone.", None, final=True), T0 + 2.5, "es")
    t.add(1, TargetText("a todos.", None, final=True), T0 + 3.0, "es")
    t.add(1, TranslatedAudio(b"\0\0", None), T0 + 3.1, "es")  # audio and errors are not text
    t.add(1, SessionError(None, "x"), T0 + 3.1, "es")
    t.add(1, SourceText("Thanks.", None, final=True), T0 + 65.0, "es")  # a new utterance
    t.add(2, TargetText("Saluton al ĉiuj", None, final=True), T0 + 66.0, "eo")
    return t


def test_lines_are_utterances_per_speaker_in_order_of_speech() -> None:
    t = fed()
    assert [(line.name, line.source, line.target) for line in t.lines] == [
        ("Alice", "Good morning everyone.", "Buenos días a todos."),
        ("Bob <b>", "Hello *all*", "Saluton al ĉiuj"),
        ("Alice", "Thanks.", ""),
    ]
    assert t.lines[0].start == T0 + 1.0 and t.lines[0].end == T0 + 3.0


def test_markdown_has_time_name_language_source_and_translation_escaped() -> None:
    md = fed().render("markdown")
    assert md.startswith("# Transcript of #Lobby\n")
    assert "- **14:00:01** **Alice** (→ es): Good morning everyone. ⟶ *Buenos días a todos.*" in md
    assert r"**Bob \<b\>** (→ eo): Hello \*all\* ⟶ *Saluton al ĉiuj*" in md
    assert "- **14:01:05** **Alice** (→ es): Thanks.\n" in md


def test_srt_and_vtt_cues_count_from_the_room_start() -> None:
    t = fed()
    srt = t.render("srt")
    assert srt.startswith("1\n00:00:01,000 --> 00:00:03,000\nAlice: Buenos días a todos.\n(Good morning everyone.)\n")
    assert "3\n00:01:05,000 --> 00:01:06,000\nAlice: Thanks.\n" in srt  # at least a second on screen
    vtt = t.render("vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n<v Alice>Buenos días a todos.\n")
    assert "<v Bob b>Saluton al ĉiuj\n(Hello *all*)" in vtt
    assert len(re.findall(r"-->", vtt)) == 3
    assert t.filename("vtt") == "transcript-2025-11-27-1400.vtt" and t.filename("markdown").endswith(".md")
    with pytest.raises(ValueError):
        t.render("docx")


def test_forget_removes_a_member_and_the_oldest_lines_go_past_the_bound() -> None:
    t = fed()
    t.forget(1)
    assert [line.name for line in t.lines] == ["Bob <b>"]
    small = Transcript("#x", T0, max_lines=10)
    for i in range(15):
        small.add(1, SourceText(f"line {i}", None, final=True), T0 + i)
        small.add(1, TargetText(f"línea {i}", None, final=True), T0 + i)
    assert len(small) == 10 and small.dropped == 5 and small.lines[0].source == "line 5"
    assert "5 earlier lines are no longer kept" in small.render("markdown")
