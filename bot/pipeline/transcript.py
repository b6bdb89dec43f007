"""A room's transcript: who said what, when, and its translation — kept in memory only, never in the store.

`Transcript` is fed the same text outputs as the captions (append-only fragments, `final` marking an
utterance) and turns them into lines: wall-clock time, speaker name, source text, translation. It renders
them as Markdown (to read), SubRip `.srt` or WebVTT `.vtt` (subtitles for a recording of the call; times
count from the room's start).

Privacy: a member who opted out is never sent upstream, so nothing of theirs reaches it; `forget(member)`
also removes what they said earlier when they opt out mid-room. The room manager keeps a transcript while
the room runs plus `transcripts.retention_s`, then drops it; an admin may delete it at any time.
Pure core: no I/O, the clock is passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.realtime.outputs import SessionOutput, SourceText, TargetText

FORMATS = ("markdown", "srt", "vtt")
_EXTENSIONS = {"markdown": "md", "srt": "srt", "vtt": "vtt"}


@dataclass
class Line:
    user_id: int
    name: str
    language: str | None  # what it was translated into
    start: float  # wall-clock seconds (time.time())
    end: float
    source: str = ""
    target: str = ""
    source_final: bool = False
    target_final: bool = False

    @property
    def done(self) -> bool:
        return self.source_final and self.target_final


@dataclass
class Transcript:
    channel_name: str
    started: float  # wall-clock seconds
    max_lines: int = 5000
    name_of: Callable[[int], str | None] = field(default=lambda user_id: None)
    lines: list[Line] = field(default_factory=list)
    dropped: int = 0  # oldest lines dropped past max_lines
    channel_id: int = 0
    _open: dict[int, Line] = field(default_factory=dict)

    def add(self, user_id: int, out: SessionOutput, now: float, language: str | None = None) -> None:
        """A text output of `user_id`'s session (translated into `language`) at wall-clock `now`."""
        if not isinstance(out, SourceText | TargetText) or (not out.text and not out.final):
            return
        is_source = isinstance(out, SourceText)
        line = self._open.get(user_id)
        if line is not None and out.text and (line.source_final if is_source else line.target_final):
            del self._open[user_id]  # that stream already ended its utterance: this is the next one
            line = None
        if line is None:
            if not out.text:
                return
            line = Line(user_id, self.name_of(user_id) or f"Speaker {user_id}", language, now, now)
            self._open[user_id] = line
            self.lines.append(line)
            if len(self.lines) > self.max_lines:
                gone = self.lines.pop(0)
                self.dropped += 1
                if self._open.get(gone.user_id) is gone:
                    del self._open[gone.user_id]
        if is_source:
            line.source += out.text
            line.source_final |= out.final
        else:
            line.target += out.text
            line.target_final |= out.final
        line.end = now
        if line.done:
            del self._open[user_id]

    def forget(self, user_id: int) -> None:
        """Remove everything a member said (they opted out)."""
        self.lines = [line for line in self.lines if line.user_id != user_id]
        self._open.pop(user_id, None)

    def clear(self) -> None:
        """Delete every line (an admin asked); what is said from now on is kept again."""
        self.lines.clear()
        self._open.clear()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.lines)

    # -- rendering --------------------------------------------------------------------------------------
    def filename(self, fmt: str) -> str:
        day = dt.datetime.fromtimestamp(self.started, dt.UTC).strftime("%Y-%m-%d-%H%M")
        return f"transcript-{day}.{_EXTENSIONS[fmt]}"

    def render(self, fmt: str) -> str:
        if fmt == "markdown":
            return self.markdown()
        if fmt == "srt":
            return self.srt()
        if fmt == "vtt":
            return self.vtt()
        raise ValueError(f"unknown transcript format {fmt!r} (one of {', '.join(FORMATS)})")

    def markdown(self) -> str:
        start = dt.datetime.fromtimestamp(self.started, dt.UTC)
        out = [f"# Transcript of {_md(self.channel_name)}", "",
               f"Started {start:%Y-%m-%d %H:%M} UTC. Live translation by Parley: each line is what was said, "
               "then its translation.", ""]
        if self.dropped:
            out += [f"*({self.dropped} earlier lines are no longer kept.)*", ""]
        for line in self._shown():
            when = dt.datetime.fromtimestamp(line.start, dt.UTC)
            label = f" (→ {line.language})" if line.language else ""
            said = _md(line.source.strip()) or "…"
            translated = f" ⟶ *{_md(line.target.strip())}*" if line.target.strip() else ""
            out.append(f"- **{when:%H:%M:%S}** **{_md(line.name)}**{label}: {said}{translated}")
        if not self.lines:
            out.append("*Nothing has been said yet.*")
        return "\n".join(out) + "\n"

    def srt(self) -> str:
        cues = []
        for i, line in enumerate(self._shown(), 1):
            start, end = self._span(line)
            cues.append(f"{i}\n{_stamp(start, ',')} --> {_stamp(end, ',')}\n{self._cue_text(line)}\n")
        return "\n".join(cues)

    def vtt(self) -> str:
        cues = ["WEBVTT", ""]
        for line in self._shown():
            start, end = self._span(line)
            name = " ".join(line.name.replace(">", "").replace("<", "").split())
            cues.append(f"{_stamp(start, '.')} --> {_stamp(end, '.')}\n<v {name}>{self._cue_text(line, vtt=True)}\n")
        return "\n".join(cues)

    def _shown(self) -> list[Line]:
        return [line for line in self.lines if line.source.strip() or line.target.strip()]

    def _span(self, line: Line) -> tuple[float, float]:
        start = max(0.0, line.start - self.started)
        return start, max(start + 1.0, line.end - self.started)

    @staticmethod
    def _cue_text(line: Line, vtt: bool = False) -> str:
        """The translation first (what a viewer of the recording needs), the original in brackets."""
        target, source = (" ".join(t.split()).replace("-->", "→") for t in (line.target, line.source))
        if vtt:
            target, source = _vtt(target), _vtt(source)
        name = "" if vtt else f"{line.name}: "
        if target and source:
            return f"{name}{target}\n({source})"
        return f"{name}{target or source}"


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _md(text: str) -> str:
    """Speech as Markdown text: one line, markup characters escaped."""
    text = " ".join(text.split())
    for ch in "\\`*_[]<>~":
        text = text.replace(ch, "\\" + ch)
    return text


def _vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
