"""Append-only partial transcripts from repeated re-decodes of a growing segment. Pure.

Each re-decode may revise its tail, but transcript deltas can never be taken back. So a word is
committed only once two consecutive hypotheses agree on it (local agreement), and only the new
committed suffix is emitted. Comparison ignores case and punctuation; the emitted spelling is the
newest hypothesis's.
"""

from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    return _PUNCT.sub("", word.lower())


def agreed_prefix(a: list[str], b: list[str]) -> int:
    """Number of leading words two hypotheses share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if _norm(x) != _norm(y):
            break
        n += 1
    return n


class StableText:
    """Commit state of one segment's source text."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self._last: list[str] = []

    @property
    def text(self) -> str:
        return " ".join(self.committed)

    def update(self, hypothesis: str) -> list[str]:
        """A partial hypothesis for the whole segment; returns newly committed words."""
        words = hypothesis.split()
        n = agreed_prefix(self._last, words)
        self._last = words
        if n <= len(self.committed) or agreed_prefix(self.committed, words) < len(self.committed):
            return []
        new = words[len(self.committed) : n]
        self.committed += new
        return new

    def finish(self, final: str) -> list[str]:
        """The final hypothesis: everything after what was committed is committed now."""
        words = final.split()
        # If the final decode disagrees with text already sent, what was sent stands and only the
        # words beyond it are appended (decoding with the committed text as prefix makes this rare).
        new = words[len(self.committed) :]
        self.committed += new
        self._last = []
        return new


def cut_repeat(prefix: list[str], continuation: list[str]) -> list[str]:
    """Drop a continuation that starts over: decoders forced to continue a complete sentence tend to
    say it again (`…please. I would like…`). The cut happens where the prefix's opening recurs."""
    head = [_norm(w) for w in prefix[:3]]
    if not head:
        return continuation
    normed = [_norm(w) for w in continuation]
    for i in range(len(normed) - len(head) + 1):
        if normed[i : i + len(head)] == head:
            return continuation[:i]
    return continuation


_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e."})


def sentence_end(words: list[str], start: int = 0) -> int:
    """Index just past the last sentence-final word (`.`, `?`, `!`) at or after `start`; `start`
    itself when there is none. What lies before it can be translated without waiting for a pause."""
    end = start
    for i in range(start, len(words)):
        w = words[i].rstrip("\"')]»")
        if w.endswith(("?", "!")) or (w.endswith(".") and w.lower() not in _ABBREVIATIONS):
            end = i + 1
    return end


def join_delta(words: list[str], first: bool) -> str:
    """Words as one append-only delta: a leading space unless this is the very first text."""
    if not words:
        return ""
    text = " ".join(words)
    return text if first else " " + text
