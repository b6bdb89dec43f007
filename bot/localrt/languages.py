"""Language codes, translation routes and their expected quality.

ISO 639-1 on the wire (whisper's codes: `zh`, `no`→`nb`, and `yue` where 639-1 has none), ISO 639-3 for
apertium, espeak-ng voice names for speech. The discovery helpers read the installed apertium modes and
espeak-ng voices; everything else is pure so it can be tested without either program.
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
ISO3_TO_ISO1.update({
    "fre": "fr", "ger": "de", "spa": "es", "por": "pt", "hbs": "sr", "zlm": "ms", "msa": "ms", "ind": "id",
    "nor": "nb", "nob": "nb", "arg": "an", "cmn": "zh", "yue": "yue", "hrv": "hr", "bos": "bs",
})  # fmt: skip
# Wire codes that stand for another: whisper says `no` for Norwegian, espeak-ng and apertium say Bokmål.
ALIASES = {"no": "nb", "iw": "he", "jw": "jv", "in": "id"}
# apertium's Serbo-Croatian (`hbs`) is read as Serbian, Croatian and Bosnian; its target variants say which.
MACRO_SOURCES = {"hbs": ("sr", "hr", "bs")}
VARIANT_TARGETS = {"hbs_SR": "sr", "hbs_HR": "hr", "hbs_BS": "bs"}

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
    return ALIASES.get(base, base)


def parse_mode_name(stem: str) -> list[tuple[str, str]]:
    """`eng-spa` → [("en", "es")]; `hbs-eng` → Serbian, Croatian and Bosnian into English; `eng-hbs_HR` →
    [("en", "hr")]. Other variants (`eng-cat_valencia`, `eo-en-bytecode`) and unknown codes give []."""
    m = re.fullmatch(r"([a-z]{2,3})-([a-z]{2,3})(?:_([A-Za-z]+))?", stem)
    if not m:
        return []
    src_code, tgt_code, variant = m.groups()
    if variant is not None:
        tgt = VARIANT_TARGETS.get(f"{tgt_code}_{variant}")
        if tgt is None:
            return []
    elif tgt_code in MACRO_SOURCES:
        return []  # the variants name the target: `eng-hbs` alone would be a fourth, ambiguous one
    else:
        tgt = normalize(tgt_code)
    sources = MACRO_SOURCES.get(src_code) or (normalize(src_code),)
    return [(src, tgt) for src in sources if src and tgt and src != tgt]


def apertium_pairs(modes_dir: str | Path) -> dict[tuple[str, str], str]:
    """Installed apertium directions as {(src, tgt): mode name}, e.g. {("en","es"): "eng-spa"}."""
    found: dict[tuple[str, str], str] = {}
    d = Path(modes_dir)
    if not d.is_dir():
        return found
    for path in sorted(d.glob("*.mode")):
        for pair in parse_mode_name(path.stem):
            found.setdefault(pair, path.stem)
    return found


def parse_espeak_voices(listing: str) -> dict[str, str]:
    """Parse `espeak-ng --voices` into {iso1: voice}; the first (highest priority) voice wins.

    Mandarin is listed as `cmn` and Cantonese as `yue` (ISO 639-3, no 639-1 code of their own): they
    become `zh` (whisper's code for Mandarin) and `yue` (whisper's code for Cantonese).
    """
    voices: dict[str, str] = {}
    for line in listing.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 4 or parts[3].startswith("mb-") or "mbrola" in parts[3]:
            continue
        code = parts[1]
        iso = normalize(code)
        if not iso:
            continue
        # the language's own main voice (`fr-fr`, not the `fr-be` listed first) when there is one
        if iso not in voices or code.lower() in (iso, f"{iso}-{iso}"):
            voices[iso] = code
    if "en" in voices:
        voices["en"] = "en-us"
    return voices


def espeak_voices() -> dict[str, str]:
    """Installed espeak-ng voices by ISO 639-1 code; empty when espeak-ng is missing."""
    exe = shutil.which("espeak-ng")
    if not exe:
        return {}
    out = subprocess.run([exe, "--voices"], capture_output=True, text=True, timeout=10, check=False)
    return parse_espeak_voices(out.stdout)


# Expected quality of one apertium direction, by language family. Apertium is built for closely related
# languages (its first released pairs were Spanish–Catalan, –Galician and –Portuguese; Forcada et al. 2011,
# Khanna et al. 2021): inside one family it is "good". English with Spanish/Catalan and the Esperanto pairs
# are maintained but structurally further apart ("usable": the gist survives, word order and idioms do
# not always). Other unrelated pairs (Serbo-Croatian/Macedonian/Icelandic/Basque with English or Spanish)
# are "poor": a rough gist. Overrides come from checks on this host (rus-ukr crashed on a sentence).
QUALITY_RANK = {"same": 4, "good": 3, "usable": 2, "poor": 1}
FAMILIES = (
    frozenset(["es", "ca", "pt", "gl", "it", "fr", "ro", "oc", "an", "ast", "sc"]),  # Romance
    frozenset(["da", "nb", "nn", "sv"]),  # mainland Scandinavian
    frozenset(["sr", "hr", "bs", "sl", "mk", "bg"]),  # South Slavic
    frozenset(["ru", "uk", "be"]),  # East Slavic
    frozenset(["id", "ms"]),
    frozenset(["ur", "hi"]),
    frozenset(["af", "nl"]),
)
USABLE = frozenset({("en", "es"), ("es", "en"), ("en", "ca"), ("ca", "en"), ("is", "sv"), ("sv", "is")})
QUALITY_OVERRIDES = {("ru", "uk"): "poor", ("uk", "ru"): "poor"}
# When two pivots give routes of equal quality, the better-connected hub wins (then alphabetical order).
HUB_PREFERENCE = ("es", "en", "ca", "fr", "pt", "it")


def pair_quality(source: str, target: str) -> str:
    """good | usable | poor for one direct direction (any engine: the table is apertium's)."""
    if (source, target) in QUALITY_OVERRIDES:
        return QUALITY_OVERRIDES[(source, target)]
    if any(source in f and target in f for f in FAMILIES):
        return "good"
    if (source, target) in USABLE or "eo" in (source, target):
        return "usable"
    return "poor"


def path_quality(path: list[tuple[str, str]]) -> str:
    """A route is as good as its worst hop ("same" for no hop at all)."""
    if not path:
        return "same"
    return min((pair_quality(a, b) for a, b in path), key=QUALITY_RANK.__getitem__)


@dataclass(frozen=True)
class Route:
    """How one input language reaches one output language."""

    source: str
    target: str
    mt: str  # human-readable: "apertium eng-spa", "pivot eng-spa+...", "none (same language)"
    tts: str
    quality: str = "good"  # same | good | usable | poor (see pair_quality)


def routes(
    inputs: list[str],
    mt_pairs: dict[tuple[str, str], str],
    tts_voices: dict[str, str],
    pivot: bool = True,
) -> list[Route]:
    """Every input → output combination that works end to end (MT path and a voice exist).

    Same-language rows (no translation: the speech is re-voiced or left silent) are listed for the
    languages with a voice that some translation starts from, so a language the server can do nothing
    else with never becomes "supported" only because it can be repeated to itself.
    """
    found: list[Route] = []
    for src in inputs:
        for tgt in sorted(tts_voices):
            path = mt_path(src, tgt, mt_pairs, pivot) if src != tgt else None
            if path:
                label = " → ".join(mt_pairs[p] for p in path)
                found.append(Route(src, tgt, label, tts_voices[tgt], path_quality(path)))
    speakable = {r.source for r in found} & set(tts_voices)
    found += [Route(x, x, "none (same language)", tts_voices[x], "same") for x in speakable]
    return sorted(found, key=lambda r: (r.source, r.target))


def _hub_order(hub: str) -> tuple[int, str]:
    return (HUB_PREFERENCE.index(hub) if hub in HUB_PREFERENCE else len(HUB_PREFERENCE), hub)


def mt_path(
    src: str, tgt: str, pairs: dict[tuple[str, str], str] | set[tuple[str, str]], pivot: bool = True
) -> list[tuple[str, str]] | None:
    """The best hops from src to tgt: [] for the same language, else the best-quality path among the
    direct pair and every route through one pivot language; at equal quality direct beats a pivot and
    the preferred hub beats the others. None when there is no route."""
    if src == tgt:
        return []
    candidates: list[list[tuple[str, str]]] = []
    if (src, tgt) in pairs:
        candidates.append([(src, tgt)])
    if pivot:
        hubs = sorted({b for a, b in pairs if a == src and b != tgt and (b, tgt) in pairs}, key=_hub_order)
        candidates += [[(src, hub), (hub, tgt)] for hub in hubs]
    if not candidates:
        return None
    # stable sort: among equal quality, direct first, then hubs in preference order
    return sorted(candidates, key=lambda p: (-QUALITY_RANK[path_quality(p)], len(p)))[0]


def count_routes(rows: list[Route]) -> dict[str, int]:
    """Translation routes (input ≠ output) by quality, their total, and the same-language ones."""
    counts = {q: 0 for q in ("good", "usable", "poor")}
    for r in rows:
        if r.quality != "same":
            counts[r.quality] += 1
    translated = [r for r in rows if r.quality != "same"]
    return {
        "routes": len(translated),
        **counts,
        "same_language": len(rows) - len(translated),
        "input_languages": len({r.source for r in translated}),
        "output_languages": len({r.target for r in translated}),
    }


def format_table(rows: list[Route]) -> str:
    """A Markdown table for the terminal and the README, then the counts."""
    lines = ["| input | output | quality | translation | voice |", "|---|---|---|---|---|"]
    lines += [f"| {r.source} | {r.target} | {r.quality} | {r.mt} | {r.tts} |" for r in rows]
    c = count_routes(rows)
    lines += [
        "",
        f"{c['routes']} translation routes from {c['input_languages']} input into {c['output_languages']} output"
        f" languages ({c['good']} good, {c['usable']} usable, {c['poor']} poor), plus {c['same_language']}"
        " same-language (no translation).",
    ]
    return "\n".join(lines)
