"""The engine set one server shares across sessions, built once from config."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.localrt import languages
from bot.localrt.config import LocalRTConfig
from bot.localrt.engines.asr import Recognizer, make_recognizer
from bot.localrt.engines.mt import RoutedTranslator, make_translator
from bot.localrt.engines.tts import Synthesizer, make_synthesizer
from bot.localrt.engines.vad import VoiceActivityDetector, make_vad


@dataclass
class Engines:
    config: LocalRTConfig
    asr: Recognizer
    mt: RoutedTranslator
    tts: Synthesizer
    _routes: list[languages.Route] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, config: LocalRTConfig) -> Engines:
        """Load every model now (seconds), so the first session does not pay for it."""
        return cls(
            config=config,
            asr=make_recognizer(config.asr),
            mt=make_translator(config.mt),
            tts=make_synthesizer(config.tts),
        )

    def new_vad(self) -> VoiceActivityDetector:
        return make_vad(self.config.vad)

    def routes(self) -> list[languages.Route]:
        """Every working input → output route (computed once: engines do not change while serving)."""
        if self._routes is None:
            self._routes = languages.routes(
                sorted(self.asr.languages), self.mt.pairs(), self.tts.voices(), self.config.mt.pivot
            )
        return list(self._routes)

    def input_languages(self) -> frozenset[str]:
        """Spoken languages at least one translation starts from (identification's default candidates)."""
        return frozenset(r.source for r in self.routes() if r.source != r.target)

    def output_languages(self) -> set[str]:
        """Targets at least one recognised input language can reach, with a voice to speak them."""
        return {r.target for r in self.routes()}
