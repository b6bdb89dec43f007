"""Machine translation of one segment's text between ISO 639-1 languages.

Translators are shared by all sessions and called from executor threads.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

from bot.localrt import languages
from bot.localrt.config import MTConfig
from bot.localrt.engines.asr import EngineError
from bot.localrt.engines.tool import run_tool


class Translator(Protocol):
    def pairs(self) -> dict[tuple[str, str], str]:
        """Directly supported (source, target) pairs with a label for humans."""
        ...

    def translate(self, text: str, source: str, target: str) -> str: ...


class ApertiumTranslator:
    """Debian's apertium: rule-based, fast, small. One `apertium -u MODE` subprocess per segment
    (≈0.15 s); the modes installed under `modes_dir` define the pairs."""

    def __init__(self, cfg: MTConfig) -> None:
        self._exe = shutil.which("apertium")
        self._modes_dir = cfg.apertium_modes_dir
        self._pairs = languages.apertium_pairs(cfg.apertium_modes_dir) if self._exe else {}

    def pairs(self) -> dict[tuple[str, str], str]:
        return dict(self._pairs)

    def translate(self, text: str, source: str, target: str) -> str:
        mode = self._pairs.get((source, target))
        if mode is None or self._exe is None:
            raise EngineError(f"apertium has no {source}→{target} pair installed")
        if not text.strip():
            return ""
        cmd = [self._exe, "-u"]
        if Path(self._modes_dir).resolve() != Path("/usr/share/apertium/modes"):
            cmd += ["-d", str(Path(self._modes_dir).parent)]
        out = run_tool("apertium", [*cmd, mode], input=text, text=True)
        if out.returncode != 0:
            raise EngineError(f"apertium {mode} failed: {out.stderr.strip()[:200]}")
        return " ".join(out.stdout.split())


class SubwordTokenizer:
    """Text ↔ subword tokens for CTranslate2: a HF tokenizer.json or a sentencepiece model."""

    def __init__(self, path: Path) -> None:
        self._hf = None
        self._sp = None
        if path.suffix == ".json":
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_file(str(path))
        else:
            try:
                import sentencepiece
            except ImportError as exc:
                raise EngineError(f"{path.name} needs: pip install sentencepiece") from exc
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))

    @classmethod
    def find(cls, model_dir: Path, explicit: str | None) -> SubwordTokenizer:
        names = ("tokenizer.json", "sentencepiece.bpe.model", "source.spm")
        candidates = [Path(explicit)] if explicit else [model_dir / n for n in names]
        for path in candidates:
            if path.is_file():
                return cls(path)
        raise EngineError(f"no tokenizer found for {model_dir} (set mt.tokenizer)")

    def encode(self, text: str) -> list[str]:
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).tokens
        return self._sp.encode(text, out_type=str)

    def decode(self, tokens: list[str]) -> str:
        if self._hf is not None:
            ids = [self._hf.token_to_id(t) for t in tokens]
            return self._hf.decode([i for i in ids if i is not None])
        return self._sp.decode(tokens)


class CTranslate2Translator:
    """A CTranslate2 conversion of NLLB-200 or a Marian (opus-mt) model, loaded from a local path.

    NLLB covers many languages with target-prefix tokens; a Marian model covers one direction,
    given as `languages: [src, tgt]`.
    """

    def __init__(self, cfg: MTConfig) -> None:
        if not cfg.model_path:
            raise EngineError("mt.engine ctranslate2 needs mt.model_path (a CTranslate2 model directory)")
        model_dir = Path(cfg.model_path)
        if not (model_dir / "model.bin").is_file():
            raise EngineError(f"mt.model_path {model_dir} has no model.bin (convert it with ct2-*-converter)")
        try:
            import ctranslate2
        except ImportError as exc:
            raise EngineError("mt.engine ctranslate2 needs: pip install ctranslate2") from exc
        self._family = cfg.model_family
        # config mistakes first: they are cheaper to report than a model load
        langs = [lang for lang in (languages.normalize(x) for x in cfg.languages) if lang]
        if self._family == "nllb":
            langs = [x for x in (langs or list(languages.ISO1_TO_NLLB)) if x in languages.ISO1_TO_NLLB]
            self._pairs = {(a, b): "ctranslate2 nllb" for a in langs for b in langs if a != b}
        else:
            if len(langs) != 2:
                raise EngineError("a Marian model needs mt.languages: [source, target]")
            self._pairs = {(langs[0], langs[1]): "ctranslate2 marian"}
        self._tokenizer = SubwordTokenizer.find(model_dir, cfg.tokenizer)
        try:
            self._translator = ctranslate2.Translator(str(model_dir), device="cpu", inter_threads=2)
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"cannot load CTranslate2 model {model_dir}: {exc}") from exc

    def pairs(self) -> dict[tuple[str, str], str]:
        return dict(self._pairs)

    def translate(self, text: str, source: str, target: str) -> str:
        if (source, target) not in self._pairs:
            raise EngineError(f"the CTranslate2 model has no {source}→{target} direction")
        if not text.strip():
            return ""
        tokens = self._tokenizer.encode(text)
        if self._family == "nllb":
            src, tgt = languages.ISO1_TO_NLLB[source], languages.ISO1_TO_NLLB[target]
            result = self._translator.translate_batch(
                [[src, *tokens, "</s>"]], target_prefix=[[tgt]], beam_size=2, max_decoding_length=256
            )
            out = [t for t in result[0].hypotheses[0] if t != tgt]
        else:
            result = self._translator.translate_batch([[*tokens, "</s>"]], beam_size=2)
            out = result[0].hypotheses[0]
        return self._tokenizer.decode(out).strip()


class RoutedTranslator:
    """Adds the same-language passthrough and the English pivot on top of any translator."""

    def __init__(self, inner: Translator, pivot: bool = True) -> None:
        self._inner = inner
        self._pivot = pivot

    def pairs(self) -> dict[tuple[str, str], str]:
        return self._inner.pairs()

    def can_translate(self, source: str, target: str) -> bool:
        return languages.mt_path(source, target, self._inner.pairs(), self._pivot) is not None

    def translate(self, text: str, source: str, target: str) -> str:
        path = languages.mt_path(source, target, self._inner.pairs(), self._pivot)
        if path is None:
            raise EngineError(f"no translation route {source}→{target}")
        for src, tgt in path:
            text = self._inner.translate(text, src, tgt)
        return text


def make_translator(cfg: MTConfig) -> RoutedTranslator:
    inner: Translator = CTranslate2Translator(cfg) if cfg.engine == "ctranslate2" else ApertiumTranslator(cfg)
    return RoutedTranslator(inner, cfg.pivot)
