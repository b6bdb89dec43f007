"""SameLanguageWatch and same_language: when a member's speech is already in their target language."""

from __future__ import annotations

from bot.pipeline.same_language import SameLanguageWatch, same_language
from bot.realtime.outputs import SourceText, TargetText


def test_language_tags_compare_by_language() -> None:
    assert same_language("en", "en-GB") and same_language("pt-BR", "pt") and same_language("ES", "es")
    assert not same_language("en", "es") and not same_language(None, "es") and not same_language("es", "")


def utterance(watch: SameLanguageWatch, source: str, target: str | None) -> bool:
    fired = watch.see(SourceText(source[:3], None))
    fired = watch.see(SourceText(source[3:], None, final=True)) or fired
    if target is not None:
        fired = watch.see(TargetText(target, None, final=True)) or fired
    return fired


def test_three_unchanged_utterances_in_a_row_mean_the_same_language() -> None:
    watch = SameLanguageWatch()
    assert not utterance(watch, "Good morning.", "good morning")  # case and punctuation do not matter
    assert not utterance(watch, "The meeting starts at ten.", "The meeting starts at ten.")
    assert utterance(watch, "Thank you.", "Thank you!")


def test_a_real_translation_resets_the_count_and_noise_does_not_count() -> None:
    watch = SameLanguageWatch()
    utterance(watch, "Good morning.", "Good morning.")
    utterance(watch, "Hello there.", "Hello there.")
    assert not utterance(watch, "Thank you.", "Gracias.")
    assert watch.streak == 0
    utterance(watch, "...", "...")  # no words: says nothing either way
    assert watch.streak == 0


def test_a_model_that_stays_silent_on_same_language_speech_is_read_as_such() -> None:
    """A translations model may say nothing for speech already in the target language: not a failure."""
    watch = SameLanguageWatch()
    utterance(watch, "Good morning everyone.", None)
    utterance(watch, "The meeting starts at ten.", None)
    utterance(watch, "Thank you all.", None)
    assert watch.see(SourceText("And one more", None))  # the third silent utterance is judged when the next begins


def test_without_final_marks_a_pause_ends_the_utterance() -> None:
    """The translations protocol streams deltas with no end marks: a pause of `pause_s` ends an utterance."""
    watch = SameLanguageWatch(pause_s=4.0)
    t = 0.0
    for said in ("Good morning everyone.", "The meeting starts at ten.", "Thank you."):
        watch.see(SourceText(said[:6], None), t)
        watch.see(SourceText(said[6:], None), t + 0.5)
        assert not watch.see(TargetText(said, None), t + 1.5)  # the "translation" repeats it, a second later
        t += 6.0
    assert watch.see(SourceText("And", None), t)  # the third is judged when they speak again
    lagging = SameLanguageWatch(pause_s=4.0)
    t = 0.0
    for _ in range(4):  # real translations, lagging the speech by 3 s: never read as same language
        lagging.see(SourceText("Good morning everyone.", None), t)
        assert not lagging.see(TargetText("Buenos días a todos.", None), t + 3.0)
        t += 8.0
    assert lagging.streak == 0
