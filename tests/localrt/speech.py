"""Test speech, synthesized at test time: espeak-ng speaks, sox converts to pcm16 mono 24 kHz."""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest

RATE = 24_000
ENGINE_FRAME_BYTES = 9600

# The same four everyday sentences in each language the multilingual tests and benchmarks speak, with the
# espeak-ng voice that says them (European Portuguese and Spanish, France's French).
SENTENCES_BY_LANGUAGE: dict[str, tuple[str, list[str]]] = {
    "en": ("en-us", ["Where is the train station?", "My brother lives in a big house.",
                     "We are going to the beach tomorrow.", "The children are playing in the park."]),
    "es": ("es", ["¿Dónde está la estación de tren?", "Mi hermano vive en una casa grande.",
                  "Mañana vamos a la playa.", "Los niños juegan en el parque."]),
    "fr": ("fr-fr", ["Où est la gare ?", "Mon frère habite dans une grande maison.",
                     "Demain nous allons à la plage.", "Les enfants jouent dans le parc."]),
    "pt": ("pt", ["Onde fica a estação de comboios?", "O meu irmão mora numa casa grande.",
                  "Amanhã vamos à praia.", "As crianças brincam no parque."]),
    "de": ("de", ["Wo ist der Bahnhof?", "Mein Bruder wohnt in einem großen Haus.",
                  "Morgen gehen wir an den Strand.", "Die Kinder spielen im Park."]),
    "it": ("it", ["Dov'è la stazione dei treni?", "Mio fratello abita in una casa grande.",
                  "Domani andiamo al mare.", "I bambini giocano nel parco."]),
}  # fmt: skip
SENTENCES = SENTENCES_BY_LANGUAGE["en"][1][:3]  # the English ones most tests speak


def require_tools() -> None:
    for tool in ("espeak-ng", "sox", "apertium"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-deps)")


@functools.lru_cache(maxsize=64)
def speech(text: str, voice: str = "en-us", wpm: int = 130) -> bytes:
    """pcm16 little-endian mono 24 kHz of `text`."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text], capture_output=True, check=True
    ).stdout
    return subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed", "-"],
        input=wav,
        capture_output=True,
        check=True,
    ).stdout


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def utterance(*sentences: str, gap: float = 1.0) -> bytes:
    """Sentences separated (and followed) by silence long enough to end a VAD segment."""
    out = silence(0.4)
    for s in sentences:
        out += speech(s) + silence(gap)
    return out
