"""Language codes: ISO 639-1 on the wire, ISO 639-3 for apertium, espeak-ng voice names for speech.

The discovery helpers read the installed apertium modes and espeak-ng voices; the mapping functions
are pure so they can be tested without either program.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# ISO 639-1 -> ISO 639-3 for the languages apertium and espeak-ng commonly cover.
ISO1_TO_ISO3: dict[str, str] = {
    "af": "afr", "an": "arg", "ar": "ara", "ast": "ast", "be": "bel", "bg": "bul", "br": "bre",
    "ca": "cat", "cs": "ces", "cy": "cym", "da": "dan", "de": "deu", "el": "ell", "en": "eng",
    "eo": "epo", "es": "spa", "et": "est", "eu": "eus", "fa": "fas", "fi": "fin", "fr": "fra",
    "ga": "gle", "gl": "glg", "he": "heb", "hi": "hin", "hr": "hrv", "hu": "hun", "id": "ind",
    "is": "isl", "it": "ita", "ja": "jpn", "kk": "kaz", "ko": "kor", "lt": "lit", "lv": "lav",
    "mk": "mkd", "ml": "mal", "mt": "mlt", "nb": "nob", "nl": "nld", "nn": "nno", "no": "nor",
    "oc": "oci", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sc": "srd", "se": "sme",
    "sk": "slk", "sl": "slv", "sq": "sqi", "sr": "srp", "sv": "swe", "tr": "tur", "tt": "tat",
    "uk": "ukr", "ur": "urd", "vi": "vie", "zh": "zho",
}  # fmt: skip
ISO3_TO_ISO1: dict[str, str] = {v: k for k, v in ISO1_TO_ISO3.items()}
# apertium sometimes uses bibliographic or macro codes
ISO3_TO_ISO1.update({"fre": "fr", "ger": "de", "spa": "es", "por": "pt", "hbs": "sr", "zlm": "ms"})

# NLLB's Flores-200 codes for CTranslate2 NLLB models.
ISO1_TO_NLLB: dict[str, str] = {
    "ca": "cat_Latn", "de": "deu_Latn", "en": "eng_Latn", "es": "spa_Latn", "eu": "eus_Latn",
    "fr": "fra_Latn", "gl": "glg_Latn", "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang",
    "nl": "nld_Latn", "pl": "pol_Latn", "pt": "por_Latn", "ru": "rus_Cyrl", "uk": "ukr_Cyrl",
    "zh": "zho_Hans", "ar": "arb_Arab", "hi": "hin_Deva", "tr": "tur_Latn", "sv": "swe_Latn",
}  # fmt: skip

_ISO1 = re.compile(r"^[a-z]{2,3}$")


def normalize(code: str) -> str | None:
    """`ES`, `es-ES`, `es_419` → `es`; None when it is not a language code at all."""
    base = re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]
    if not _ISO1.match(base):
        return None
    if len(base) == 3:
        return ISO3_TO_ISO1.get(base)
    return base


def parse_mode_name(stem: str) -> tuple[str, str] | None:
    """`eng-spa` or `en-eo` → ("en", "es") / ("en", "eo"). Variants (`eng-cat_valencia`,
    `eo-en-bytecode`) and unknown codes give None."""
    m = re.fullmatch(r"([a-z]{2,3})-([a-z]{2,3})", stem)
    if not m:
        return None
    src, tgt = normalize(m.group(1)), normalize(m.group(2))
    if not src or not tgt or src == tgt:
        return None
    return src, tgt


def apertium_pairs(modes_dir: str | Path) -> dict[tuple[str, str], str]:
    """Installed apertium directions as {(src, tgt): mode name}, e.g. {("en","es"): "eng-spa"}."""
    found: dict[tuple[str, str], str] = {}
    d = Path(modes_dir)
    if not d.is_dir():
        return found
    for path in sorted(d.glob("*.mode")):
        pair = parse_mode_name(path.stem)
        if pair:
            found[pair] = path.stem
    return found


def parse_espeak_voices(listing: str) -> dict[str, str]:
    """Parse `espeak-ng --voices` into {iso1: voice}; the first (highest priority) voice wins."""
    voices: dict[str, str] = {}
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3].startswith("mb-") or "mbrola" in parts[3]:
            continue
        code = parts[1]
        iso = normalize(code)
        if iso and iso not in voices:
            voices[iso] = "en-us" if iso == "en" else code
    return voices


def espeak_voices() -> dict[str, str]:
    """Installed espeak-ng voices by ISO 639-1 code; empty when espeak-ng is missing."""
    exe = shutil.which("espeak-ng")
    if not exe:
        return {}
    out = subprocess.run([exe, "--voices"], capture_output=True, text=True, timeout=10, check=False)
    return parse_espeak_voices(out.stdout)


@dataclass(frozen=True)
class Route:
    """How one input language reaches one output language."""

    source: str
    target: str
    mt: str  # human-readable: "apertium eng-spa", "pivot eng-spa+...", "none (same language)"
    tts: str


def routes(
    inputs: list[str],
    mt_pairs: dict[tuple[str, str], str],
    tts_voices: dict[str, str],
    pivot: bool = True,
) -> list[Route]:
    """Every input → output combination that works end to end (MT path and a voice exist)."""
    out: list[Route] = []
    targets = sorted(tts_voices)
    for src in inputs:
        for tgt in targets:
            path = mt_path(src, tgt, mt_pairs, pivot)
            if path is None:
                continue
            label = "none (same language)" if not path else " → ".join(mt_pairs[p] for p in path)
            out.append(Route(src, tgt, label, tts_voices[tgt]))
    return out


def mt_path(
    src: str, tgt: str, pairs: dict[tuple[str, str], str] | set[tuple[str, str]], pivot: bool = True
) -> list[tuple[str, str]] | None:
    """The hops from src to tgt: [] for the same language, one direct pair, or two via English."""
    if src == tgt:
        return []
    if (src, tgt) in pairs:
        return [(src, tgt)]
    if pivot and src != "en" and tgt != "en" and (src, "en") in pairs and ("en", tgt) in pairs:
        return [(src, "en"), ("en", tgt)]
    return None


def format_table(rows: list[Route]) -> str:
    """A Markdown table for the terminal and the README."""
    lines = ["| input | output | translation | voice |", "|---|---|---|---|"]
    lines += [f"| {r.source} | {r.target} | {r.mt} | {r.tts} |" for r in rows]
    return "\n".join(lines)
