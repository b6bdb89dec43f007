"""Same language, no waste: speech already in the listener's target language is not sent to a paid session.

Two ways to know it:
- the member said which language they speak (`/translate language speaks:`), and it is their target language
  (compared by language subtag: `pt` and `pt-BR` are one language to an ear);
- their own transcript shows it: utterances whose translation merely repeats the speech, or that the
  translation model left untranslated (a translations model may stay silent on same-language speech: that is
  not a failure, it is this). `SameLanguageWatch` is the pure core that reads a speaker's text outputs.
"""

from __future__ import annotations

import re

import langcodes

from bot.realtime.outputs import SessionOutput, SourceText, TargetText

UTTERANCES_NEEDED = 3  # in a row: one odd utterance (a name, "OK") is not enough to stop translating someone
PAUSE_S = 4.0  # no text for this long ends an utterance (the translations protocol marks no ends; a translation
# lagging its speech by more than this would be misread as none, so it is longer than any backend's lag)


def same_language(a: str | None, b: str | None) -> bool:
    """True when two language tags name the same language (`en` and `en-GB`; not `en` and `es`)."""
    if not a or not b:
        return False
    try:
        return langcodes.Language.get(a).language == langcodes.Language.get(b).language
    except (ValueError, langcodes.LanguageTagError):
        return a.lower() == b.lower()


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


class SameLanguageWatch:
    """A speaker's text outputs in, True out once `needed` utterances in a row were not really translated:
    the translation was the speech again (same words), or nothing came for a whole utterance.

    An utterance ends when both its source and translation were marked final (the GA protocol), or when text
    resumes after `pause_s` of none (the translations protocol streams deltas only): it is judged then."""

    def __init__(self, needed: int = UTTERANCES_NEEDED, pause_s: float = PAUSE_S) -> None:
        self.needed = needed
        self.pause_s = pause_s
        self.streak = 0
        self._last: float | None = None
        self._source = ""
        self._target = ""
        self._source_final = False
        self._target_final = False

    def see(self, out: SessionOutput, now: float = 0.0) -> bool:
        """`now`: when it arrived (seconds, any monotonic clock)."""
        if not isinstance(out, SourceText | TargetText):
            return self.streak >= self.needed
        if self._last is not None and now - self._last >= self.pause_s and (self._source or self._target):
            self._judge(translated=bool(_words(self._target)) and _words(self._target) != _words(self._source))
        self._last = now
        if isinstance(out, SourceText):
            if self._source_final and out.text:  # the next utterance began
                self._judge(translated=bool(_words(self._target)))
            self._source += out.text
            self._source_final |= out.final
        elif isinstance(out, TargetText):
            self._target += out.text
            self._target_final |= out.final
            if self._source_final and self._target_final:
                self._judge(translated=_words(self._target) != _words(self._source))
        return self.streak >= self.needed

    def _judge(self, *, translated: bool) -> None:
        if _words(self._source):  # an utterance with words in it; noise says nothing
            self.streak = 0 if translated else self.streak + 1
        self._source = self._target = ""
        self._source_final = self._target_final = False
